"""Gradient clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    PyTree,
    check_number,
    state_class,
    stateless_call,
    transformation,
)
from gradchain.core.numerics import abs_sq, compute_dtype, init_count, safe_increment

__all__ = [
    "ClipByGlobalNormState",
    "ClipState",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "global_norm",
]


def _abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` elementwise, real for complex ``x``."""
    if jnp.iscomplexobj(x):
        return jnp.square(x.real) + jnp.square(x.imag)
    return jnp.square(x)


def global_norm(updates: PyTree) -> jax.Array:
    """``sqrt(sum over leaves of sum(|x|^2))``, accumulated in float32 or better."""
    leaves = [x for x in jax.tree.leaves(updates) if x is not None]
    if not leaves:
        return jnp.zeros((), jnp.float32)
    dt = jnp.result_type(*[jnp.promote_types(x.dtype, jnp.float32) for x in leaves])
    sq = [jnp.sum(_abs_sq(x.astype(dt))) for x in leaves]
    return jnp.sqrt(sum(sq[1:], sq[0]))


@state_class
class ClipByGlobalNormState:
    """``count``: updates done; ``global_norm``: the norm of the latest incoming updates
    (before clipping), for logging; ``hyperparams``: max_norm."""

    count: jax.Array
    global_norm: jax.Array
    hyperparams: dict


@transformation("clip_by_global_norm", hyperparams=("max_norm",))
class ClipByGlobalNorm(GradientTransformation):
    r"""Rescales all updates together so that their global norm is at most ``max_norm``.

    .. math::
        N = \sqrt{\textstyle\sum_{\text{leaves}} \sum_i g_i^2}, \qquad
        u = g \;\text{ if } N < M, \quad\text{else}\quad u = g \cdot \frac{M}{N} .

    After clipping the norm is exactly ``M`` (up to rounding). The factor :math:`M/N` is formed
    once, so each coordinate costs one multiply, which XLA fuses into whatever consumes the
    clipped updates (a per-coordinate divide it would materialize: one more pass over memory);
    optax divides by :math:`N`, then multiplies by :math:`M`, one rounding away. The norm is
    accumulated in float32 for low-precision updates. A non-finite ``N`` makes finite entries 0
    and the rest NaN, as in optax and PyTorch; protect steps with ``apply_if_finite`` where that
    matters.

    Args:
      max_norm: :math:`M > 0` (a float or a schedule).

    Differs from PyTorch's ``clip_grad_norm_``, which always multiplies by
    ``min(M/(N + 1e-6), 1)`` (a clipped norm slightly below ``M``; ALGORITHMS.md §15 row 22).
    Same as ``optax.clip_by_global_norm``. The norm of the latest updates is kept in the state as
    ``global_norm``.
    """

    complex_params = True

    max_norm: float

    def __post_init__(self):
        check_number("max_norm", self.max_norm, low=0.0, low_open=True)

    def init(self, params):
        return ClipByGlobalNormState(
            count=init_count(),
            global_norm=jnp.zeros((), jnp.float32),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        max_norm = hp["max_norm"]
        norm = global_norm(updates)
        keep = norm < max_norm

        factor = jnp.where(keep, 1, max_norm.astype(norm.dtype) / norm)

        def clip(g):
            dt = jnp.promote_types(g.dtype, norm.dtype)
            return (g.astype(dt) * factor.astype(dt)).astype(g.dtype)

        out = jax.tree.map(clip, updates)
        if stateless_call(state):
            return out, state
        return out, ClipByGlobalNormState(safe_increment(state.count), norm.astype(jnp.float32), hp)


clip_by_global_norm = ClipByGlobalNorm


@state_class
class ClipState:
    """``count``: updates done; ``hyperparams``: the threshold the latest update used."""

    count: jax.Array
    hyperparams: dict


@transformation("clip", hyperparams=("max_delta",))
class Clip(GradientTransformation):
    r"""Clips every coordinate of the updates to :math:`[-\delta, \delta]`.

    .. math:: u_i = \min(\max(g_i, -\delta), \delta)

    Args:
      max_delta: :math:`\delta \ge 0` (a float or a schedule).

    Same as ``optax.clip`` and PyTorch's ``clip_grad_value_`` (ALGORITHMS.md §12).
    """

    max_delta: float

    def __post_init__(self):
        check_number("max_delta", self.max_delta, low=0.0)

    def init(self, params):
        return ClipState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        delta = hp["max_delta"]

        def clip_leaf(g):
            d = delta.astype(g.dtype)
            return jnp.clip(g, -d, d)

        out = jax.tree.map(clip_leaf, updates)
        if stateless_call(state):
            return out, state
        return out, ClipState(safe_increment(state.count), hp)


clip = Clip


@transformation("clip_by_block_rms", hyperparams=("threshold",))
class ClipByBlockRms(GradientTransformation):
    r"""Rescales each leaf (block) of the updates so that its root mean square is at most
    ``threshold``.

    .. math:: u = g / \max\!\big(1, \operatorname{RMS}(g)/d\big), \qquad
              \operatorname{RMS}(g) = \sqrt{\operatorname{mean}_i\, g_i^2}

    This is Adafactor's update clipping with threshold :math:`d` (Shazeer & Stern, 2018, §6),
    applied leaf by leaf. The RMS is computed in float32 for low-precision updates.

    Args:
      threshold: :math:`d > 0` (a float or a schedule); Adafactor uses 1.

    Same as ``optax.clip_by_block_rms``. HF's and PyTorch's Adafactor apply the same rule.
    """

    complex_params = True

    threshold: float

    def __post_init__(self):
        check_number("threshold", self.threshold, low=0.0, low_open=True)

    def init(self, params):
        return ClipState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        threshold = hp["threshold"]

        clip_leaf = lambda g: block_rms_clip(g, threshold)
        out = jax.tree.map(clip_leaf, updates)
        if stateless_call(state):
            return out, state
        return out, ClipState(safe_increment(state.count), hp)


clip_by_block_rms = ClipByBlockRms


def block_rms_clip(g, threshold, mean_square=None):
    """One leaf of :class:`ClipByBlockRms`: ``g / max(1, sqrt(mean_square) / threshold)``, in
    at least float32, returned in ``g``'s dtype. ``mean_square`` defaults to ``mean(g**2)``; a
    caller that knows it without reading ``g`` (Adafactor's fused step) passes it."""
    dt = compute_dtype(g.dtype)
    g32 = g.astype(dt)
    if mean_square is None:
        mean_square = jnp.mean(abs_sq(g32))
    denominator = jnp.maximum(1.0, jnp.sqrt(mean_square) / threshold.astype(dt))
    return (g32 / denominator).astype(g.dtype)
