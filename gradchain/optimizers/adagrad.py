"""Adagrad: per-coordinate scaling by the root of the sum of all squared gradients."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_bools,
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
    abs_sq,
    cast_like,
    compute_dtype,
    init_count,
    inverse_root,
    moments_like,
    safe_increment,
)
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByRssState",
    "adagrad",
    "scale_by_rss",
]


@state_class(extras=("count", "hyperparams"))
class ScaleByRssState:
    """``count``: updates done; ``sum_of_squares``: :math:`s_t`, the accumulated squared
    gradients (plus the initial value); ``hyperparams``: eps as used last."""

    count: jax.Array | None
    sum_of_squares: Any
    hyperparams: dict | None


@transformation("scale_by_rss", hyperparams=("eps",))
class ScaleByRss(GradientTransformation):
    r"""Rescales updates by the root of the sum of squared gradients so far (Adagrad).

    .. math::
        s_t = s_{t-1} + g_t^2, \quad s_0 = \text{initial\_accumulator\_value}, \qquad
        u_t = \frac{g_t}{\sqrt{s_t + \epsilon}} \;(\text{0 where } s_t = 0).

    Args:
      initial_accumulator_value: :math:`s_0 \ge 0`, default 0.1 (optax; PyTorch uses 0). It only
        sets the initial state, so it is a plain number, not a live hyperparameter.
      eps: :math:`\epsilon \ge 0`, default 1e-7.
      eps_in_sqrt: True (default, optax) puts :math:`\epsilon` inside the root; False gives
        PyTorch's :math:`u_t = g_t/(\sqrt{s_t} + \epsilon)` (ALGORITHMS.md §2, §15 rows 3 and 5).
        ``scale_by_rss(0.0, 1e-10, eps_in_sqrt=False)`` is ``torch.optim.Adagrad``'s scaling;
        its ``lr_decay`` is the schedule ``lambda k: lr / (1 + k * lr_decay)``.

    Reference: Duchi, Hazan & Singer, "Adaptive Subgradient Methods" (2011).
    Same as ``optax.scale_by_rss`` by default.
    """

    complex_params = True

    initial_accumulator_value: float = 0.1
    eps: ScalarOrSchedule = 1e-7
    _: dataclasses.KW_ONLY
    eps_in_sqrt: bool = True

    def __post_init__(self):
        check_number(
            "initial_accumulator_value",
            self.initial_accumulator_value,
            low=0.0,
            allow_schedule=False,
        )
        check_number("eps", self.eps, low=0.0)
        check_bools(self, "eps_in_sqrt")

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByRssState(
            count=init_count(),
            sum_of_squares=moments_like(params, fill=self.initial_accumulator_value),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.sum_of_squares, "updates", "state.sum_of_squares")
        hp = self.current_hyperparams(state)

        def step(g, s):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            eps = hp["eps"].astype(dt)
            s = s.astype(dt) + abs_sq(g32)
            # s = 0 only where every gradient so far was 0: the update is 0 there, not 0 * inf.
            # (Not ``s > 0``, which would turn a NaN sum into silent zero updates forever.)
            u = jnp.where(s == 0, 0, inverse_root(s, eps, self.eps_in_sqrt) * g32)
            return u.astype(g.dtype), s

        out, sums = tree_map_multi(step, 2, updates, state.sum_of_squares)
        return out, ScaleByRssState(
            count=safe_increment(count_of(state)),
            sum_of_squares=cast_like(sums, state.sum_of_squares),
            hyperparams=hp,
        )


scale_by_rss = ScaleByRss


@named_optimizer
def adagrad(
    learning_rate: ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: ScalarOrSchedule = 1e-7,
    *,
    eps_in_sqrt: bool = True,
) -> Parts:
    r"""Adagrad: ``chain(scale_by_rss(...), scale_by_learning_rate(learning_rate))``.

    :math:`p_t = p_{t-1} - \eta_{t-1}\, g_t/\sqrt{s_t + \epsilon}`; see :func:`scale_by_rss`.
    Same as ``optax.adagrad``; ``adagrad(lr, 0.0, 1e-10, eps_in_sqrt=False)`` is
    ``torch.optim.Adagrad(lr)``.
    """
    return (
        scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=eps_in_sqrt),
        scale_by_learning_rate(learning_rate),
    )
