"""Gradient clipping."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    PyTree,
    ScalarOrSchedule,
    Updates,
    check_bool,
    check_number,
    check_params_match,
    count_of,
    require_params,
    state_class,
    stateless_call,
    transformation,
)
from gradchain.core.numerics import abs_sq, compute_dtype, init_count, safe_increment

__all__ = [
    "AdaptiveGradClipState",
    "ClipByGlobalNormState",
    "ClipState",
    "adaptive_grad_clip",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "global_norm",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
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


@state_class(extras=("count", "global_norm", "hyperparams"))
class ClipByGlobalNormState:
    """``count``: updates done; ``global_norm``: the norm of the latest incoming updates
    (before clipping), for logging; ``hyperparams``: max_norm."""

    count: jax.Array | None
    global_norm: jax.Array | None
    hyperparams: dict | None


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

    max_norm: ScalarOrSchedule

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
        return out, ClipByGlobalNormState(
            count=safe_increment(count_of(state)),
            global_norm=norm.astype(jnp.float32),
            hyperparams=hp,
        )


clip_by_global_norm = ClipByGlobalNorm


@state_class(extras=("count", "hyperparams"))
class ClipState:
    """``count``: updates done; ``hyperparams``: the threshold the latest update used."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("clip", hyperparams=("max_delta",))
class Clip(GradientTransformation):
    r"""Clips every coordinate of the updates to :math:`[-\delta, \delta]`.

    .. math:: u_i = \min(\max(g_i, -\delta), \delta)

    Args:
      max_delta: :math:`\delta \ge 0` (a float or a schedule).

    Same as ``optax.clip`` and PyTorch's ``clip_grad_value_`` (ALGORITHMS.md §12).
    """

    max_delta: ScalarOrSchedule

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
        return out, ClipState(count=safe_increment(count_of(state)), hyperparams=hp)


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

    threshold: ScalarOrSchedule

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
        return out, ClipState(count=safe_increment(count_of(state)), hyperparams=hp)


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


# ---------------------------------------------------------------------------------------------
# Adaptive gradient clipping (unit-wise, relative to the parameters)

# The axes a "unit" (one output neuron) spans, by the leaf's number of axes: dense kernels are
# (in, out) or (in, heads, out), convolutions (H, W, in, out) and (D, H, W, in, out).
_UNIT_AXES = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}


def _unitwise_norm(x, axis, path):
    """The norm of each unit of ``x``, broadcast back to ``x``'s shape (optax's
    ``unitwise_norm``): the whole leaf for scalars and vectors (after squeezing), else over the
    input axes of ``_UNIT_AXES`` or ``axis``."""
    if axis is not None:
        axes = axis
    elif sum(d != 1 for d in x.shape) <= 1:
        axes = None
    elif x.ndim in _UNIT_AXES:
        axes = _UNIT_AXES[x.ndim]
    else:
        raise ValueError(
            f"adaptive_grad_clip: leaf {path} has shape {x.shape}; the unit axes are known for "
            f"1 to 5 axes: pass axis= for other shapes"
        )
    return jnp.broadcast_to(jnp.sqrt(jnp.sum(x * x, axis=axes, keepdims=True)), x.shape)


@state_class(extras=("count", "hyperparams"))
class AdaptiveGradClipState:
    """``count``: updates done; ``hyperparams``: clipping and eps as used last."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("adaptive_grad_clip", hyperparams=("clipping", "eps"))
class AdaptiveGradClip(GradientTransformation):
    r"""Adaptive gradient clipping (AGC): clips each unit's gradient norm to a fraction of the
    unit's parameter norm.

    For each unit :math:`i` (a column of a dense kernel, an output channel of a convolution, a
    whole scalar or vector leaf), with :math:`M_i = \lambda \max(\lVert p_i\rVert, \epsilon)`,

    .. math::
        u_i = g_i \;\text{ if }\; \lVert g_i\rVert < M_i, \quad\text{else}\quad
        u_i = g_i\, \frac{M_i}{\max(\lVert g_i\rVert, 10^{-6})}.

    Args:
      clipping: :math:`\lambda \ge 0`, the largest gradient-to-parameter norm ratio.
      eps: :math:`\epsilon \ge 0`, default 1e-3: the parameter norm of a unit starting at zero.
      axis: the axes a unit's norm is taken over, for leaves of other layouts (default: by the
        leaf's number of axes, as optax: axis 0 for 2-D and 3-D, all but the last for 4-D and
        5-D kernels).

    Needs ``params``. The norms are taken in float32 or better. Reference: Brock et al.,
    "High-Performance Large-Scale Image Recognition Without Normalization" (2021). Same as
    ``optax.adaptive_grad_clip``.
    """

    clipping: ScalarOrSchedule
    eps: ScalarOrSchedule = 1e-3
    axis: Any = None

    def __post_init__(self):
        check_number("clipping", self.clipping, low=0.0)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        return AdaptiveGradClipState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)

        def clip_leaf(path, g, p):
            dt = compute_dtype(jnp.promote_types(g.dtype, p.dtype))
            g32 = g.astype(dt)
            where = jax.tree_util.keystr(path)
            g_norm = _unitwise_norm(g32, self.axis, where)
            p_norm = _unitwise_norm(p.astype(dt), self.axis, where)
            max_norm = hp["clipping"].astype(dt) * jnp.maximum(p_norm, hp["eps"].astype(dt))
            clipped = g32 * (max_norm / jnp.maximum(g_norm, 1e-6))
            return jnp.where(g_norm < max_norm, g32, clipped).astype(g.dtype)

        out = jax.tree_util.tree_map_with_path(clip_leaf, updates, params)
        if stateless_call(state):
            return out, state
        return out, AdaptiveGradClipState(count=safe_increment(count_of(state)), hyperparams=hp)


adaptive_grad_clip = AdaptiveGradClip


# ---------------------------------------------------------------------------------------------
# Per-example clipping (differential privacy): functions of a batch of gradients


def _check_batch_dim(grads, name):
    leaves = jax.tree.leaves(grads)
    if not leaves or any(jnp.ndim(g) == 0 for g in leaves):
        raise ValueError(
            f"{name} expects every leaf of grads to have a batch dimension in axis 0, got "
            f"shapes {jax.tree.map(jnp.shape, grads)}"
        )
    sizes = {jnp.shape(g)[0] for g in leaves}
    if len(sizes) != 1:
        raise ValueError(f"{name}: the leaves of grads have different batch sizes {sorted(sizes)}")


def per_example_global_norm_clip(grads: Updates, l2_norm_clip: float) -> tuple[Updates, jax.Array]:
    r"""Clips each example's gradient to global norm ``l2_norm_clip`` and sums over the batch.

    ``grads`` holds one gradient per example along axis 0 of every leaf. With :math:`N_b` the
    norm of example :math:`b`'s gradient over the whole tree,

    .. math:: G = \sum_b \min(1, C / N_b)\, g_b

    (factor 1 where :math:`N_b = 0`). Returns ``(G, number of examples clipped)``; divide
    :math:`G` by the batch size and add noise for DP-SGD. Not a transformation (its input has a
    batch axis the parameters lack), as in optax, whose ``per_example_global_norm_clip`` it
    matches. Reference: Abadi et al., "Deep Learning with Differential Privacy" (2016).
    """
    _check_batch_dim(grads, "per_example_global_norm_clip")
    check_number("l2_norm_clip", l2_norm_clip, low=0.0, allow_schedule=False)
    norms = jax.vmap(global_norm)(grads)
    factors = jnp.nan_to_num(jnp.minimum(l2_norm_clip / norms, 1.0), nan=1.0)

    def weighted_sum(g):
        # An integer batch sums to float, as in optax: casting back would truncate the factors.
        dt = jnp.promote_types(g.dtype, factors.dtype)
        return jnp.tensordot(factors.astype(dt), g.astype(dt), axes=1)

    return jax.tree.map(weighted_sum, grads), jnp.sum(factors < 1.0)


def per_example_layer_norm_clip(
    grads: Updates, global_l2_norm_clip: float, uniform: bool = True
) -> tuple[Updates, Updates]:
    r"""Per-example clipping leaf by leaf ("layer" by layer), with a share of the global bound
    for each leaf.

    Leaf :math:`l` of each example is clipped to :math:`C_l` and summed over the batch as
    :func:`per_example_global_norm_clip` does, with :math:`C_l = C/\sqrt{L}` for :math:`L` leaves
    (``uniform=True``) or :math:`C\sqrt{n_l/n}` (:math:`n_l` the leaf's size per example,
    :math:`n` the total): either way :math:`\sum_l C_l^2 = C^2`, so the whole clipped gradient
    has norm at most :math:`C`. Returns ``(sums, clipped counts)``, two trees like one example's
    gradient. Same as ``optax.per_example_layer_norm_clip``. Reference: McMahan et al.,
    "Learning Differentially Private Recurrent Language Models" (2018).
    """
    _check_batch_dim(grads, "per_example_layer_norm_clip")
    check_number("global_l2_norm_clip", global_l2_norm_clip, low=0.0, allow_schedule=False)
    check_bool("uniform", uniform)
    leaves, treedef = jax.tree.flatten(grads)
    if uniform:
        bounds = [global_l2_norm_clip * (1.0 / len(leaves)) ** 0.5 for _ in leaves]
    else:
        total = sum(g[0].size for g in leaves)
        bounds = [global_l2_norm_clip * (g[0].size / total) ** 0.5 for g in leaves]
    results = [per_example_global_norm_clip(g, c) for g, c in zip(leaves, bounds)]
    return (
        treedef.unflatten([r[0] for r in results]),
        treedef.unflatten([r[1] for r in results]),
    )
