"""Numerics shared by every transformation: one helper for one piece of arithmetic.

* Step counters are int32 and saturate at 2^31 - 1 instead of wrapping to a negative count.
* Bias corrections ``1 - beta^t`` are formed in float32 or better, never in the moment's dtype
  (``bf16(0.999) == 1.0``, so a bfloat16 correction would divide by zero).
* Moments are kept, and computed, in the parameter's dtype, as optax keeps them (a bfloat16
  parameter gets bfloat16 moments). gradchain's float32 policy for bfloat16/float16 parameters
  (ALGORITHMS.md §14: a bfloat16 second moment with ``b2 = 0.999`` never decays) is the option
  ``gradchain.with_float32_state(tx)``, which runs ``tx`` on float32 copies of such leaves.
"""

from __future__ import annotations

import functools
import math
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike

from gradchain.core.tree import (
    tree_update_infinity_moment,
    tree_update_moment,
    tree_update_moment_per_elem_norm,
)

__all__ = [
    "bias_correction",
    "safe_increment",
    "safe_int32_increment",
    "safe_norm",
    "safe_root_mean_squares",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
]

COUNT_DTYPE = jnp.int32

# The scalar and per-leaf helpers below are ``jax.jit(inline=True)``: inside a traced step they
# are inlined (the program, and so every float32 result, is as if written out), and in an
# un-jitted step each is one dispatch instead of one per operation, as optax's helpers are.
_inline_jit = functools.partial(jax.jit, inline=True)


def leaf_kernel(*static_argnames: str):
    """Decorator for a transformation's per-leaf arithmetic (a module-level function of the
    leaf's arrays and the step's scalars): ``jax.jit(inline=True)`` with ``static_argnames``.

    Traced, the kernel is inlined into the step; un-jitted, a leaf costs one dispatch instead
    of one per operation. The function must be defined once (not a closure made per call), so
    that its compiled program is reused from step to step.
    """
    return functools.partial(jax.jit, inline=True, static_argnames=static_argnames)


@overload
def safe_increment(count: jax.Array) -> jax.Array: ...
@overload
def safe_increment(count: None) -> None: ...
def safe_increment(count: jax.Array | None) -> jax.Array | None:
    """``count + 1``, saturating at the dtype's maximum (2^31 - 1 for the int32 counters).

    None stays None: a count that is a gradchain extra (see :mod:`gradchain.core.base`) is
    absent from the default state layout.
    """
    return None if count is None else _increment(count)


@_inline_jit
def _increment(count: jax.Array) -> jax.Array:
    count = jnp.asarray(count)
    top: Any
    if jnp.issubdtype(count.dtype, jnp.integer):
        top = jnp.iinfo(count.dtype).max
    elif jnp.issubdtype(count.dtype, jnp.floating):
        top = jnp.finfo(count.dtype).max
    else:
        raise ValueError(f"a step counter must be an integer or float array, got {count.dtype}")
    # The bound and the step in the counter's dtype: as Python ints, uint32's and uint64's maximum
    # overflow the weakly typed int they would be converted through.
    top = jnp.array(top, count.dtype)
    return jnp.where(count < top, count + jnp.array(1, count.dtype), top)


# optax's older name, kept at its root: the counters are int32, so the two are one function.
safe_int32_increment = safe_increment


def init_count() -> jax.Array:
    return jnp.zeros((), COUNT_DTYPE)


def compute_dtype(dtype) -> jnp.dtype:
    """The dtype moment arithmetic runs in: the parameter's own (bfloat16 for a bfloat16
    parameter, as optax computes), the default float dtype for an integer one.

    ``gradchain.with_float32_state`` runs a transformation on float32 copies of bfloat16 and
    float16 leaves, so that this is float32 there.
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        return jnp.dtype(jnp.result_type(float))
    return dtype


def float32_or_better(dtype) -> jnp.dtype:
    """:func:`compute_dtype` promoted to at least float32: the arithmetic of the gradchain-only
    pieces that keep gradchain's float32 policy by default (an eigendecomposition has no
    bfloat16 kernel; a learning-rate-free estimate in bfloat16 overflows)."""
    return jnp.promote_types(compute_dtype(dtype), jnp.float32)


def state_dtype(param_dtype, requested=None) -> jnp.dtype:
    """The dtype a moment of a ``param_dtype`` parameter is stored in.

    ``requested`` (a ``mu_dtype``/``nu_dtype`` argument) wins; otherwise the parameter's own
    dtype, as optax (float32 for bfloat16 parameters under ``gradchain.with_float32_state``).
    """
    if requested is not None:
        return jnp.dtype(requested)
    return compute_dtype(param_dtype)


def _shape_dtype(p):
    if hasattr(p, "shape") and hasattr(p, "dtype"):
        return tuple(p.shape), jnp.dtype(p.dtype)
    a = np.asarray(p)
    return a.shape, jnp.dtype(jnp.result_type(a))


def _sharding_of(p):
    """The sharding of a placed array or a ``ShapeDtypeStruct``; None inside a trace.

    An array jax placed by default (not committed) gives None: a committed moment next to an
    uncommitted count would make the state after one step (all committed) a different jit
    signature from the state ``init`` made, and the second step would compile again.
    """
    if isinstance(p, jax.core.Tracer):
        return None
    if isinstance(p, jax.Array) and not p.committed:
        return None
    sharding = getattr(p, "sharding", None)
    if sharding is None or not isinstance(sharding, jax.sharding.Sharding):
        return None
    return sharding


def _has_explicit_axes(mesh) -> bool:
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    return explicit is not None and explicit in (getattr(mesh, "axis_types", None) or ())


def named_sharding(mesh, *entries, ndim: int | None = None, memory_kind: str | None = None):
    """``NamedSharding(mesh, PartitionSpec(*entries))`` in the form a jitted step returns.

    ``P("data", None)`` and ``P("data")`` lay an array out alike but are different jit cache
    keys, so a state placed in the other form would compile the step once more after ``init``
    or a restore. On Auto mesh axes jit returns specs without trailing ``None`` s; on Explicit
    axes (sharding in types) one entry per axis of the array, ``ndim`` of them when given.
    """
    spec = list(entries)
    if ndim is not None and _has_explicit_axes(mesh):
        spec += [None] * (ndim - len(spec))
    else:
        while spec and spec[-1] is None:
            spec.pop()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
    return sharding if memory_kind is None else sharding.with_memory_kind(memory_kind)


def normalized(sharding, ndim: int | None = None):
    """``sharding`` (of an array of ``ndim`` axes) in the form of :func:`named_sharding`; a
    sharding that is not a ``NamedSharding`` as it is."""
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding
    return named_sharding(
        sharding.mesh, *sharding.spec, ndim=ndim, memory_kind=sharding.memory_kind
    )


def put(x, sharding):
    """``jax.device_put(x, sharding)`` that also works when ``sharding`` spans processes.

    A host-local array (uncommitted, or on one device of this process) cannot be moved onto
    devices of other processes (``jax.distributed``): every process then places its own copy
    of the value on its own devices, which is what a replicated scalar or a state made alike
    in every process needs.
    """
    if (
        isinstance(x, jax.Array)
        and x.is_fully_addressable
        and not sharding.is_fully_addressable
        and x.sharding != sharding
    ):
        x = np.asarray(x)
    return jax.device_put(x, sharding)


def home_sharding(params):
    """Where the scalars of a state of ``params`` belong: replicated over the mesh of the first
    parameter placed on one, else on the one device every committed parameter is on; None for
    uncommitted or traced parameters (jax then places the scalars as it places the rest)."""
    single = set()
    for p in jax.tree.leaves(params):
        sharding = _sharding_of(p)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return named_sharding(sharding.mesh)
        if isinstance(sharding, jax.sharding.SingleDeviceSharding):
            single.add(sharding)
        elif sharding is not None:
            return None
    return next(iter(single)) if len(single) == 1 else None


def commit_to_params(state, params):
    """``state`` with every host-local leaf (a count or live hyperparameter that ``init`` made
    with ``jnp.asarray``) placed on :func:`home_sharding` of ``params``; leaves already
    committed, and everything inside a trace, are left as they are.

    Without it a state on a mesh mixes global moments with host-local scalars: ``jax.jit``
    copes, but a checkpointer refuses the state across processes and the first step's
    signature differs from the second's on a multi-device mesh.
    """
    home = home_sharding(params)
    if home is None:
        return state

    def commit(x):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and not x.committed:
            return put(x, normalized(home, x.ndim))
        return x

    return jax.tree.map(commit, state)


def explicit_sharding(x):
    """``x``'s sharding when its type carries Explicit mesh axes (sharding in types), else None.

    On such axes every op must say how its result is laid out; on Auto axes XLA decides.
    """
    typeof = getattr(jax, "typeof", None)
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if typeof is None or explicit is None:
        return None
    sharding = getattr(typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if not any(t == explicit for t in getattr(mesh, "axis_types", None) or ()):
        return None
    return sharding


def zeros_like_param(p, dtype=None, fill: float = 0.0) -> jax.Array:
    """A state array shaped like parameter ``p`` (an array or a ``ShapeDtypeStruct``).

    It is placed with ``p``'s sharding when ``p`` has one, so that a moment lives on the devices
    of the parameter it mirrors. Inside a trace (``jax.jit(tx.init)``) the sharding is not known
    yet: the new array takes ``p``'s type (which carries the sharding on Explicit mesh axes) and
    is tied to ``p`` with ``shard_alike``, so that XLA lays the two out alike on Auto axes too.
    """
    shape, pdtype = _shape_dtype(p)
    dtype = pdtype if dtype is None else jnp.dtype(dtype)
    if isinstance(p, jax.core.Tracer):
        out, _ = shard_alike(jnp.full_like(p, fill, dtype), p)
        return out
    sharding = _sharding_of(p)
    if sharding is not None:
        return jnp.full(shape, fill, dtype, device=sharding)
    return jnp.full(shape, fill, dtype)


def reduced_sharding(sharding, ndim: int, axis: int, keepdims: bool = False):
    """The sharding of an array of ``ndim`` axes laid out as ``sharding`` once ``axis`` is
    reduced: the spec without that axis (``None`` in its place with ``keepdims``).

    None when that cannot be said (a sharding that is not a ``NamedSharding`` and not fully
    replicated).
    """
    if isinstance(sharding, jax.sharding.NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
        kept = spec[:axis] + ((None,) if keepdims else ()) + spec[axis + 1 :]
        return named_sharding(sharding.mesh, *kept, ndim=len(kept))
    if sharding is not None and sharding.is_fully_replicated:
        return sharding
    return None


def grouped_sharding(sharding, ndim: int, groups):
    """The sharding of an array whose axis ``k`` runs along the axes ``groups[k]`` of an array
    of ``ndim`` axes laid out as ``sharding`` (a tuple of axes, merged in that order; ``()`` for
    an axis of its own, such as a rank).

    An axis of one group axis takes that axis's sharding. A merged group takes the sharding of
    its first axis when the others are not sharded, so that each shard still holds contiguous
    whole blocks; otherwise it is replicated, as is an axis of its own. None when nothing can be
    said (as :func:`reduced_sharding`).
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return sharding if sharding is not None and sharding.is_fully_replicated else None
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    entries = []
    for group in groups:
        first = spec[group[0]] if group else None
        entries.append(first if all(spec[a] is None for a in group[1:]) else None)
    return named_sharding(sharding.mesh, *entries, ndim=len(entries))


def zeros_along(p, groups, shape, dtype=None) -> jax.Array:
    """A state array of ``shape`` whose axis ``k`` runs along the axes ``groups[k]`` of
    parameter ``p`` (``()``: an axis of its own), laid out by :func:`grouped_sharding`.

    Works on arrays, ``ShapeDtypeStruct`` s and, inside a trace, as :func:`zeros_like_reduced`
    does: the axes no group uses are summed out of a zero moment placed like ``p`` (keeping
    their place, so that each axis of its own sits on one of them), the rest are transposed
    into order and merged, and the axes of their own are broadcast, so that XLA propagates the
    layout.
    """
    pshape, pdtype = _shape_dtype(p)
    dtype = pdtype if dtype is None else jnp.dtype(dtype)
    if isinstance(p, jax.core.Tracer):
        used = [a for g in groups for a in g]
        unused = [a for a in range(len(pshape)) if a not in used]
        z = jnp.sum(zeros_like_param(p, dtype), axis=tuple(unused), keepdims=True)
        spare = iter(unused)
        order = [a for g in groups for a in (g or (next(spare, None),)) if a is not None]
        z = z.transpose(order + [a for a in unused if a not in order])
        merged = tuple(math.prod(pshape[a] for a in g) if g else 1 for g in groups)
        if z.shape != merged:
            typed = explicit_sharding(p)  # sharding in types: the reshape must be told
            layout = None if typed is None else grouped_sharding(typed, len(pshape), groups)
            z = jnp.reshape(z, merged) if layout is None else z.reshape(merged, out_sharding=layout)
        return jnp.broadcast_to(z, shape)
    sharding = grouped_sharding(_sharding_of(p), len(pshape), groups)
    if sharding is not None:
        return jnp.zeros(shape, dtype, device=sharding)
    return jnp.zeros(shape, dtype)


def keep_layout(new, old):
    """``new`` (a pytree) laid out leaf by leaf as ``old``, a state leaf it replaces.

    Under ``jax.jit`` the two are tied with ``shard_alike``: the state that comes in fixes the
    layout of the state that goes out, instead of whatever XLA's propagation picks after an
    operation that re-lays out its result (an SVD). On Explicit mesh axes, where the layout is
    part of the type, ``new`` is resharded to ``old``'s type. Eagerly, ``new`` is moved to ``old``'s
    sharding when ``old`` is committed to one; single-device use is unchanged.
    """

    def keep(n, o):
        if n is None or jnp.shape(n) != jnp.shape(o):
            return n
        if isinstance(o, jax.core.Tracer) or isinstance(n, jax.core.Tracer):
            typed = explicit_sharding(o)
            if typed is None:
                return shard_alike(n, o)[0]
            return n if explicit_sharding(n) == typed else jax.sharding.reshard(n, typed)
        sharding = _sharding_of(o)
        if sharding is None or sharding == getattr(n, "sharding", None):
            return n
        return jax.device_put(n, sharding)

    return jax.tree.map(keep, new, old, is_leaf=lambda x: x is None)


def zeros_like_reduced(p, axis: int, dtype=None, keepdims: bool = False) -> jax.Array:
    """A statistic of parameter ``p`` with ``axis`` reduced away (a factored row or column
    second moment), placed on the devices that hold ``p``'s remaining axes.

    Works on arrays, ``ShapeDtypeStruct`` s and, inside a trace, by reducing a zero moment
    placed like ``p`` (see :func:`zeros_like_param`), so that XLA propagates the layout.
    """
    shape, pdtype = _shape_dtype(p)
    dtype = pdtype if dtype is None else jnp.dtype(dtype)
    axis = axis % len(shape)
    if isinstance(p, jax.core.Tracer):
        return jnp.sum(zeros_like_param(p, dtype), axis=axis, keepdims=keepdims)
    reduced = shape[:axis] + ((1,) if keepdims else ()) + shape[axis + 1 :]
    sharding = reduced_sharding(_sharding_of(p), len(shape), axis, keepdims)
    if sharding is not None:
        return jnp.zeros(reduced, dtype, device=sharding)
    return jnp.zeros(reduced, dtype)


def moments_like(params, requested_dtype=None, fill: float = 0.0, *, float32: bool = False):
    """One state array per parameter leaf, filled with ``fill``, in :func:`state_dtype`
    (:func:`float32_or_better` with ``float32``)."""
    if float32:
        return jax.tree.map(lambda p: zeros_like_param(p, float32_or_better(p.dtype), fill), params)
    return jax.tree.map(
        lambda p: zeros_like_param(p, state_dtype(p.dtype, requested_dtype), fill), params
    )


def cast_like(new, old):
    """``new`` cast leaf by leaf to the dtypes of ``old``: states keep their dtype across steps."""
    return jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)


def _clamped_norm(x, min_norm, axis):
    """``n = sqrt(sum(|x|^2))`` over ``axis`` (kept), whether ``n <= min_norm``, and
    ``where(n <= min_norm, min_norm, n)``."""
    n = jnp.sqrt(jnp.sum(abs_sq(x), axis=axis, keepdims=True).real)
    small = n <= min_norm
    return n, small, jnp.where(small, min_norm.astype(n.dtype), n)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _euclidean_safe_norm(x, min_norm, axis):
    """``where(n <= min_norm, min_norm, n)`` for ``n = sqrt(sum(|x|^2))`` over ``axis`` (kept)."""
    return _clamped_norm(x, min_norm, axis)[2]


@_euclidean_safe_norm.defjvp
def _euclidean_safe_norm_jvp(axis, primals, tangents):
    # d||x|| = Re(sum(conj(x) dx)) / ||x|| where the norm exceeds min_norm; there the result is
    # min_norm, whose derivative is its own tangent (optax's safe_norm differentiates the same).
    x, min_norm = primals
    dx, dmin = tangents
    n, small, out = _clamped_norm(x, min_norm, axis)
    inner = jnp.sum((jnp.conj(x) * dx).real, axis=axis, keepdims=True)
    dn = inner / jnp.where(small, jnp.ones_like(n), n)
    return out, jnp.where(small, jnp.asarray(dmin, n.dtype), dn.astype(n.dtype))


def safe_norm(
    x: jax.typing.ArrayLike,
    min_norm: jax.typing.ArrayLike,
    ord: int | float | str | None = None,
    axis: int | tuple[int, ...] | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""``max(||x||, min_norm)`` whose gradient is 0, not NaN, where ``||x|| <= min_norm``.

    .. math:: \text{safe\_norm}(x) = \begin{cases} \|x\| & \|x\| > \text{min\_norm} \\
              \text{min\_norm} & \text{otherwise} \end{cases}

    ``jnp.maximum(jnp.linalg.norm(x), min_norm)`` differentiates both branches, and the norm's
    gradient at ``x = 0`` is 0/0; here the discarded branch is the norm of ones in place of
    ``x`` wherever the norm is at most ``min_norm``, whose gradient is finite.

    Args:
      x: an array (real or complex).
      min_norm: the lower bound of the result.
      ord: the norm, as ``jnp.linalg.norm``'s ``ord`` (default None: the Euclidean norm over
        ``axis``, or over every entry when ``axis`` is None).
      axis: the axes to take the norm over (default None: all of them for ``ord=None``;
        ``jnp.linalg.norm``'s convention otherwise).
      keepdims: keep the reduced axes with size one.

    Same as ``optax.safe_norm``. With ``ord=None`` the Euclidean norm over any number of axes is
    formed as ``sqrt(sum(|x|^2))`` (what ``jnp.linalg.norm`` computes for one or two axes), and
    ``x`` is read once: optax differentiates through a second norm of ``where(small, 1, x)``,
    which XLA writes out and reduces again; here a custom JVP gives the same derivative
    (``x / ||x||`` where the norm exceeds ``min_norm``, 0 in ``x`` and 1 in ``min_norm``
    elsewhere). Other ``ord`` values keep optax's two norms.
    """
    x = jnp.asarray(x)
    if ord is None:
        # One pass over ``x``: the value is optax's, and the derivative (custom_jvp) is what
        # optax's masked second norm differentiates to, without reading ``x`` a second time.
        axes = tuple(range(x.ndim)) if axis is None else axis
        out = _euclidean_safe_norm(x, jnp.asarray(min_norm), axes)
        return out if keepdims else jnp.squeeze(out, axis=axis)

    def norm_of(v):
        return jnp.linalg.norm(v, ord=ord, axis=axis, keepdims=True)

    small = norm_of(x) <= min_norm
    safe = norm_of(jnp.where(small, jnp.ones_like(x), x))
    out = jnp.where(small, jnp.asarray(min_norm, safe.dtype), safe)
    return out if keepdims else jnp.squeeze(out, axis=axis)


def safe_root_mean_squares(x: jax.typing.ArrayLike, min_rms: jax.typing.ArrayLike) -> jax.Array:
    r"""``max(sqrt(mean(|x|^2)), min_rms)`` whose gradient is 0, not NaN, at ``x = 0``.

    .. math:: \text{rms}(x) = \sqrt{\tfrac1n \textstyle\sum_i |x_i|^2}, \qquad
              \text{result} = \text{rms}(x) \text{ if } \text{rms}(x) > \text{min\_rms}
              \text{ else } \text{min\_rms}

    The mean is over every entry of ``x``. Same as ``optax.safe_root_mean_squares``.
    """
    x = jnp.asarray(x)
    rms = jnp.sqrt(jnp.mean(abs_sq(x)).real)
    small = rms <= min_rms
    masked = jnp.where(small, jnp.ones_like(x), x)
    return jnp.where(small, min_rms, jnp.sqrt(jnp.mean(abs_sq(masked)).real))


@functools.partial(jax.jit, inline=True, static_argnames="eps_in_sqrt")
def inverse_root(second_moment, eps, eps_in_sqrt: bool):
    """``1/sqrt(s + eps)`` (eps inside the root) or ``1/(sqrt(s) + eps)`` (outside)."""
    if eps_in_sqrt:
        return inverse_sqrt(second_moment + eps)
    return 1 / (jnp.sqrt(second_moment) + eps)


@_inline_jit
def bias_correction(moment: jax.Array, decay: jax.typing.ArrayLike, count: jax.Array) -> jax.Array:
    """``moment / (1 - decay^count)``, with the power formed in float32 or better.

    ``count`` is the 1-based step number (``count = 0`` would divide by zero, so callers pass
    ``count + 1``). The correction is cast to the moment's dtype before the division, as in
    optax, so an exact fp32 cross-check stays exact. A step over a tree forms the divisor once
    (:func:`bias_divisor`) and divides each leaf by it (:func:`debias`): the same bits, without
    a power and its conversions traced, lowered and compiled per leaf.
    """
    divisor = bias_divisor(decay, count)
    # A tree of moments too, as optax's ``bias_correction`` takes.
    return jax.tree.map(lambda m: debias(m, divisor), moment)


@_inline_jit
def bias_divisor(decay: jax.typing.ArrayLike, count: jax.Array) -> jax.Array:
    """``1 - decay^count`` in float32 or better: what :func:`bias_correction` divides by,
    formed once per step (a scalar) and shared by every leaf through :func:`debias`."""
    decay = jnp.asarray(decay, dtype=jnp.promote_types(jnp.asarray(decay).dtype, jnp.float32))
    return 1 - count_power(decay, count)


def debias(moment: jax.Array, divisor: jax.Array) -> jax.Array:
    """``moment / divisor`` with the divisor (:func:`bias_divisor`) cast to the moment's dtype:
    :func:`bias_correction` with its divisor formed once for the whole tree."""
    return moment / divisor.astype(moment.dtype)


def count_power(base, count) -> jax.Array:
    """``base ** count`` for a float ``base`` and an integer step ``count``, as one ``lax.pow``.

    This is the operation ``jnp.power`` emits under ``jax.jit``, so a jitted step gives optax's
    float32 result bit for bit. ``base ** count`` outside a trace would instead see a concrete
    count and emit an ``integer_pow`` specialised on its value: a new XLA program, compiled
    anew, on every un-jitted step.
    """
    base, count = jnp.asarray(base), jnp.asarray(count)
    if not jnp.issubdtype(base.dtype, jnp.inexact):
        base = base.astype(jnp.result_type(float))
    return jax.lax.pow(base, count)


@_inline_jit
def nesterov_bias_corrected(m: jax.Array, g: jax.Array, decay, one_minus_decay, count) -> jax.Array:
    r"""NAdam's look-ahead first moment, in the promotion of ``m``'s and ``g``'s dtypes:
    :math:`\beta m_t / (1-\beta^{t+1}) + (1-\beta)\, g_t / (1-\beta^t)`.

    ``count`` is the 1-based step :math:`t`; ``one_minus_decay`` is :math:`1-\beta` as the caller
    forms it (``1 - decay`` or ``GradientTransformation.complement``). A step over a tree forms
    the two divisors once (:func:`nesterov_divisors`) and calls :func:`nesterov_debiased` per
    leaf, the same bits.
    """
    return nesterov_debiased(m, g, decay, one_minus_decay, *nesterov_divisors(decay, count))


def nesterov_divisors(decay, count) -> tuple[jax.Array, jax.Array]:
    """The divisors :math:`(1-\beta^{t+1}, 1-\beta^t)` of NAdam's look-ahead moment."""
    return bias_divisor(decay, safe_increment(count)), bias_divisor(decay, count)


def nesterov_debiased(m: jax.Array, g: jax.Array, decay, one_minus_decay, ahead, divisor):
    """:func:`nesterov_bias_corrected` of one leaf, given :func:`nesterov_divisors`."""
    ahead_m, now_g = debias(m, ahead), debias(g, divisor)
    return as_dtype_of(decay, ahead_m) * ahead_m + as_dtype_of(one_minus_decay, now_g) * now_g


def abs_sq(x: jax.Array) -> jax.Array:
    """``|x|^2`` elementwise in ``x``'s dtype: ``x * x`` for real ``x`` (the same bits as
    before complex support), ``re^2 + im^2`` for complex ``x``, as optax's second moments."""
    if jnp.iscomplexobj(x):
        return (jnp.square(x.real) + jnp.square(x.imag)).astype(x.dtype)
    return x * x


@_inline_jit
def ema(old: jax.Array, new: jax.Array, decay, one_minus_decay=None) -> jax.Array:
    """``decay * old + (1 - decay) * new``: the moment update every EMA in gradchain uses.

    ``one_minus_decay`` may be passed precomputed (see ``GradientTransformation.complement``).
    """
    if one_minus_decay is None:
        one_minus_decay = 1 - decay
    # Each factor takes the dtype of the array it scales, as optax's Python-float decay does
    # (weak typing): with a bfloat16 gradient and a float32 moment (``mu_dtype``), the product
    # with the gradient is rounded to bfloat16 before the float32 sum, in optax as here.
    return as_dtype_of(one_minus_decay, new) * new + as_dtype_of(decay, old) * old


def as_dtype_of(scalar, x):
    """``scalar`` in the real dtype of array ``x``: how a Python float hyperparameter enters
    optax's arithmetic with ``x`` (a weakly typed constant takes the array's dtype)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return scalar
    return jnp.asarray(scalar).astype(jnp.finfo(x.dtype).dtype)


@_inline_jit
def adam_moments(g: jax.Array, m: jax.Array, v: jax.Array, b1, c1, b2, c2):
    r"""Adam's two moment updates of one leaf, ``(g, m_t, v_t)``, each moment in the promotion
    of its dtype with the gradient's.

    ``c1``, ``c2`` are :math:`1-\beta_1`, :math:`1-\beta_2` as
    ``GradientTransformation.complement`` forms them. Shared by every Adam relative, so their
    moments agree bit for bit.
    """
    g = g.astype(compute_dtype(g.dtype))
    # Each moment in the promotion of its own dtype with the gradient's (optax's arithmetic; a
    # ``mu_dtype=float32`` moment of a bfloat16 gradient is updated in float32).
    return g, ema(m, g, b1, c1), ema(v, abs_sq(g), b2, c2)


@_inline_jit
def inverse_sqrt(x: jax.Array) -> jax.Array:
    """``1 / sqrt(x)`` per coordinate, formed as ``sqrt(1 / x)``.

    XLA rewrites ``x ** -0.5`` and ``1 / sqrt(x)`` into its ``rsqrt`` instruction, which XLA:CPU
    does not vectorize: ten times slower than a divide and a square root, enough to make a
    memory-bound optimizer step compute-bound. ``sqrt(1 / x)`` is two vectorized, correctly
    rounded operations, within 1.5e-7 relative of the exact value (``rsqrt``: 2e-7). It
    overflows to ``inf`` for ``x`` below ``1 / float_max`` (3e-39 in float32), where ``rsqrt``
    would still be finite; every caller adds an epsilon first.
    """
    if jnp.finfo(x.dtype).bits < 32:
        # bfloat16/float16: rounding ``1 / x`` before the root would round twice, where optax's
        # ``rsqrt`` rounds once; at 8 bits of mantissa that is a visible difference.
        return jax.lax.rsqrt(x)
    return jnp.sqrt(1 / x)


def max_propagating_nan(a: jax.Array, b: jax.Array) -> jax.Array:
    """``max(a, b)``, NaN if either is NaN, written as a select: a reduction by it is not a
    plain maximum, which XLA:CPU hands to YNNPACK whole instead of fusing its producer."""
    return jnp.where((a > b) | jnp.isnan(a), a, b)


def materialized(x: jax.Array) -> jax.Array:
    """``x``, computed once into memory rather than inside each consumer.

    XLA:CPU fuses an elementwise computation into every kernel that reads it, recomputing it
    in each. An optimization barrier does not prevent that (XLA:CPU turns it into a scheduling
    constraint before fusing); the result of a reduction with more than one consumer is kept in
    memory. So ``x`` is reduced with the lowest value of its dtype (``max(x, -inf) = x`` bit for
    bit, NaN kept) by a computation that is not a plain maximum, which YNNPACK would take over
    instead. On XLA:CPU a temporary above 32 MiB is mapped afresh at every call (glibc's
    largest mmap threshold), and its first writes fault in every page: keep what is
    materialized small.
    """
    if jnp.issubdtype(x.dtype, jnp.floating):
        lowest, select = np.array(-np.inf, x.dtype), max_propagating_nan
    else:
        lowest, select = np.array(jnp.iinfo(x.dtype).min, x.dtype), _max_by_select
    pair = jnp.stack([x, jnp.full_like(x, lowest)])
    return jax.lax.reduce(pair, lowest, select, (0,))


def _max_by_select(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(a > b, a, b)


def _bits_dtype(dtype) -> jnp.dtype:
    return jnp.dtype(f"int{jnp.dtype(dtype).itemsize * 8}")


# ``after`` and ``stored`` act on arrays from this many elements (256 KiB in float32). Below it,
# the copy XLA makes of an old state value is small enough to stay in cache and is not mapped
# afresh at each call, while the instructions that avoid it add compile time to every leaf.
ORDERED_MIN_SIZE = 1 << 16


def _zero_bits_of(y: jax.Array, dtype) -> jax.Array:
    """Zero bits in the integer type of ``dtype``'s width, computed from every element of ``y``
    (``b & ~b`` of its bits): zero, but not provably so to XLA, which folds ``b ^ b`` and
    ``b - b``."""
    b = jax.lax.bitcast_convert_type(y, _bits_dtype(y.dtype))
    return (b & ~b).astype(_bits_dtype(dtype))


def after(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x`` (floating) bit for bit, made to depend on every element of ``y`` (same shape), so
    that the kernel writing ``x`` runs after the one computing ``y``; ``x`` itself below
    ``ORDERED_MIN_SIZE`` elements.

    A state array updated in place (its buffer donated) can only be overwritten once every other
    reader of its old value has run; where XLA cannot order them, it copies the old value first
    (a full extra pass over the array). Computing the new value after a materialized ``y``
    that read the old one orders them. The dependency is a bitwise or with zero bits made from
    ``y``'s (:func:`_zero_bits_of`).
    """
    if x.size < ORDERED_MIN_SIZE:
        return x
    bits = jax.lax.bitcast_convert_type(x, _bits_dtype(x.dtype)) | _zero_bits_of(y, x.dtype)
    return jax.lax.bitcast_convert_type(bits, x.dtype)


def stored(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x`` (floating) bit for bit, written to memory once by the kernel that computes it and
    read back by every later reader, rather than recomputed inside each of them.

    XLA fuses an elementwise value into each of its consumers unless that would read more
    arrays than it writes; an instruction with one large operand and scalars besides (``s +
    eps``, ``s * c``, ``where(flag, s, 0)``) counts as unary and is duplicated, and the whole
    expression behind it with it. A new state array computed so is then computed twice: once
    into its output buffer, once inside the update's kernel, which reads the *old* state, its
    inputs again, and, when the state is donated, a copy of the old state that XLA makes
    because it cannot order that read before the in-place write. Adding ``-0.0`` made from
    ``y`` (a large array of ``x``'s shape, best one the kernel reads anyway; see :func:`after`)
    makes the last instruction binary, which XLA keeps in memory. ``x + (-0.0)`` is ``x`` for
    every ``x``, signed zeros and NaN included (a subnormal ``x`` is flushed to zero on
    XLA:CPU, as every other arithmetic result there is). Below ``ORDERED_MIN_SIZE`` elements,
    ``x`` itself.
    """
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.size < ORDERED_MIN_SIZE:
        return x  # (complex: bitcasts of complex values are not defined)
    int_dtype = _bits_dtype(x.dtype)
    sign = np.array(np.iinfo(int_dtype).min, int_dtype)  # the bits of -0.0
    negative_zero = jax.lax.bitcast_convert_type(_zero_bits_of(y, x.dtype) | sign, x.dtype)
    return x + negative_zero


# optax's root names of its tree moment helpers (``optax.update_moment`` is
# ``optax.tree_utils.tree_update_moment``): one implementation, in :mod:`gradchain.core.tree`.
update_moment = tree_update_moment
update_infinity_moment = tree_update_infinity_moment
update_moment_per_elem_norm = tree_update_moment_per_elem_norm
