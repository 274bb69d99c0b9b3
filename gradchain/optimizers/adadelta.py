"""Adadelta: a step size from the ratio of two running root mean squares."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    check_tree_match,
    count_of,
    named_optimizer,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    cast_like,
    compute_dtype,
    ema,
    init_count,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByAdaDeltaState",
    "adadelta",
    "scale_by_adadelta",
]


@state_class(extras=("count", "hyperparams"))
class ScaleByAdaDeltaState:
    """``count``: updates done; ``e_g``: the running mean of squared gradients; ``e_x``: that of
    squared updates; ``hyperparams``: rho and eps as used last."""

    count: jax.Array | None
    e_g: Any
    e_x: Any
    hyperparams: dict | None


@transformation("scale_by_adadelta", hyperparams=("rho", "eps"))
class ScaleByAdaDelta(GradientTransformation):
    r"""Rescales updates by Adadelta's ratio of root mean squares.

    .. math::
        E[g^2]_t = \rho E[g^2]_{t-1} + (1-\rho) g_t^2, \qquad
        u_t = \frac{\sqrt{E[\Delta x^2]_{t-1} + \epsilon}}{\sqrt{E[g^2]_t + \epsilon}}\, g_t, \qquad
        E[\Delta x^2]_t = \rho E[\Delta x^2]_{t-1} + (1-\rho) u_t^2

    with both averages starting at 0.

    Args:
      rho: :math:`\rho \in [0, 1)`, default 0.9 (the paper's 0.95; PyTorch's 0.9).
      eps: :math:`\epsilon > 0`, default 1e-6.

    Reference: Zeiler, "ADADELTA: An Adaptive Learning Rate Method" (2012), Algorithm 1. Same as
    ``optax.scale_by_adadelta`` and ``torch.optim.Adadelta`` (whose running average of updates
    holds :math:`u_t` before the learning rate, as here).
    """

    rho: ScalarOrSchedule = 0.9
    eps: ScalarOrSchedule = 1e-6

    def __post_init__(self):
        check_number("rho", self.rho, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0, low_open=True)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByAdaDeltaState(
            count=init_count(),
            e_g=moments_like(params),
            e_x=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.e_g, "updates", "state.e_g")
        hp = self.current_hyperparams(state)
        rho, eps = hp["rho"], hp["eps"]
        c = self.complement("rho", hp)

        def step(g, e_g, e_x):
            dt = compute_dtype(g.dtype)
            g32, e_x = g.astype(dt), e_x.astype(dt)
            r, cr, e = rho.astype(dt), c.astype(dt), eps.astype(dt)
            e_g = ema(e_g.astype(dt), g32 * g32, r, cr)
            u = jnp.sqrt(e_x + e) / jnp.sqrt(e_g + e) * g32
            return u.astype(g.dtype), e_g, ema(e_x, u * u, r, cr)

        out, e_g, e_x = tree_map_multi(step, 3, updates, state.e_g, state.e_x)
        return out, ScaleByAdaDeltaState(
            count=safe_increment(count_of(state)),
            e_g=cast_like(e_g, state.e_g),
            e_x=cast_like(e_x, state.e_x),
            hyperparams=hp,
        )


scale_by_adadelta = ScaleByAdaDelta


@named_optimizer
def adadelta(
    learning_rate: ScalarOrSchedule | None = None,
    rho: ScalarOrSchedule = 0.9,
    eps: ScalarOrSchedule = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
) -> Parts:
    r"""Adadelta with an optional (coupled) L2 penalty.

    ``chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps),
    scale_by_learning_rate(learning_rate))``: the decay is added to the gradient *before* the
    scaling, as in ``torch.optim.Adadelta(weight_decay=...)``. Needs ``params`` (for the decay).

    ``learning_rate=None`` (the default) is the paper's Adadelta, which has no learning rate:
    :math:`p_t = p_{t-1} - u_t` (PyTorch's default ``lr=1.0``). optax's default ``None`` skips the
    scaling altogether, sign flip included, so ``optax.adadelta()`` *ascends*; with a learning
    rate given the two agree (docs/DIVERGENCES.md).
    """
    return (
        add_decayed_weights(weight_decay, mask=weight_decay_mask),
        scale_by_adadelta(rho, eps),
        scale_by_learning_rate(1.0 if learning_rate is None else learning_rate),
    )
