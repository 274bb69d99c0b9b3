"""ACProp: AdaBelief's centred second moment, used one step late (asynchronously)."""

from __future__ import annotations

import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    check_tree_match,
    named_optimizer,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    after,
    cast_like,
    compute_dtype,
    count_power,
    ema,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
    stored,
)
from gradchain.optimizers.adabelief import ScaleByBeliefState
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["acprop", "scale_by_acprop"]


@transformation("scale_by_acprop", hyperparams=("b1", "b2", "eps", "eps_root"))
class ScaleByACProp(GradientTransformation):
    r"""Rescales the *raw* gradient by the centred second moment of the previous steps.

    With :math:`t` the 1-based step,

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_{t-1})^2 + \epsilon_{root}, \\
        u_t = \frac{g_t}{\sqrt{s_{t-1}/(1-\beta_2^{t-1})} + \epsilon}
        \quad (t > 1), \qquad u_1 = \frac{g_1}{1 + \epsilon}.

    The denominator only uses gradients up to :math:`t-1` (the "asynchronous" update that
    decorrelates it from the numerator); :math:`m` is tracked for the residual only, the step
    itself has no momentum.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      eps: :math:`\epsilon \ge 0`, default 1e-16.
      eps_root: :math:`\epsilon_{root} \ge 0`, added to :math:`s_t` before it is stored,
        default 1e-16.

    State: optax's ``ScaleByBeliefState`` (``count``, ``mu``, ``nu``), moments in the
    parameters' dtype (float32 under ``with_float32_state``). Reference: Zhuang et al., "Momentum Centering and Asynchronous
    Update for Adaptive Gradient Methods" (NeurIPS 2021); the authors' code
    (juntang-zhuang/ACProp-Optimizer). Same as ``optax.contrib.scale_by_acprop``, whose code
    (followed here) forms the residual with :math:`m_{t-1}` where its docstring writes
    :math:`m_t`.
    """

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-16
    eps_root: ScalarOrSchedule = 1e-16

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByBeliefState(
            count=init_count(),
            mu=moments_like(params),
            nu=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        c1, c2 = self.complement("b1", hp), self.complement("b2", hp)
        first = state.count == 0
        # 1 - b2^(t-1) of the stored s; a placeholder 1 at the first step, where s is not used.
        correction = jnp.where(first, 1.0, 1 - count_power(b2, jnp.maximum(state.count, 1)))

        out, mu, nu = tree_map_multi(
            lambda g, m, s: _acprop_leaf(g, m, s, b1, c1, b2, c2, eps, eps_root, first, correction),
            3,
            updates,
            state.mu,
            state.nu,
        )
        return out, ScaleByBeliefState(
            count=safe_increment(state.count),
            mu=cast_like(mu, state.mu),
            nu=cast_like(nu, state.nu),
            hyperparams=hp,
        )


scale_by_acprop = ScaleByACProp


@leaf_kernel()
def _acprop_leaf(g, m, s, b1, c1, b2, c2, eps, eps_root, first, correction):
    dt = compute_dtype(g.dtype)
    g32, m, s = g.astype(dt), m.astype(dt), s.astype(dt)
    e = g32 - m
    new_m = ema(m, g32, b1.astype(dt), c1.astype(dt))
    new_s = ema(s, e * e, b2.astype(dt), c2.astype(dt)) + eps_root.astype(dt)
    # new_s reads the old m, which new_m overwrites in place (a donated state): new_s is
    # written once (not recomputed where it is read) and new_m after it, so XLA needs no copy
    # of the old m to order the two.
    new_s = stored(new_s, g32)
    new_m = after(new_m, new_s)
    s_hat = jnp.where(first, jnp.ones((), dt), s / correction.astype(dt))
    u = g32 / (jnp.sqrt(s_hat) + eps.astype(dt))
    return u.astype(g.dtype), new_m, new_s


@named_optimizer
def acprop(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-16,
    eps_root: ScalarOrSchedule = 1e-16,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> Parts:
    r"""ACProp: ``chain(scale_by_acprop(b1, b2, eps, eps_root), add_decayed_weights(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``, see :func:`scale_by_acprop`.

    The weight decay is added after the rescaling, so it is multiplied by the learning rate
    only (decoupled, as AdamW in PyTorch). Same arguments and defaults as
    ``optax.contrib.acprop``.
    """
    return (
        scale_by_acprop(b1, b2, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
