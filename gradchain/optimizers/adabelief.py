"""AdaBelief: Adam whose second moment tracks the gradient's deviation from its own average."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_bool,
    check_floating,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    abs_sq,
    bias_divisor,
    compute_dtype,
    debias,
    ema,
    init_count,
    moments_like,
    nesterov_debiased,
    nesterov_divisors,
    stored,
)
from gradchain.transforms.adaptive import adam_step_inputs, check_adam_hyperparams, step_moments
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByBeliefState",
    "adabelief",
    "scale_by_belief",
]


@state_class(extras=("hyperparams",))
class ScaleByBeliefState:
    """``count``: updates done; ``mu``: the first moment; ``nu``: the second *central* moment
    (the "belief"); ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict | None


@transformation("scale_by_belief", hyperparams=("b1", "b2", "eps", "eps_root"))
class ScaleByBelief(GradientTransformation):
    r"""Rescales updates by AdaBelief's moments: the second moment of :math:`g_t - m_t`.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2 + \epsilon_{root}, \\
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{s_t/(1-\beta_2^t)} + \epsilon}

    with :math:`t` the 1-based step; ``nesterov=True`` replaces :math:`m_t/(1-\beta_1^t)` by
    :math:`\beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      eps: :math:`\epsilon \ge 0`, default 1e-16.
      eps_root: :math:`\epsilon_{root} \ge 0`, added to :math:`s_t` before it is stored,
        default 1e-16.
      nesterov: the Nesterov form above (keyword-only).

    Moments of bfloat16/float16 parameters are float32. Reference: Zhuang et al., "AdaBelief
    Optimizer: Adapting Stepsizes by the Belief in Observed Gradients" (2020), Algorithm 2, whose
    :math:`\epsilon` inside :math:`s_t` is ``eps_root`` here; ``adabelief-pytorch`` adds it the
    same way. Same as ``optax.scale_by_belief``, complex parameters included (the second moment
    is of :math:`|g_t - m_t|^2`). Unlike optax's compiled step, the stored :math:`s_t` is
    written once and read back by the update (:func:`gradchain.numerics.stored`) rather than
    recomputed there from a copy of :math:`s_{t-1}`: 44 bytes per float32 parameter moved by a
    donated step instead of 56, with optax's values bit for bit (with ``nesterov=True``, whose
    update XLA would then fuse into a kernel that rounds differently from optax's, the step is
    optax's program, copy included).
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-16
    eps_root: ScalarOrSchedule = 1e-16
    _: dataclasses.KW_ONLY
    nesterov: bool = False

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_bool("nesterov", self.nesterov)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByBeliefState(
            count=init_count(),
            mu=moments_like(params),
            nu=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        k_b1, k_b2 = bias_divisor(b1, t), bias_divisor(b2, t)
        nk_b1: Any = nesterov_divisors(b1, t) if self.nesterov else None

        def step(g, m, s):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            m = ema(m.astype(dt), g32, b1.astype(dt), c1.astype(dt))
            e = g32 - m
            s = ema(s.astype(dt), abs_sq(e), b2.astype(dt), c2.astype(dt)) + eps_root.astype(dt)
            if self.nesterov:
                # Without stored(): the update's kernel XLA would build around it rounds
                # differently from optax's, so this form stays optax's program, copy included.
                m_hat = nesterov_debiased(m, g32, b1, c1, *nk_b1)
            else:
                # Written once and read back by the update (``+ eps_root`` would let XLA
                # recompute it there, from a copy of the old ``s``).
                s = stored(s, g32)
                m_hat = debias(m, k_b1)
            u = m_hat / (jnp.sqrt(debias(s, k_b2)) + eps.astype(dt))
            return u.astype(g.dtype), m, s

        return step_moments(step, updates, state, t, hp)


scale_by_belief = ScaleByBelief


@named_optimizer
def adabelief(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
    *,
    nesterov: bool = False,
) -> Parts:
    r"""AdaBelief: ``chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
    scale_by_learning_rate(learning_rate))``, see :func:`scale_by_belief`. Same as
    ``optax.adabelief``; ``adabelief-pytorch``'s defaults differ (``eps=1e-16`` there too, but
    decoupled weight decay and rectification on by default in its later versions).
    """
    return (
        scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )
