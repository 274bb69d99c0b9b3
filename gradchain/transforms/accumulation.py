"""Accumulating updates over several steps and applying them at once."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    check_floating,
    check_int,
    check_tree_match,
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

__all__ = [
    "ApplyEvery",
    "apply_every",
]


@state_class
class ApplyEveryState:
    """``count``: updates done (optax: the position in the window, ``count % k``); ``grad_acc``:
    the sum of the updates of the current window."""

    count: jax.Array
    grad_acc: Any


# optax's name for this state (its NamedTuple ``ApplyEvery(count, grad_acc)``).
ApplyEvery = ApplyEveryState


@transformation("apply_every")
class ApplyEveryTransformation(GradientTransformation):
    r"""Sums the updates of ``k`` steps and emits the sum every ``k``-th step, zeros otherwise.

    .. math::
        a_t = g_t + [t \bmod k \ne 0]\, a_{t-1}, \qquad
        u_t = a_t \text{ if } t \bmod k = k-1 \text{ else } 0

    with :math:`t` the 0-based step. Put it after the learning rate for "accumulate, then step";
    :class:`MultiSteps` instead accumulates gradients *before* the optimizer, which then sees
    one averaged gradient every ``k`` steps.

    Args:
      k: the number of steps summed, an int ``>= 1`` (default 1: every update passes through).

    Same as ``optax.apply_every``, except that the reset and the zero outputs are selected
    rather than multiplied by 0/1: a NaN accumulated in one window does not leak into the zero
    updates of that window or into the next window (optax's ``0 * NaN`` does). The sum keeps the
    updates' dtype, as optax (float32 under ``with_float32_state``), and ``count`` counts
    every update, saturating at 2^31 - 1 like every gradchain counter (optax keeps ``count % k``).
    """

    k: int = 1

    def __post_init__(self):
        check_int("k", self.k, low=1)

    def init(self, params):
        check_floating(params, self.name)
        return ApplyEveryState(count=init_count(), grad_acc=moments_like(params))

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.grad_acc, "updates", "state.grad_acc")
        keep = state.count % self.k != 0
        emit = state.count % self.k == self.k - 1

        def step(g, a):
            dt = compute_dtype(g.dtype)
            acc = jnp.where(keep, a.astype(dt) + g.astype(dt), g.astype(dt))
            return jnp.where(emit, acc, 0).astype(g.dtype), acc

        out, acc = tree_map_multi(step, 2, updates, state.grad_acc)
        acc = cast_like(acc, state.grad_acc)
        return out, ApplyEveryState(count=safe_increment(state.count), grad_acc=acc)


apply_every = ApplyEveryTransformation
