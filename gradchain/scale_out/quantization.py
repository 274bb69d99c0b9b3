"""8-bit optimizer states: block-wise dynamic quantization of moments (Dettmers et al.).

A moment tensor of ``n`` elements is flattened, padded with zeros to ``n_blocks * block_size``
and cut into blocks. Each block keeps one float32 scale, the largest magnitude in the block, and
one uint8 code per element: the index of the nearest value of the *dynamic (tree) map* to the
element divided by the scale. First moments use the signed map, second moments the unsigned one.
A state of two 8-bit moments costs ``2 * (1 + 4 / block_size)`` bytes per parameter instead of 8.

The step itself runs in float32: :func:`quantize_moments` dequantizes the moments of any
moment-based transformation, runs that transformation's own update, and requantizes the new
moments, all inside the jitted step. Tensors smaller than ``min_8bit_size`` elements, and leaves
chosen by a ``keep_float32`` mask (embeddings: "stable embedding"), keep float32 state.

The codes of a tensor are shaped ``(n_blocks, block_size)`` and its scales ``(n_blocks,)``: both
can be sharded along the block axis. When a parameter is sharded along its leading axis and each
shard holds a multiple of ``block_size`` elements, the blocks of a shard are exactly the blocks
of that shard's elements, so the codes shard the same way as the parameter.

Reference: Dettmers, Lewis, Shleifer & Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization" (ICLR 2022); bitsandbytes (ALGORITHMS.md §10).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike

from gradchain.core.base import (
    Chain,
    ChainState,
    GradientTransformation,
    ScalarOrSchedule,
    _call_update,  # how a chain passes extra arguments to its parts
    check_bool,
    check_floating,
    check_int,
    check_number,
    optimizer_chain,
    require_params,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    _sharding_of,
    compute_dtype,
    explicit_sharding,
    init_count,
    safe_increment,
)
from gradchain.optimizers.alias import _argument_names
from gradchain.optimizers.lion import scale_by_lion
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.decay import add_decoupled_weight_decay, resolve_mask
from gradchain.transforms.momentum import trace
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "QuantizedArray",
    "adam_8bit",
    "adamw_8bit",
    "block_axis_sharding",
    "dequantize_blockwise",
    "dynamic_map",
    "lion_8bit",
    "quantize_blockwise",
    "quantize_moments",
    "sgd_8bit",
]

# ---------------------------------------------------------------------------------------------
# The dynamic (tree) quantization maps


def _torch_linspace_f32(n: int) -> np.ndarray:
    """``torch.linspace(0.1, 1.0, n)`` in float32, rounded exactly as PyTorch's CPU kernel does.

    The kernel forms ``step = (end - start) / (n - 1)`` in float32, then evaluates the first half
    as ``start + step * i`` and the second half as ``end - step * (n - 1 - i)``, each compiled to
    one fused multiply-add (a single rounding). A float64 evaluation of ``start + step * i`` from
    float32 operands is exact (at most 32 significant bits), so one cast reproduces it.
    """
    start, end = np.float32(0.1), np.float32(1.0)
    step = np.float32((end - start) / np.float32(n - 1))
    i = np.arange(n, dtype=np.float64)
    from_start = np.float64(start) + np.float64(step) * i
    from_end = np.float64(end) - np.float64(step) * (n - 1 - i)
    return np.where(i < n // 2, from_start, from_end).astype(np.float32)


def _build_dynamic_map(signed: bool) -> np.ndarray:
    values = []
    for i in range(7):  # decade 10^(i - 6)
        n = 2**i + 1 if signed else 2 ** (i + 1) + 1
        b = _torch_linspace_f32(n)
        means = (b[:-1] + b[1:]) / np.float32(2)
        # A float32 tensor times a Python scalar is a float32 product in PyTorch.
        scaled = np.float32(10.0 ** (i - 6)) * means
        values.append(scaled)
        if signed:
            values.append(-scaled)
    values.append(np.array([0.0, 1.0], np.float32))
    return np.sort(np.concatenate(values)).astype(np.float32)


_SIGNED_MAP = _build_dynamic_map(signed=True)
_UNSIGNED_MAP = _build_dynamic_map(signed=False)
_SIGNED_ZERO = 127  # index of 0.0 in the signed map


def dynamic_map(signed: bool = True) -> np.ndarray:
    """The 256 float32 values of the dynamic (tree) quantization map, sorted ascending.

    A uint8 code is an index into this table. Built as bitsandbytes'
    ``create_dynamic_map(signed)`` (ALGORITHMS.md §10.3): for each decade ``10^(i-6)``,
    ``i = 0..6``, the midpoints of ``linspace(0.1, 1, 2^i + 1)`` (signed, mirrored to negative
    values) or of ``linspace(0.1, 1, 2^(i+1) + 1)`` (unsigned: the sign bit becomes a fraction
    bit), times ``10^(i-6)``; plus 0 and 1. Equal bit for bit to bitsandbytes' float32 tables.

    * signed: 127 negative values down to -0.99296874 (there is no -1), 0.0 at index 127,
      127 positive values from 5.5e-7, and 1.0 at index 255;
    * unsigned: 0.0 at index 0, 254 values from 3.25e-7 to 0.9964844, and 1.0 at index 255.
    """
    return (_SIGNED_MAP if signed else _UNSIGNED_MAP).copy()


def _lookup(table: np.ndarray, index: jax.Array) -> jax.Array:
    """``table[index]`` for in-range int32 indices, laid out like ``index``.

    With sharding in types (Explicit mesh axes) a gather must be told its output's sharding.
    """
    table = jnp.asarray(table)
    typeof = getattr(jax, "typeof", None)
    if typeof is None:  # a jax without sharding in types
        return jnp.take(table, index, mode="clip")
    return table.at[index].get(mode="clip", out_sharding=typeof(index).sharding)


class _NearestCode:
    """Exact nearest-value search in a sorted table of magnitudes ``0 = T[0] < ... < T[-1] = 1``.

    ``index(a)`` is the number of midpoints ``(T[k] + T[k+1]) / 2`` (float32) strictly below
    ``a``: the index of the nearest value, an exact midpoint going to the smaller one. Instead of
    a binary search (eight gathers per element) it reads a table indexed by the exponent and the
    top 7 mantissa bits of ``a``: every such bin holds at most one midpoint, so the count of
    midpoints below ``a`` is the count below the bin plus one comparison with that midpoint.
    """

    MANTISSA_BITS = 7

    def __init__(self, magnitudes: np.ndarray):
        mids = ((magnitudes[:-1] + magnitudes[1:]) / np.float32(2)).astype(np.float32)
        shift = 23 - self.MANTISSA_BITS
        # Bin 0 gathers everything below the smallest midpoint's binade (including 0).
        self.first = int(mids[0:1].view(np.int32)[0]) >> shift
        top = int(np.float32(1.0).reshape(1).view(np.int32)[0]) >> shift
        self.n_bins = top - self.first + 1
        self.shift = shift
        lower = ((np.arange(self.n_bins) + self.first) << shift).astype(np.int32).view(np.float32)
        lower[0] = 0.0
        upper = np.append(lower[1:], np.float32(np.inf))
        below = np.searchsorted(mids, lower, side="left")  # midpoints < lower edge
        inside = np.searchsorted(mids, upper, side="left") - below
        if inside.max() > 1:
            raise AssertionError("a bin holds two midpoints: use more mantissa bits")
        self.base = below.astype(np.int32)
        self.threshold = np.where(
            inside == 1, mids[np.minimum(below, len(mids) - 1)], np.float32(np.inf)
        ).astype(np.float32)

    def index(self, a: jax.Array) -> jax.Array:
        """Index (int32) of the nearest magnitude to ``a`` (float32, ``a <= 1``)."""
        bits = jax.lax.bitcast_convert_type(a, jnp.int32)
        key = jnp.clip((bits >> self.shift) - self.first, 0, self.n_bins - 1)
        base = _lookup(self.base, key)
        above = a > _lookup(self.threshold, key)
        return base + above.astype(jnp.int32)


_SIGNED_SEARCH = _NearestCode(_SIGNED_MAP[_SIGNED_ZERO:])  # 0, positive values, 1
_UNSIGNED_SEARCH = _NearestCode(_UNSIGNED_MAP)


def _encode(x: jax.Array, signed: bool) -> jax.Array:
    """uint8 codes of ``x`` in [-1, 1] (signed) or [0, 1] (unsigned): nearest value, sign rule.

    The signed map is symmetric around its zero (index 127) except for +1.0, which has no
    negative twin: a negative value looks up its magnitude among the 128 magnitudes below 1.
    Sign rule (ALGORITHMS.md §10.2): a negative value never rounds to zero but to the smallest
    negative code, so a first moment never changes sign through quantization. A positive value
    may round to zero, which never reverses the direction of a step.
    """
    if not signed:
        return _UNSIGNED_SEARCH.index(x).astype(jnp.uint8)
    j = _SIGNED_SEARCH.index(jnp.abs(x))
    negative = x < 0
    code = jnp.where(negative, _SIGNED_ZERO - jnp.clip(j, 1, _SIGNED_ZERO), _SIGNED_ZERO + j)
    return code.astype(jnp.uint8)


# ---------------------------------------------------------------------------------------------
# Quantized arrays


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A float32 tensor stored as uint8 codes and one float32 scale per block.

    Fields (pytree children): ``codes``, uint8 of shape ``(n_blocks, block_size)``, indices into
    :func:`dynamic_map`; ``absmax``, float32 of shape ``(n_blocks,)``, each block's largest
    magnitude. Static fields: ``shape``, the tensor's shape, and ``signed``, which map the codes
    index. Element ``i`` of the flattened tensor is
    ``dynamic_map(signed)[codes.flat[i]] * absmax[i // block_size]``; the padding after the last
    element holds code zero.
    """

    codes: jax.Array
    absmax: jax.Array
    shape: tuple[int, ...]
    signed: bool

    @property
    def block_size(self) -> int:
        return self.codes.shape[1]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def dtype(self):
        """The dtype :meth:`dequantize` returns."""
        return jnp.dtype(jnp.float32)

    def dequantize(self) -> jax.Array:
        return dequantize_blockwise(self)


jax.tree_util.register_dataclass(
    QuantizedArray, data_fields=["codes", "absmax"], meta_fields=["shape", "signed"]
)


def _is_quantized(x) -> bool:
    return isinstance(x, QuantizedArray)


def _check_block_size(block_size) -> None:
    check_int("block_size", block_size, low=1, what="a positive integer")


def block_axis_sharding(shape, spec, axis_sizes: Mapping[str, int], block_size: int):
    """The mesh axes the blocks of a tensor laid out as ``spec`` are split over, or None.

    Blocks follow the flattened tensor, so they can stay where the tensor's leading-axis shards
    are: the codes' and scales' block axis is split over the mesh axes of the tensor's leading
    axis when each of those shards holds whole blocks (a multiple of ``block_size`` elements).
    Otherwise (no leading-axis sharding, or shards that cut a block) the blocks are replicated.
    Mesh axes sharding later axes of the tensor are not carried over: flattening interleaves
    their shards, so requantizing gathers the moment along them.

    Args:
      shape: the tensor's shape; spec: its ``PartitionSpec`` (or a tuple of its entries);
      axis_sizes: the mesh's ``{axis name: size}``; block_size: elements per block.
    """
    shape = tuple(shape)
    if not shape:
        return None
    lead = (tuple(spec) + (None,))[0]
    if lead is None:
        return None
    names = lead if isinstance(lead, tuple) else (lead,)
    n = math.prod(axis_sizes[a] for a in names)
    if shape[0] % n or (shape[0] // n) * math.prod(shape[1:]) % block_size:
        return None
    return lead


def block_layout(shape, block_size: int, sharding):
    """``(codes, absmax)`` shardings of the 8-bit form of a tensor laid out as ``sharding`` (a
    ``NamedSharding``): split by :func:`block_axis_sharding`, else replicated on its mesh."""
    entry = block_axis_sharding(shape, sharding.spec, dict(sharding.mesh.shape), block_size)
    P = jax.sharding.PartitionSpec
    return (
        jax.sharding.NamedSharding(sharding.mesh, P(entry, None)),
        jax.sharding.NamedSharding(sharding.mesh, P(entry)),
    )


def _laid_out(sharding, *entries):
    """A NamedSharding on ``sharding``'s mesh with the given spec entries (None: no sharding)."""
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*entries))


def _reshape(x, shape, layout):
    # ``out_sharding`` only where a layout must be stated (jax versions before sharding in types
    # do not take the argument).
    if layout is None:
        return jnp.reshape(x, shape)
    return jnp.reshape(x, shape, out_sharding=layout)


def quantize_blockwise(x, signed: bool = True, block_size: int = 256) -> QuantizedArray:
    r"""Quantizes ``x`` to uint8 codes of the dynamic map with one float32 scale per block.

    .. math:: s_b = \max_{i \in b} |x_i|, \qquad
              c_i = \operatorname{nearest}\big(Q, x_i / s_b\big)

    over blocks of ``block_size`` consecutive elements of the flattened ``x`` (zero-padded). A
    block of zeros has :math:`s_b = 0` and the code of 0, so it dequantizes to exact zeros. The
    error of an element is at most :math:`s_b \cdot \max(G/2,\, 1 - |Q_0|)`, where :math:`G` is the
    map's largest gap and :math:`1 - |Q_0|` the distance from -1 to the most negative code.

    Args:
      x: a float array (computed on in float32).
      signed: use the signed map (first moments) or the unsigned map (non-negative second
        moments; negative values round to 0).
      block_size: elements per block, default 256 (bitsandbytes >= 0.44; the paper used 2048).

    On a mesh the blocks are laid out by :func:`block_axis_sharding`.
    """
    _check_block_size(block_size)
    x = jnp.asarray(x)
    shape = tuple(x.shape)
    n = int(np.prod(shape, dtype=np.int64))
    n_blocks = max(1, -(-n // block_size))
    sharding = explicit_sharding(x)
    entry = None
    if sharding is not None:
        entry = block_axis_sharding(shape, sharding.spec, dict(sharding.mesh.shape), block_size)
    flat = _reshape(x, (-1,), _laid_out(sharding, entry)).astype(jnp.float32)
    if n_blocks * block_size > n:  # never when the blocks are sharded: shards hold whole blocks
        flat = jnp.pad(flat, (0, n_blocks * block_size - n))
    blocks = _reshape(flat, (n_blocks, block_size), _laid_out(sharding, entry, None))
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    scale = jnp.where(absmax > 0, absmax, 1.0)
    codes = _encode(blocks / scale[:, None], signed)
    return QuantizedArray(codes=codes, absmax=absmax, shape=shape, signed=signed)


def dequantize_blockwise(q: QuantizedArray) -> jax.Array:
    """The float32 tensor ``dynamic_map(q.signed)[q.codes] * q.absmax``, shaped ``q.shape``.

    On Explicit mesh axes the result keeps the blocks' split on its leading axis.
    """
    table = _SIGNED_MAP if q.signed else _UNSIGNED_MAP
    values = _lookup(table, q.codes.astype(jnp.int32)) * q.absmax[:, None]
    sharding = explicit_sharding(q.codes)
    entry = None if sharding is None else (tuple(sharding.spec) + (None,))[0]
    flat = _reshape(values, (-1,), _laid_out(sharding, entry))
    if flat.shape[0] > q.size:
        flat = flat[: q.size]
    lead = (entry,) if q.shape else ()
    return _reshape(flat, q.shape, _laid_out(sharding, *lead, *(None,) * (len(q.shape) - 1)))


# ---------------------------------------------------------------------------------------------
# Quantizing the moments of any transformation

# Moment fields recognised by name, and the map each one uses.
_DEFAULT_MOMENTS = {"mu": "signed", "trace": "signed", "nu": "unsigned"}


def _rebuild(state, visit):
    """``state`` with each named field's value replaced by ``visit(name, value)``.

    Walks the containers optimizer states are made of: chain states, dataclass states, optax's
    NamedTuple states, tuples and lists. ``visit`` returns the value unchanged when the field is
    not a moment.
    """
    if isinstance(state, ChainState):
        return ChainState(tuple(_rebuild(s, visit) for s in state.states), state.names)
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        changes = {}
        for f in dataclasses.fields(state):
            old = getattr(state, f.name)
            new = visit(f.name, old)
            new = _rebuild(new, visit) if new is old else new
            if new is not old:
                changes[f.name] = new
        return dataclasses.replace(state, **changes) if changes else state
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        changes = {}
        for name in state._fields:
            old = getattr(state, name)
            new = visit(name, old)
            new = _rebuild(new, visit) if new is old else new
            if new is not old:
                changes[name] = new
        return state._replace(**changes) if changes else state
    if isinstance(state, (tuple, list)):
        return type(state)(_rebuild(s, visit) for s in state)
    return state


@transformation("quantize_moments")
class QuantizeMoments(GradientTransformation):
    r"""Keeps the moments of ``inner`` in 8-bit block-wise quantized form between steps.

    Each step dequantizes the moments to float32, runs ``inner.update`` on them (so the update
    uses the fresh float32 moments, as bitsandbytes' kernels do), and requantizes the new ones:

    .. math:: m = Q_s[c_m] \cdot s_m, \quad (u, m') = \mathrm{inner}(g, m), \quad
              (c_m, s_m) = \mathrm{quantize}(m')

    The state has ``inner``'s own type with every quantized moment leaf replaced by a
    :class:`QuantizedArray` (fields ``codes`` and ``absmax``), so
    ``state.mu["w"].codes`` reads the codes of parameter ``w``'s first moment.

    Args:
      inner: the transformation whose moments are stored in 8 bits: ``scale_by_adam``, ``trace``,
        ``scale_by_lion``, ``scale_by_rms``, an optax transformation or a chain of them.
      block_size: elements per quantization block, default 256 (bitsandbytes >= 0.44); 2048 is
        the paper's (ALGORITHMS.md §15 row 25).
      min_8bit_size: moments of tensors with fewer elements keep ``inner``'s float state
        (default 4096, as bitsandbytes).
      keep_float32: leaves whose moments stay in float state whatever their size: a pytree of
        bools (or a prefix of the params' tree) or a callable ``params -> pytree of bools``.
        This is the optimizer half of bitsandbytes' ``StableEmbedding``: pass a mask selecting
        the embedding tables (the other half, a LayerNorm after the embedding, is the model's).
      moments: ``{field name: "signed" | "unsigned"}``, the state fields holding moments and the
        map each uses. Default: ``mu`` and ``trace`` signed, ``nu`` unsigned, wherever they occur
        in ``inner``'s state (also inside chains and optax states).

    Non-finite gradients: as in the float transformation they make the moments non-finite; in
    8 bits a non-finite element spoils its whole block (bitsandbytes' kernels zero the moments of
    such an element instead). Skip such steps before this transformation.
    """

    complex_params = False

    inner: object
    block_size: int = 256
    min_8bit_size: int = 4096
    keep_float32: object = None
    moments: object = None

    def __post_init__(self):
        if isinstance(self.inner, type) or not (
            hasattr(self.inner, "init") and hasattr(self.inner, "update")
        ):
            raise TypeError(f"inner must be a gradient transformation, got {self.inner!r}")
        _check_block_size(self.block_size)
        check_int("min_8bit_size", self.min_8bit_size, what="an integer >= 0")
        if self.moments is not None:
            if not isinstance(self.moments, Mapping) or not self.moments:
                raise ValueError(
                    f"moments must be a non-empty dict {{field: 'signed' | 'unsigned'}}, "
                    f"got {self.moments!r}"
                )
            for field, kind in self.moments.items():
                if kind not in ("signed", "unsigned"):
                    raise ValueError(
                        f"moments[{field!r}] must be 'signed' or 'unsigned', got {kind!r}"
                    )

    def __getattr__(self, key):
        # Hyperparameters of the inner transformation read through: quantize_moments(adam).b1.
        if key.startswith("_") or key == "inner":
            raise AttributeError(key)
        return getattr(self.inner, key)

    @property
    def _moment_kinds(self) -> Mapping[str, str]:
        return _DEFAULT_MOMENTS if self.moments is None else self.moments

    def init(self, params):
        check_floating(params, self.name)  # 8-bit blocks quantize real numbers
        treedef = jax.tree.structure(params)
        keep = self._keep_leaves(params, treedef)
        found = []
        jax.eval_shape(lambda p: self._build(p, keep, found), params)
        if not found:
            raise ValueError(
                f"quantize_moments: no moment to quantize in the state of {self.inner!r}: none of "
                f"the fields {sorted(self._moment_kinds)} mirrors the parameters; name the moment "
                f"fields with moments={{field: 'signed' | 'unsigned'}}"
            )
        if self.moments is not None:
            missing = sorted(set(self.moments) - set(found))
            if missing:
                raise ValueError(
                    f"quantize_moments: the state of {self.inner!r} has no field {missing[0]!r} "
                    f"mirroring the parameters"
                )
        leaves = treedef.flatten_up_to(params)
        # Placed parameters lay out their moments' blocks (block_axis_sharding); inside a trace
        # their placement is not known and XLA lays the blocks out.
        layouts = tuple(
            s if isinstance(s, jax.sharding.NamedSharding) else None
            for s in map(_sharding_of, leaves)
        )
        if any(isinstance(p, jax.ShapeDtypeStruct) for p in leaves):
            return self._build(params, keep, [], layouts)  # abstract: nothing to jit over
        return _init_quantized(self, keep, layouts, params)

    def _build(self, params, keep: tuple[bool, ...], found: list, layouts=None):
        """``inner.init(params)`` with its moments quantized; moment fields go into ``found``;
        ``layouts`` holds each parameter's NamedSharding (or None)."""
        treedef = jax.tree.structure(params)
        param_leaves = treedef.flatten_up_to(params)
        layouts = layouts or (None,) * len(param_leaves)

        def quantize_field(name, tree):
            kind = self._moment_kinds.get(name)
            if kind is None:
                return tree
            try:
                moment_leaves = treedef.flatten_up_to(tree)
            except (ValueError, TypeError):
                return tree
            found.append(name)
            out = [
                self._maybe_quantize(m, p, k, kind == "signed", layout)
                for m, p, k, layout in zip(moment_leaves, param_leaves, keep, layouts)
            ]
            return treedef.unflatten(out)

        return _rebuild(self.inner.init(params), quantize_field)

    def _keep_leaves(self, params, treedef) -> tuple[bool, ...]:
        """``keep_float32`` as one bool per parameter leaf (a prefix tree is broadcast)."""
        if self.keep_float32 is None:
            return (False,) * treedef.num_leaves
        mask = self.keep_float32(params) if callable(self.keep_float32) else self.keep_float32

        def broadcast(m, subtree):
            try:
                flag = bool(np.asarray(m))
            except Exception:
                raise ValueError(
                    f"quantize_moments: keep_float32 leaves must be concrete bools, got {m!r}"
                ) from None
            return jax.tree.map(lambda _: flag, subtree)

        try:
            full = jax.tree.map(broadcast, mask, params)
            return tuple(treedef.flatten_up_to(full))
        except (ValueError, TypeError) as e:
            if "concrete bools" in str(e):
                raise
            raise ValueError(
                f"quantize_moments: the structure of keep_float32 is not a prefix of the "
                f"params' structure: {e}"
            ) from None

    def _maybe_quantize(self, moment, param, keep: bool, signed: bool, layout=None):
        if (
            keep
            or not hasattr(moment, "shape")
            or tuple(moment.shape) != tuple(np.shape(param))
            or not jnp.issubdtype(moment.dtype, jnp.floating)
            or int(np.prod(moment.shape, dtype=np.int64)) < max(self.min_8bit_size, 1)
        ):
            return moment
        # The barrier keeps XLA from constant-folding the quantization of a constant (zero)
        # moment at compile time, which takes seconds per tensor.
        moment = jax.lax.optimization_barrier(moment)
        q = quantize_blockwise(moment, signed=signed, block_size=self.block_size)
        if layout is None or explicit_sharding(q.codes) is not None:
            return q  # on Explicit axes quantize_blockwise laid the blocks out already
        codes, absmax = block_layout(q.shape, q.block_size, layout)
        return dataclasses.replace(
            q,
            codes=jax.lax.with_sharding_constraint(q.codes, codes),
            absmax=jax.lax.with_sharding_constraint(q.absmax, absmax),
        )

    def update(self, updates, state, params=None, **extra_args):
        treedef = jax.tree.structure(updates)
        update_leaves = treedef.flatten_up_to(updates)

        def dequantize_field(name, tree):
            try:
                leaves = treedef.flatten_up_to(tree)
            except (ValueError, TypeError):
                # Not shaped like the updates (a counter, or a state made for another tree):
                # dequantized as it is, so that the inner transformation's own check names the
                # path where the trees differ.
                return jax.tree.map(
                    lambda x: _dequantize_like(x, None) if _is_quantized(x) else x,
                    tree,
                    is_leaf=_is_quantized,
                )
            if not any(_is_quantized(x) for x in leaves):
                return tree
            return treedef.unflatten(
                [
                    _dequantize_like(x, g) if _is_quantized(x) else x
                    for x, g in zip(leaves, update_leaves)
                ]
            )

        dequantized = _rebuild(state, dequantize_field)
        updates, new_state = _call_update(self.inner, updates, dequantized, params, extra_args)

        def requantize(old, new):
            if not _is_quantized(old):
                return new
            q = quantize_blockwise(new, signed=old.signed, block_size=old.block_size)
            if explicit_sharding(q.codes) is not None:
                return q
            # On Auto axes XLA chooses the layout: keep the one the state came in with.
            codes, _ = shard_alike(q.codes, old.codes)
            absmax, _ = shard_alike(q.absmax, old.absmax)
            return dataclasses.replace(q, codes=codes, absmax=absmax)

        return updates, jax.tree.map(requantize, state, new_state, is_leaf=_is_quantized)


quantize_moments = QuantizeMoments


def _dequantize_like(q: QuantizedArray, update) -> jax.Array:
    """``q`` dequantized and, on Explicit mesh axes, laid out like its update leaf."""
    x = q.dequantize()
    target = None if update is None else explicit_sharding(update)
    if target is not None and explicit_sharding(x) != target:
        x = jax.sharding.reshard(x, target)
    return x


# Jitted so that the inner init's float moments are fused into their quantization instead of
# being allocated at full size first, and cached on the (hashable) transformation.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_quantized(tx: QuantizeMoments, keep: tuple[bool, ...], layouts: tuple, params):
    return tx._build(params, keep, [], layouts)


# ---------------------------------------------------------------------------------------------
# Weight decay after the step (bitsandbytes' CUDA order)


@state_class
class _DecayAfterStepState:
    count: jax.Array
    hyperparams: dict


@transformation("decay_after_step", hyperparams=("learning_rate", "weight_decay"))
class _DecayAfterStep(GradientTransformation):
    r"""Shrinks the stepped parameters: :math:`p_t = (p_{t-1} + u)(1 - \eta\lambda)`.

    Returns :math:`u(1 - \eta\lambda) - \eta\lambda\, p_{t-1}`. Placed after
    ``scale_by_learning_rate``, it is bitsandbytes' 8-bit AdamW (decay applied after the Adam
    step); optax and PyTorch's AdamW decay :math:`p_{t-1}` instead, a difference of
    :math:`\eta^2\lambda\, \hat m/(\sqrt{\hat v}+\epsilon)` per step.
    """

    learning_rate: float
    weight_decay: float
    mask: object = None

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("weight_decay", self.weight_decay, low=0.0)

    def init(self, params):
        return _DecayAfterStepState(init_count(), self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        hp = self.current_hyperparams(state)
        selected = resolve_mask(self.mask, params, "adamw_8bit")

        def decay(u, p, on):
            if not on:
                return u
            dt = compute_dtype(jnp.promote_types(u.dtype, p.dtype))
            shrink = (hp["learning_rate"] * hp["weight_decay"]).astype(dt)
            return (u.astype(dt) * (1 - shrink) - shrink * p.astype(dt)).astype(u.dtype)

        out = jax.tree.map(decay, updates, params, selected)
        return out, _DecayAfterStepState(safe_increment(state.count), hp)


# ---------------------------------------------------------------------------------------------
# Named 8-bit optimizers


def _quantized(inner, block_size, min_8bit_size, keep_float32):
    return quantize_moments(
        inner, block_size=block_size, min_8bit_size=min_8bit_size, keep_float32=keep_float32
    )


def adam_8bit(
    learning_rate: ScalarOrSchedule,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    mu_dtype=None,
    *,
    nesterov=False,
    nu_dtype=None,
    block_size=256,
    min_8bit_size=4096,
    keep_float32=None,
) -> Chain:
    r"""Adam with 8-bit block-wise quantized moments (bitsandbytes' ``Adam8bit``).

    ``chain(quantize_moments(scale_by_adam(...)), scale_by_learning_rate(learning_rate))``: the
    algebra of :func:`gradchain.adam` in float32, with :math:`m` stored in the signed map and
    :math:`v` in the unsigned one between steps (see :func:`quantize_moments`). ``mu_dtype`` and
    ``nu_dtype`` apply to the moments kept in float (small or masked tensors).

    Args: as :func:`gradchain.adam`, plus ``block_size`` (256; 2048 in the paper),
    ``min_8bit_size`` (4096) and ``keep_float32`` (a mask of leaves whose moments stay float).
    """
    config = dict(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        block_size=block_size,
        min_8bit_size=min_8bit_size,
        keep_float32=keep_float32,
    )
    inner = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov)
    return optimizer_chain(
        "adam_8bit",
        config,
        _quantized(inner, block_size, min_8bit_size, keep_float32),
        scale_by_learning_rate(learning_rate),
    )


def adamw_8bit(
    learning_rate: ScalarOrSchedule,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    eps_root=0.0,
    mu_dtype=None,
    weight_decay=1e-4,
    mask=None,
    *,
    nesterov=False,
    nu_dtype=None,
    block_size=256,
    min_8bit_size=4096,
    keep_float32=None,
    decay_after_step=False,
) -> Chain:
    r"""AdamW with 8-bit block-wise quantized moments (bitsandbytes' ``AdamW8bit``).

    ``chain(quantize_moments(scale_by_adam(...)), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``: the algebra of :func:`gradchain.adamw`,

    .. math:: p_t = p_{t-1} - \eta\Big(\frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon}
              + \lambda p_{t-1}\Big),

    computed in float32 with :math:`m` and :math:`v` stored in 8 bits between steps (see
    :func:`quantize_moments`).

    Args: as :func:`gradchain.adamw` (optax's defaults, ``weight_decay=1e-4``; bitsandbytes
    and PyTorch use 1e-2), plus ``block_size`` (256; 2048 in the paper), ``min_8bit_size``
    (4096), ``keep_float32`` (a mask of leaves whose moments stay float, e.g. embeddings) and
    ``decay_after_step``.

    Differs from bitsandbytes (ALGORITHMS.md §15 row 25): its CUDA kernel decays *after* the
    Adam step, :math:`p_t = (p_{t-1} - \eta\,\hat m/(\sqrt{\hat v}+\epsilon))(1-\eta\lambda)`;
    ``decay_after_step=True`` selects that order.
    """
    check_bool("decay_after_step", decay_after_step)
    config = dict(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        eps=eps,
        eps_root=eps_root,
        mu_dtype=mu_dtype,
        weight_decay=weight_decay,
        mask=mask,
        nesterov=nesterov,
        nu_dtype=nu_dtype,
        block_size=block_size,
        min_8bit_size=min_8bit_size,
        keep_float32=keep_float32,
        decay_after_step=decay_after_step,
    )
    inner = scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov)
    quantized = _quantized(inner, block_size, min_8bit_size, keep_float32)
    if decay_after_step:
        parts = (
            quantized,
            scale_by_learning_rate(learning_rate),
            _DecayAfterStep(learning_rate, weight_decay, mask),
        )
    else:
        parts = (
            quantized,
            add_decoupled_weight_decay(weight_decay, mask),
            scale_by_learning_rate(learning_rate),
        )
    return optimizer_chain("adamw_8bit", config, *parts)


def lion_8bit(
    learning_rate: ScalarOrSchedule,
    b1=0.9,
    b2=0.99,
    mu_dtype=None,
    weight_decay=1e-3,
    mask=None,
    *,
    block_size=256,
    min_8bit_size=4096,
    keep_float32=None,
) -> Chain:
    r"""Lion with its momentum stored in 8 bits (bitsandbytes' ``Lion8bit``).

    ``chain(quantize_moments(scale_by_lion(b1, b2)), add_decoupled_weight_decay(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``, as ``optax.lion``:

    .. math:: p_t = p_{t-1} - \eta\big(\operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t)
              + \lambda p_{t-1}\big), \qquad m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    with :math:`m` in the signed map between steps. Args: as ``optax.lion``, plus
    ``block_size``, ``min_8bit_size`` and ``keep_float32`` (see :func:`quantize_moments`).
    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023).
    """
    config = dict(
        learning_rate=learning_rate,
        b1=b1,
        b2=b2,
        mu_dtype=mu_dtype,
        weight_decay=weight_decay,
        mask=mask,
        block_size=block_size,
        min_8bit_size=min_8bit_size,
        keep_float32=keep_float32,
    )
    return optimizer_chain(
        "lion_8bit",
        config,
        _quantized(
            scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype), block_size, min_8bit_size, keep_float32
        ),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def sgd_8bit(
    learning_rate: ScalarOrSchedule,
    momentum=None,
    nesterov=False,
    accumulator_dtype=None,
    *,
    block_size=256,
    min_8bit_size=4096,
    keep_float32=None,
) -> Chain:
    r"""SGD with its momentum buffer stored in 8 bits (bitsandbytes' ``SGD8bit``).

    ``chain(quantize_moments(trace(momentum, nesterov)), scale_by_learning_rate(learning_rate))``:
    :math:`b_t = g_t + \mu b_{t-1}`, :math:`p_t = p_{t-1} - \eta b_t` (see :func:`gradchain.sgd`),
    with :math:`b` in the signed map between steps. Without ``momentum`` there is no state and
    this is plain :func:`gradchain.sgd`.
    """
    config = dict(
        learning_rate=learning_rate,
        momentum=momentum,
        nesterov=nesterov,
        accumulator_dtype=accumulator_dtype,
        block_size=block_size,
        min_8bit_size=min_8bit_size,
        keep_float32=keep_float32,
    )
    parts = []
    if momentum is not None:
        with _argument_names(decay="momentum"):
            inner = trace(decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
        parts.append(_quantized(inner, block_size, min_8bit_size, keep_float32))
    parts.append(scale_by_learning_rate(learning_rate))
    return optimizer_chain("sgd_8bit", config, *parts)
