"""Rprop: per-coordinate step sizes that grow while the gradient keeps its sign."""

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
    init_count,
    moments_like,
    safe_increment,
)
from gradchain.transforms.scaling import scale

__all__ = [
    "ScaleByRpropState",
    "rprop",
    "scale_by_rprop",
]


@state_class(extras=("count", "hyperparams"))
class ScaleByRpropState:
    """``count``: updates done; ``step_sizes``: the current step size of every coordinate;
    ``prev_updates``: the previous step (0 where the sign flipped); ``hyperparams``: as used
    last."""

    count: jax.Array | None
    step_sizes: Any
    prev_updates: Any
    hyperparams: dict | None


@transformation(
    "scale_by_rprop", hyperparams=("eta_minus", "eta_plus", "min_step_size", "max_step_size")
)
class ScaleByRprop(GradientTransformation):
    r"""Rprop's steps: the sign of the gradient times a per-coordinate step size.

    With :math:`s = g_t \cdot u_{t-1}` (the sign agreement with the previous step),

    .. math::
        \delta_t = \begin{cases} \mathrm{clip}(\eta^+ \delta_{t-1}) & s > 0 \\
        \mathrm{clip}(\eta^- \delta_{t-1}) & s < 0 \\ \delta_{t-1} & s = 0 \end{cases},
        \qquad
        u_t = \begin{cases} 0 & s < 0 \\ \delta_t\, \mathrm{sign}(g_t) & \text{else}
        \end{cases},

    clip to :math:`[\delta_{\min}, \delta_{\max}]`, :math:`\delta_0` = ``learning_rate``,
    :math:`u_0 = 0`. After a sign flip the step is skipped and the next one counts as fresh
    (Rprop without weight backtracking, "Rprop-"). The output is the *ascent* step; :func:`rprop`
    negates it.

    optax 0.2.8 emits the step one update late: update :math:`t` returns :math:`u_{t-1}` (0 where
    :math:`s < 0`), so the first update is 0 and the step computed from the last gradient is
    never taken. That is the default here, for optax's trajectories; ``delay_step=False`` gives
    the paper's and ``torch.optim.Rprop``'s immediate step :math:`u_t` (ALGORITHMS.md §15,
    docs/DIVERGENCES.md).

    Args:
      learning_rate: :math:`\delta_0 > 0`, the initial step size (a plain number).
      eta_minus: :math:`\eta^- \in (0, 1]`, default 0.5.
      eta_plus: :math:`\eta^+ \ge 1`, default 1.2.
      min_step_size, max_step_size: the clip range, defaults 1e-6 and 50.
      delay_step: keyword-only, default True: optax's one-update delay (see above).

    Reference: Riedmiller & Braun, "A Direct Adaptive Method for Faster Backpropagation
    Learning: The RPROP Algorithm" (1993). Same as ``optax.scale_by_rprop`` and
    ``torch.optim.Rprop`` (which also clips the unchanged step size at :math:`s = 0`; with
    :math:`\delta_0` inside the clip range the two agree). Step sizes of bfloat16/float16
    parameters are float32.
    """

    learning_rate: float  # the initial step size; not a schedule
    eta_minus: ScalarOrSchedule = 0.5
    eta_plus: ScalarOrSchedule = 1.2
    min_step_size: ScalarOrSchedule = 1e-6
    max_step_size: ScalarOrSchedule = 50.0
    _: dataclasses.KW_ONLY
    delay_step: bool = True

    def __post_init__(self):
        check_number(
            "learning_rate", self.learning_rate, low=0.0, low_open=True, allow_schedule=False
        )
        check_number("eta_minus", self.eta_minus, low=0.0, high=1.0, low_open=True)
        check_number("eta_plus", self.eta_plus, low=1.0)
        check_number("min_step_size", self.min_step_size, low=0.0)
        check_number("max_step_size", self.max_step_size, low=0.0)
        check_bool("delay_step", self.delay_step)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByRpropState(
            count=init_count(),
            step_sizes=moments_like(params, fill=self.learning_rate),
            prev_updates=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.step_sizes, "updates", "state.step_sizes")
        hp = self.current_hyperparams(state)

        def step(g, size, prev):
            dt = compute_dtype(g.dtype)
            g32, size, prev = g.astype(dt), size.astype(dt), prev.astype(dt)
            s = g32 * prev
            factor = jnp.where(s > 0, hp["eta_plus"].astype(dt), hp["eta_minus"].astype(dt))
            low, high = hp["min_step_size"].astype(dt), hp["max_step_size"].astype(dt)
            size = jnp.where(s == 0, size, jnp.clip(size * factor, low, high))
            u = jnp.where(s < 0, 0, size * jnp.sign(g32))
            out = jnp.where(s < 0, 0, prev) if self.delay_step else u
            return out.astype(g.dtype), size, u

        out, sizes, prev = tree_map_multi(step, 3, updates, state.step_sizes, state.prev_updates)
        return out, ScaleByRpropState(
            count=safe_increment(count_of(state)),
            step_sizes=cast_like(sizes, state.step_sizes),
            prev_updates=cast_like(prev, state.prev_updates),
            hyperparams=hp,
        )


scale_by_rprop = ScaleByRprop


@named_optimizer
def rprop(
    learning_rate: float,
    eta_minus: ScalarOrSchedule = 0.5,
    eta_plus: ScalarOrSchedule = 1.2,
    min_step_size: ScalarOrSchedule = 1e-6,
    max_step_size: ScalarOrSchedule = 50.0,
    *,
    delay_step: bool = True,
) -> Parts:
    r"""Rprop: ``chain(scale_by_rprop(...), scale(-1.0))``, see :func:`scale_by_rprop`. The
    learning rate is the initial step size, so it is a plain number. Same as ``optax.rprop``;
    ``delay_step=False`` is ``torch.optim.Rprop`` (the step taken when it is computed)."""
    return (
        scale_by_rprop(
            learning_rate,
            eta_minus,
            eta_plus,
            min_step_size,
            max_step_size,
            delay_step=delay_step,
        ),
        scale(-1.0),
    )
