"""Yogi: Adam with an additive, sign-controlled second-moment update."""

from __future__ import annotations

import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    named_optimizer,
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
)
from gradchain.transforms.adaptive import (
    ScaleByAdamState,
    adam_step_inputs,
    check_adam_hyperparams,
    step_moments,
)
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["scale_by_yogi", "yogi"]


@transformation("scale_by_yogi", hyperparams=("b1", "b2", "eps", "eps_root"))
class ScaleByYogi(GradientTransformation):
    r"""Rescales updates by Yogi's moments.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = v_{t-1} - (1-\beta_2)\,\mathrm{sign}(v_{t-1} - g_t^2)\, g_t^2, \\
        u_t = \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}

    with :math:`m_0 = v_0 =` ``initial_accumulator_value`` and :math:`t` the 1-based step.
    Unlike Adam's EMA, :math:`v` moves by at most :math:`(1-\beta_2) g_t^2` per step, and only
    towards :math:`g_t^2`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      eps: :math:`\epsilon \ge 0`, default 1e-3 (the paper's).
      eps_root: :math:`\epsilon_{root} \ge 0`, default 0.
      initial_accumulator_value: :math:`m_0 = v_0 \ge 0`, default 1e-6 (a plain number).

    State: ``count``, ``mu``, ``nu`` (optax's ``ScaleByAdamState``), float32 for
    bfloat16/float16 parameters. Reference: Zaheer et al., "Adaptive Methods for Nonconvex
    Optimization" (NeurIPS 2018). Same as ``optax.scale_by_yogi``, which also starts the first
    moment at ``initial_accumulator_value`` (the paper's :math:`m_0` is 0; the difference is
    :math:`10^{-6}\beta_1^t` and vanishes). Complex parameters use :math:`|g_t|^2`, as in optax.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-3
    eps_root: ScalarOrSchedule = 0.0
    initial_accumulator_value: float = 1e-6

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_number(
            "initial_accumulator_value",
            self.initial_accumulator_value,
            low=0.0,
            allow_schedule=False,
        )

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        fill = self.initial_accumulator_value
        return ScaleByAdamState(
            count=init_count(),
            mu=moments_like(params, fill=fill),
            nu=moments_like(params, fill=fill),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        k_b1, k_b2 = bias_divisor(b1, t), bias_divisor(b2, t)

        def step(g, m, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            g2 = abs_sq(g32)
            m = ema(m.astype(dt), g32, b1.astype(dt), c1.astype(dt))
            v = v.astype(dt)
            v = v - c2.astype(dt) * jnp.sign(v - g2) * g2
            v_hat = debias(v, k_b2)
            u = debias(m, k_b1) / (jnp.sqrt(v_hat + eps_root.astype(dt)) + eps.astype(dt))
            return u.astype(g.dtype), m, v

        return step_moments(step, updates, state, t, hp)


scale_by_yogi = ScaleByYogi


@named_optimizer
def yogi(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-3,
) -> Parts:
    r"""Yogi: ``chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))``, see
    :func:`scale_by_yogi`. Same as ``optax.yogi``."""
    return (
        scale_by_yogi(b1, b2, eps),
        scale_by_learning_rate(learning_rate),
    )
