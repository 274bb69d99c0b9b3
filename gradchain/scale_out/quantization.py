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
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.shard_alike import shard_alike

from gradchain.core.base import (
    Chain,
    ChainState,
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    _call_update,  # how a chain passes extra arguments to its parts
    check_bool,
    check_floating,
    check_int,
    check_number,
    count_of,
    named_optimizer,
    require_params,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    _sharding_of,
    compute_dtype,
    explicit_sharding,
    init_count,
    materialized,
    max_propagating_nan,
    named_sharding,
    safe_increment,
)
from gradchain.optimizers.alias import adam, adamw, sgd
from gradchain.optimizers.lion import lion
from gradchain.transforms.decay import resolve_mask

__all__ = [
    "QuantizedArray",
    "Rank1QuantizedArray",
    "adam_8bit",
    "adamw_4bit",
    "adamw_8bit",
    "block_axis_sharding",
    "dequantize_blockwise",
    "dequantize_rank1",
    "dynamic_map",
    "lion_8bit",
    "quantize_blockwise",
    "quantize_moments",
    "quantize_rank1",
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
    values = jnp.asarray(table)
    typeof = getattr(jax, "typeof", None)
    if typeof is None:  # a jax without sharding in types
        return jnp.take(values, index, mode="clip")
    return values.at[index].get(mode="clip", out_sharding=typeof(index).sharding)


class _NearestCode:
    """Exact nearest-value search in a sorted table of magnitudes ``0 = T[0] < ... < T[-1] = 1``
    by table reads (gathers): the reference for :class:`_DynamicMapArithmetic` in the tests.

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
        self.top = len(magnitudes) - 1
        self.base = below.astype(np.int32)
        self.threshold = np.where(
            inside == 1, mids[np.minimum(below, len(mids) - 1)], np.float32(np.inf)
        ).astype(np.float32)

    def index(self, a: jax.Array) -> jax.Array:
        """Index (int32) of the nearest magnitude to ``a`` (float32); NaN gives the last."""
        bits = jax.lax.bitcast_convert_type(a, jnp.int32)
        key = jnp.clip((bits >> self.shift) - self.first, 0, self.n_bins - 1)
        base = _lookup(self.base, key)
        above = a > _lookup(self.threshold, key)
        return jnp.where(jnp.isnan(a), self.top, base + above.astype(jnp.int32))


_SIGNED_TABLE = _NearestCode(_SIGNED_MAP[_SIGNED_ZERO:])  # 0, positive values, 1
_UNSIGNED_TABLE = _NearestCode(_UNSIGNED_MAP)


def _rounded(x: jax.Array, zero: jax.Array) -> jax.Array:
    """``x`` (float32) through its bits or-ed with ``zero`` (int32 zeros the compiler cannot
    prove zero), so that ``x`` is rounded on its own before any sum it feeds."""
    bits = jax.lax.bitcast_convert_type(x, jnp.int32) | zero
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


class _DynamicMapArithmetic:
    """Gather-free code <-> value for the magnitudes of a dynamic map (ALGORITHMS.md §10.5).

    The magnitudes ``M[0] = 0 < M[1] < ... < M[J] = 1`` (signed map: its 0, its 127 positive
    values and 1, ``J = 128``; unsigned: all 256, ``J = 255``) are decades of evenly spaced
    values. Index ``j`` of ``0 < j < J`` is ``t = j + off`` (``off`` = 0 signed, 1 unsigned):
    ``e = floor(log2 t)`` numbers the decade (``i = e - off``, scale ``D_i = 10^(i-6)``), the
    decade holds ``N = 2^e`` values, and ``k = t - N`` is the position in it. The value is the
    table's own float32 evaluation ``D_i * ((b_k + b_{k+1}) / 2)``, where ``b`` are the ``N + 1``
    points of PyTorch's ``linspace(0.1, 1, N + 1)``: each is one correctly rounded ``start + step
    * k`` (first half) or ``end - step * (N - k)`` (second half). In units of ``2^-30`` these
    are integers below ``2^31`` (``step = 0.9f / N`` is exact), so an int32 multiply-add and
    one correctly rounded conversion to float32 reproduce each point bit for bit: no table, no
    fused multiply-add to depend on.

    ``index(a)`` (value -> code) is the count of table midpoints strictly below ``a``: the
    decade comes from comparisons with the six midpoints between decades, the position from
    the linear estimate ``k = floor(a / (D_i step) - 0.1 / step - 0.5)`` (off by less than 1/2,
    so the nearest value is ``k`` or ``k + 1``), decided by one comparison with their exact
    float32 midpoint.
    """

    UNIT = 2.0**-30

    def __init__(self, table: np.ndarray, signed: bool):
        self.off = 0 if signed else 1
        self.magnitudes = table[_SIGNED_ZERO:] if signed else table
        self.top = len(self.magnitudes) - 1  # J
        start, end = np.float32(0.1), np.float32(1.0)
        self.start = int(np.float64(start) / self.UNIT)
        self.step0 = int(np.float64(np.float32(end - start)) / self.UNIT)  # step of N = 1
        self.end = int(np.float64(end) / self.UNIT)
        self.scale = [np.float32(10.0 ** (i - 6)) for i in range(7)]
        mids = ((self.magnitudes[:-1] + self.magnitudes[1:]) / np.float32(2)).astype(np.float32)
        self.low = mids[0]  # at or below: code of 0
        self.high = mids[-1]  # above: code of 1
        first = [(1 << (i + self.off)) - self.off for i in range(7)]  # j of each decade's first
        self.bounds = [mids[f - 1] for f in first[1:]]  # midpoints between decades
        # f = a * n * slope + (n * offset - 1/2) is k at the decade's k-th value (n = 2^e).
        step = np.float64(np.float32(end - start))  # of n = 1, in value units
        self.slope = [np.float32(1 / (np.float64(d) * step)) for d in self.scale]
        self.offset = np.float32(-np.float64(start) / step)
        # A value is one rounded product, D_i / 2 times the rounded sum of two points, which in
        # units of 2^-30 are the table's by a power of two (exact).
        self.unit_scale = [np.float32(np.float64(d) * self.UNIT / 2) for d in self.scale]
        j = np.arange(self.top + 1)
        if not np.array_equal(self._value_np(j), self.magnitudes):
            raise AssertionError("the arithmetic dynamic map differs from the table")

    def _value_np(self, j: np.ndarray) -> np.ndarray:
        """NumPy twin of :meth:`value`, checked against the table at import."""
        t = np.clip(j + self.off, 1 + self.off, (128 << self.off) - 1)
        e = np.floor(np.log2(t)).astype(np.int64)
        n, k = 1 << e, t - (1 << e)
        step = self.step0 >> e
        half = (n + 1) >> 1
        diff = self.end - self.start - (self.step0 & -n)
        points = [
            (self.start + step * i + diff * (i >= half)).astype(np.float32) for i in (k, k + 1)
        ]
        scale = np.asarray(self.unit_scale, np.float32)[e - self.off]
        v = scale * (points[0] + points[1])
        return np.where(j == 0, 0, np.where(j == self.top, 1, v)).astype(np.float32)

    def _by_decade(self, above, values, dtype):
        """``values[d]`` where ``d`` is the decade (a select chain over the comparisons)."""
        out = jnp.full(above[0].shape, values[0], dtype)
        for flag, v in zip(above, values[1:]):
            out = jnp.where(flag, jnp.asarray(v, dtype), out)
        return out

    def _points(self, e, k, count: int):
        """Points ``b_k, ..., b_{k+count-1}`` of ``linspace(0.1, 1, 2^e + 1)`` in units of
        ``2^-30`` (float32, each the table's correctly rounded point).

        Point ``i`` is ``start + step i`` below the middle index ``h = (n + 1) // 2`` and
        ``end - step (n - i)`` from it on: ``start + step i + diff [i >= h]`` with ``diff =
        end - start - step n``, and ``step n`` is ``step0`` with its low ``e`` bits cleared: one
        integer multiply, then an addition per point.
        """
        n = jnp.left_shift(1, e)
        half = jnp.right_shift(n + 1, 1)
        step = jnp.right_shift(np.int32(self.step0), e)
        diff = (self.end - self.start) - (np.int32(self.step0) & -n)
        units = [step * k + self.start + jnp.where(k >= half, diff, 0)]
        for d in range(1, count):
            units.append(units[-1] + step + jnp.where(k + d == half, diff, 0))
        return [u.astype(jnp.float32) for u in units]

    def value(self, j: jax.Array) -> jax.Array:
        """``M[j]`` (float32) for int32 ``j`` in ``[0, J]``."""
        t = jnp.clip(j + self.off, 1 + self.off, (128 << self.off) - 1)
        e = (jax.lax.bitcast_convert_type(t.astype(jnp.float32), jnp.int32) >> 23) - 127
        k = t - jnp.left_shift(1, e)
        above = [e > i + self.off for i in range(6)]
        scale = self._by_decade(above, self.unit_scale, jnp.float32)
        b0, b1 = self._points(e, k, 2)
        v = scale * (b0 + b1)
        return jnp.where(j == 0, np.float32(0), jnp.where(j == self.top, np.float32(1), v))

    def index(self, a: jax.Array) -> jax.Array:
        """Index (int32) of the nearest magnitude to ``a`` (float32): the count of midpoints
        strictly below ``a``; above every midpoint, and NaN, give ``J`` (the code of 1)."""
        above = [a > b for b in self.bounds]
        d = sum(x.astype(jnp.int32) for x in above)
        e = d + self.off
        n = jnp.left_shift(1, e)
        nf = n.astype(jnp.float32)
        slope = self._by_decade(above, self.slope, jnp.float32)
        scale = self._by_decade(above, self.unit_scale, jnp.float32)
        f = jnp.clip(a * (slope * nf) + (nf * self.offset - np.float32(0.5)), 0, nf - 1)
        k = f.astype(jnp.int32)
        b0, b1, b2 = self._points(e, k, 3)
        # The midpoint is the table's float32 (v0 + v1) / 2 of the rounded values v0 and v1: the
        # bitwise or with k >> 31 (0, as k >= 0, but not provably so to a compiler) keeps LLVM
        # and ptxas from fusing a product into the sum as one fused multiply-add.
        keep = k >> 31
        v0 = _rounded(scale * (b0 + b1), keep)
        v1 = _rounded(scale * (b1 + b2), keep)
        up = (a > (v0 + v1) * np.float32(0.5)) & (k < n - 1)
        j = (n - self.off) + k + up.astype(jnp.int32)
        return jnp.where(a <= self.low, 0, jnp.where(a <= self.high, j, self.top))


_SIGNED_ARITH = _DynamicMapArithmetic(_SIGNED_MAP, signed=True)
_UNSIGNED_ARITH = _DynamicMapArithmetic(_UNSIGNED_MAP, signed=False)


def _build_dynamic_map_4bit() -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map(signed=True, max_exponent_bits=3, total_bits=4)``, the
    first-moment map of torchao's ``AdamW4bit`` and of Li et al.: decades ``10^(i-2)``,
    ``i = 0..2``, with ``2^i`` values each, mirrored, plus 0 and 1 (16 values)."""
    values = []
    for i in range(3):
        b = _torch_linspace_f32(2**i + 1)
        scaled = np.float32(10.0 ** (i - 2)) * ((b[:-1] + b[1:]) / np.float32(2))
        values += [scaled, -scaled]
    values.append(np.array([0.0, 1.0], np.float32))
    return np.sort(np.concatenate(values)).astype(np.float32)


_SIGNED_MAP_4BIT = _build_dynamic_map_4bit()
_SIGNED_ZERO_4BIT = 7


class _SmallMap:
    """Nearest magnitude among a few sorted float32 magnitudes ``0 = M[0] < ... < M[J] = 1``
    by comparisons with the midpoints and a select chain: no gather."""

    def __init__(self, magnitudes: np.ndarray):
        self.magnitudes = magnitudes
        self.mids = ((magnitudes[:-1] + magnitudes[1:]) / np.float32(2)).astype(np.float32)
        self.top = len(magnitudes) - 1

    def index(self, a: jax.Array) -> jax.Array:
        """Count of midpoints strictly below ``a`` (NaN: ``J``)."""
        return sum((~(a <= m)).astype(jnp.int32) for m in self.mids)

    def value(self, j: jax.Array) -> jax.Array:
        out = jnp.zeros(j.shape, jnp.float32)
        for k, v in enumerate(self.magnitudes[1:], start=1):
            out = jnp.where(j >= k, v, out)
        return out


_SIGNED_SMALL_4BIT = _SmallMap(_SIGNED_MAP_4BIT[_SIGNED_ZERO_4BIT:])


def _encode_linear_4bit(scaled: jax.Array) -> jax.Array:
    """Nearest code of the zero-point-free linear map ``(c + 1) / 16``, ``c = 0..15``, for
    ``scaled`` in [0, 1] (an exact midpoint goes down; NaN and values above 1 get 15): the
    count of midpoints ``(i + 1.5) / 16`` strictly below ``scaled``."""
    # ``scaled`` is read once (``t <= 14.5`` exactly when ``scaled <= 1``), so that XLA fuses
    # the division computing it into the encode.
    t = scaled * np.float32(16) - np.float32(1.5)
    return jnp.where(t <= np.float32(14.5), jnp.clip(jnp.ceil(t), 0, 15), 15).astype(jnp.uint8)


def _decode_linear_4bit(codes: jax.Array) -> jax.Array:
    return (codes.astype(jnp.float32) + 1) * np.float32(1 / 16)


def _pack(codes: jax.Array) -> jax.Array:
    """Two 4-bit codes per byte along the last axis (even length): low nibble first.

    Written as a reduction over each pair, so that the codes' computation has one reader: XLA
    fuses it into the packing instead of writing the codes' float32 inputs out for two slices.
    """
    pairs = codes.reshape(*codes.shape[:-1], codes.shape[-1] // 2, 2).astype(jnp.uint8)
    shifted = pairs << _nibble_shifts(pairs.shape)
    return jax.lax.reduce(shifted, np.uint8(0), jax.lax.bitwise_or, (pairs.ndim - 1,))


def _unpack(packed: jax.Array) -> jax.Array:
    """The codes of :func:`_pack`, by shifts of the broadcast bytes: an elementwise computation
    that XLA fuses into each reader instead of writing the unpacked codes out."""
    shape = (*packed.shape, 2)
    both = (
        jax.lax.broadcast_in_dim(packed, shape, tuple(range(packed.ndim))) >> _nibble_shifts(shape)
    ) & np.uint8(15)
    return both.reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _nibble_shifts(shape) -> jax.Array:
    """0 and 4 along the last axis of ``shape`` (uint8)."""
    return jax.lax.broadcasted_iota(jnp.uint8, shape, len(shape) - 1) * np.uint8(4)


def _hash_noise(x: jax.Array) -> jax.Array:
    """Uniform [0, 1) float32 noise for each element of a 2-D float32 ``x``, from a hash of the
    element's bits and its position (murmur3's finalizer): no key to carry in the state, and a
    fresh draw whenever the value changes. Used for stochastic rounding."""
    u32 = jnp.uint32
    cols = x.shape[1]
    row = jax.lax.broadcasted_iota(u32, x.shape, 0)
    position = row * u32(cols) + jax.lax.broadcasted_iota(u32, x.shape, 1)
    h = jax.lax.bitcast_convert_type(x, u32) ^ (position * u32(0x9E3779B9))
    h = (h ^ (h >> 16)) * u32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * u32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return (h >> 8).astype(jnp.float32) * np.float32(2.0**-24)


def _round_stochastically(a, j, value, top: int, noise) -> jax.Array:
    """Index ``lo`` or ``lo + 1`` of the two magnitudes around ``a`` (``M[lo] <= a <
    M[lo + 1]``), the upper one with probability ``(a - M[lo]) / (M[lo + 1] - M[lo])``: the
    expected value is ``a``. ``j`` is the nearest index, ``value`` decodes indices; ``a >= 1``
    and NaN give ``top``."""
    lo = jnp.clip(jnp.where(value(j) > a, j - 1, j), 0, top - 1)
    low = value(lo)
    up = noise < (a - low) / (value(lo + 1) - low)
    return jnp.where(a < 1, lo + up.astype(jnp.int32), top)


def _encode(scaled: jax.Array, x: jax.Array, signed: bool, index=None, noise=None) -> jax.Array:
    r"""uint8 codes of ``scaled = x / scale``, in [-1, 1] (signed) or [0, 1] (unsigned): the
    nearest map value, then the zero rules.

    ``index(a)`` gives the index of the nearest magnitude to ``a`` among the map's magnitudes
    (gather-free arithmetic by default; the table search of ``_NearestCode`` is its reference). The signed map is symmetric around its zero (index
    127) except for +1.0, which has no negative twin: a negative value looks up its magnitude
    among the 128 magnitudes below 1.

    Zero rules (ALGORITHMS.md §10.4): a negative value never rounds to zero but to the smallest
    negative code, so a first moment never changes sign through quantization (a positive one may
    round to zero, which reverses no step); a positive value of the unsigned map never rounds to
    zero but to its smallest positive code, so a second moment is never erased: an erased one
    makes that coordinate's next step up to :math:`1/\sqrt{1-\beta_2}` times too large. Sign and
    zero are read from the unscaled ``x``, so that a value whose quotient by the scale underflows
    keeps its nonzero code. Subnormal ``x`` counts as zero, as in XLA's arithmetic, which
    flushes subnormals on CPU, GPU and TPU.

    With ``noise`` (uniform [0, 1), shaped like ``x``) the magnitude is rounded stochastically
    between its two neighbours (:func:`_round_stochastically`) before the zero rules.
    """
    arith = _SIGNED_ARITH if signed else _UNSIGNED_ARITH
    a = jnp.abs(scaled) if signed else scaled
    j = (index or arith.index)(a)
    if noise is not None:
        j = _round_stochastically(a, j, arith.value, arith.top, noise)
    if not signed:
        return jnp.where(x > 0, jnp.maximum(j, 1), j).astype(jnp.uint8)
    negative = x < 0
    code = jnp.where(negative, _SIGNED_ZERO - jnp.clip(j, 1, _SIGNED_ZERO), _SIGNED_ZERO + j)
    return code.astype(jnp.uint8)


def _encode_4bit(scaled: jax.Array, x: jax.Array, signed: bool, noise=None) -> jax.Array:
    """4-bit codes (one per uint8): the signed dynamic map, nearest (ALGORITHMS.md §10.4), or
    the zero-point-free linear map (no zero to avoid); stochastic rounding with ``noise``."""
    if not signed:
        if noise is None:
            return _encode_linear_4bit(scaled)
        position = scaled * np.float32(16) - 1  # code c has value (c + 1) / 16
        low = jnp.floor(position)
        code = jnp.clip(low + (noise < position - low), 0, 15)
        return jnp.where(scaled <= 1, code, 15).astype(jnp.uint8)
    small = _SIGNED_SMALL_4BIT
    j = small.index(jnp.abs(scaled))
    if noise is not None:
        j = _round_stochastically(jnp.abs(scaled), j, small.value, small.top, noise)
    zero = _SIGNED_ZERO_4BIT
    code = jnp.where(x < 0, zero - jnp.minimum(j, zero), zero + j)
    return code.astype(jnp.uint8)


def _decode_4bit(codes: jax.Array, signed: bool) -> jax.Array:
    if not signed:
        return _decode_linear_4bit(codes)
    c = codes.astype(jnp.int32)
    magnitude = _SIGNED_SMALL_4BIT.value(jnp.abs(c - _SIGNED_ZERO_4BIT))
    return jnp.where(c < _SIGNED_ZERO_4BIT, -magnitude, magnitude)


def _decode(codes: jax.Array, signed: bool, table: bool = False) -> jax.Array:
    """``dynamic_map(signed)[codes]`` (float32), by arithmetic, or by a gather with ``table``
    (the reference)."""
    c = codes.astype(jnp.int32)
    if table:
        return _lookup(_SIGNED_MAP if signed else _UNSIGNED_MAP, c)
    if not signed:
        return _UNSIGNED_ARITH.value(c)
    magnitude = _SIGNED_ARITH.value(jnp.abs(c - _SIGNED_ZERO))
    return jnp.where(c < _SIGNED_ZERO, -magnitude, magnitude)


# ---------------------------------------------------------------------------------------------
# Quantized arrays


@dataclasses.dataclass(frozen=True)
class QuantizedArray:
    """A float32 tensor stored as 8- or 4-bit codes and one float32 scale per block.

    Fields (pytree children): ``codes``, uint8 of shape ``(n_blocks, block_size)``, indices into
    :func:`dynamic_map` (4 bits: ``(n_blocks, block_size // 2)``, two codes per byte, low nibble
    first); ``absmax``, float32 of shape ``(n_blocks,)``, each block's largest magnitude. Static
    fields: ``shape``, the tensor's shape, ``signed``, which map the codes index, and ``bits``.
    Element ``i`` of the flattened tensor is ``Q[code_i] * absmax[i // block_size]``, with ``Q``
    = ``dynamic_map(signed)`` at 8 bits; at 4 bits the 16-value signed dynamic map (Li et al.)
    or the zero-point-free linear map ``(c + 1) / 16``. The padding after the last element
    holds code zero.
    """

    codes: jax.Array
    absmax: jax.Array
    shape: tuple[int, ...]
    signed: bool
    bits: int = 8

    @property
    def block_size(self) -> int:
        return self.codes.shape[1] * 8 // self.bits

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
    QuantizedArray, data_fields=["codes", "absmax"], meta_fields=["shape", "signed", "bits"]
)


@dataclasses.dataclass(frozen=True)
class Rank1QuantizedArray:
    r"""A non-negative float32 tensor stored as 4-bit codes of the zero-point-free linear map
    with rank-1 normalization (Li et al. 2023, the second moment of ``adamw_4bit``).

    Fields (pytree children): ``codes``, uint8 of shape ``shape[:-1] + (ceil(shape[-1] / 2),)``
    (two codes per byte along the last axis, low nibble first); ``maxima``, one float32 vector
    per axis, ``maxima[k][i]`` the largest magnitude of the slice at index ``i`` of axis ``k``.
    Static field ``shape``. An element's scale is the smallest of its slices' maxima,

    .. math:: x_{i_1 \dots i_p} \approx \frac{c + 1}{16}\,\min_k M^{(k)}_{i_k},

    which for a matrix is :math:`\min(\text{row max}, \text{column max})`: an outlier inflates
    the scale of its own row and column only.
    """

    codes: jax.Array
    maxima: tuple
    shape: tuple[int, ...]

    @property
    def signed(self) -> bool:
        return False

    @property
    def dtype(self):
        """The dtype :meth:`dequantize` returns."""
        return jnp.dtype(jnp.float32)

    def dequantize(self) -> jax.Array:
        return dequantize_rank1(self)


jax.tree_util.register_dataclass(
    Rank1QuantizedArray, data_fields=["codes", "maxima"], meta_fields=["shape"]
)


def _is_quantized(x) -> bool:
    return isinstance(x, (QuantizedArray, Rank1QuantizedArray))


def _check_block_size(block_size, bits: int = 8) -> None:
    check_int("block_size", block_size, low=1, what="a positive integer")
    if bits == 4 and block_size % 2:
        raise ValueError(f"block_size must be even with bits=4, got {block_size!r}")


def _check_bits(bits) -> None:
    if isinstance(bits, bool) or bits not in (4, 8):
        raise ValueError(f"bits must be 8 or 4, got {bits!r}")


def block_axis_sharding(
    shape: Sequence[int],
    spec: jax.sharding.PartitionSpec | tuple[Any, ...],
    axis_sizes: Mapping[str, int],
    block_size: int,
) -> str | tuple[str, ...] | None:
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


def block_layout(
    shape: Sequence[int], block_size: int, sharding: jax.sharding.NamedSharding
) -> tuple[jax.sharding.NamedSharding, jax.sharding.NamedSharding]:
    """``(codes, absmax)`` shardings of the 8-bit form of a tensor laid out as ``sharding`` (a
    ``NamedSharding``): split by :func:`block_axis_sharding`, else replicated on its mesh."""
    entry = block_axis_sharding(shape, sharding.spec, dict(sharding.mesh.shape), block_size)
    return named_sharding(sharding.mesh, entry, ndim=2), named_sharding(
        sharding.mesh, entry, ndim=1
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


def _max_keeping_nan(x: jax.Array, axes: Sequence[int]) -> jax.Array:
    """``max(x, axes)`` of a non-negative ``x``, NaN where a reduced slice holds one.

    XLA:CPU's plain maximum (``jnp.max``, handed to YNNPACK) drops NaN, so NaN is read from
    the sum (of non-negative values: NaN only from a NaN). A reduction by a NaN-propagating
    select instead would be merged by XLA with the fused first steps below into one scalar
    loop.
    """
    axes = tuple(axes)
    return jnp.where(jnp.isnan(jnp.sum(x, axis=axes)), np.float32(np.nan), jnp.max(x, axis=axes))


def _block_absmax(blocks: jax.Array) -> jax.Array:
    """``max(|blocks|, axis=1)`` (NaN if a block holds one), shaped so that XLA:CPU fuses it with
    the computation of ``blocks``.

    A plain row maximum becomes a YNNPACK reduction (or, when its computation is not a plain
    max, a reduce-window) that takes no elementwise producer: the new moments would be written
    out in float32 and read back, 8 bytes per element. Reducing a ``(n, b / 16, 16)`` view over
    its middle axis with a computation that is not a plain max is a loop fusion that computes
    its producer in vectors and writes 16 maxima per block (1/4 byte per element: 64 maxima, as
    before, made a 16 MB temporary of an 8M-element 4-bit moment, and 8 ran slower in blocks of
    256); their maximum is a small second reduction. A maximum is exact in any order, so the
    result equals the plain one.
    """
    a = jnp.abs(blocks)
    n, size = blocks.shape
    if size % 16 or size == 16:
        return _max_keeping_nan(a, (1,))
    partial = jax.lax.reduce(
        a.reshape(n, size // 16, 16), np.float32(-np.inf), max_propagating_nan, (1,)
    )
    return _max_keeping_nan(partial, (1,))


def _row_absmax(x: jax.Array) -> jax.Array:
    """``max(|x|, axis=1)`` of a 2-D ``x``, fused with the computation of ``x``.

    As :func:`_block_absmax`, a loop fusion over a view of each row whose reduced axis is
    short: XLA:CPU unrolls a reduced axis of 8 and vectorizes across the 16 kept lanes; with
    16 or more it kept the rank-1 moment's reduction scalar (2.8x slower on 8M elements).
    """
    rows, cols = x.shape
    if cols % 128:
        return _max_keeping_nan(jnp.abs(x), (1,))
    a = jnp.abs(x).reshape(rows, cols // 128, 8, 16)
    partial = jax.lax.reduce(a, np.float32(-np.inf), max_propagating_nan, (2,))
    return _max_keeping_nan(partial, (1, 2))


def _column_absmax(x: jax.Array) -> jax.Array:
    """``max(|x|, axis=0)`` of a 2-D ``x`` (NaN if a column holds one), fused with the
    computation of ``x``.

    XLA:CPU reduces a leading axis with YNNPACK from a materialized input, or with a strided
    reduce-window. Reducing groups of 8 rows, a ``(rows / 8, 8, cols)`` view over its middle
    axis, is a vectorized loop fusion that writes 1/8 of ``x``; a small second step reduces
    that (rows left over by the grouping are reduced on their own).
    """
    a = jnp.abs(x)
    rows, cols = a.shape
    groups = rows // 8
    if groups == 0:
        return _max_keeping_nan(a, (0,))
    grouped = a[: 8 * groups].reshape(groups, 8, cols)
    partial = jax.lax.reduce(grouped, np.float32(-np.inf), max_propagating_nan, (1,))
    result = _max_keeping_nan(partial, (0,))
    if 8 * groups < rows:
        result = max_propagating_nan(result, _max_keeping_nan(a[8 * groups :], (0,)))
    return result


def quantize_blockwise(
    x: jax.typing.ArrayLike,
    signed: bool = True,
    block_size: int = 256,
    *,
    bits: int = 8,
    stochastic: bool = False,
) -> QuantizedArray:
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
      bits: 8, or 4 (keyword-only): the 16-value signed dynamic map of Li et al. (signed) or the
        zero-point-free linear map ``(c + 1) / 16`` (unsigned), two codes per byte; Li et al.
        and torchao use blocks of 128.
      stochastic: round each scaled value to one of its two neighbouring map values with
        probabilities that make the expected value exact, instead of to the nearest
        (keyword-only; the noise is a hash of the value and its position, see
        ``_hash_noise``). The zero rules still apply.

    On a mesh the blocks are laid out by :func:`block_axis_sharding`.
    """
    _check_bits(bits)
    _check_block_size(block_size, bits)
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
    absmax = _block_absmax(blocks)
    scale = jnp.where(absmax > 0, absmax, 1.0)
    noise = _hash_noise(blocks) if stochastic else None
    if bits == 4:
        codes = _pack(_encode_4bit(blocks / scale[:, None], blocks, signed, noise))
    else:
        codes = _encode(blocks / scale[:, None], blocks, signed, noise=noise)
    return QuantizedArray(codes=codes, absmax=absmax, shape=shape, signed=signed, bits=bits)


def dequantize_blockwise(q: QuantizedArray) -> jax.Array:
    """The float32 tensor ``dynamic_map(q.signed)[q.codes] * q.absmax``, shaped ``q.shape``.

    On Explicit mesh axes the result keeps the blocks' split on its leading axis.
    """
    if q.bits == 4:
        values = _decode_4bit(_unpack(q.codes), q.signed) * q.absmax[:, None]
    else:
        # The 8-bit decode costs more than a float32 round trip through memory; XLA:CPU would
        # redo it in each of its three readers (block maximum, encode, update). The 4-bit
        # decode is a short select chain, cheaper to recompute.
        values = materialized(_decode(q.codes, q.signed) * q.absmax[:, None])
    sharding = explicit_sharding(q.codes)
    entry = None if sharding is None else (tuple(sharding.spec) + (None,))[0]
    flat = _reshape(values, (-1,), _laid_out(sharding, entry))
    if flat.shape[0] > q.size:
        flat = flat[: q.size]
    lead = (entry,) if q.shape else ()
    return _reshape(flat, q.shape, _laid_out(sharding, *lead, *(None,) * (len(q.shape) - 1)))


def _rank1_scale(maxima, shape) -> jax.Array:
    """``min_k maxima[k]`` broadcast to ``shape``."""
    ndim = len(shape)
    scale: Any = None
    for k, m in enumerate(maxima):
        m = m.reshape((1,) * k + (shape[k],) + (1,) * (ndim - k - 1))
        scale = m if scale is None else jnp.minimum(scale, m)
    return jnp.broadcast_to(scale, shape)


def quantize_rank1(x: jax.typing.ArrayLike, *, stochastic: bool = False) -> Rank1QuantizedArray:
    r"""Quantizes a non-negative ``x`` (at least 2-D) to 4-bit codes of the zero-point-free
    linear map with rank-1 normalization (Li et al., "Memory Efficient Optimizers with 4-bit
    States", NeurIPS 2023, §4.2 and §4.3):

    .. math:: M^{(k)}_i = \max_{\text{index } k = i} |x|, \qquad
              s = \min_k M^{(k)}_{i_k}, \qquad c = \operatorname{nearest}\big(\{\tfrac{1}{16},
              \dots, \tfrac{16}{16}\}, x / s\big) - 1.

    The map has no zero, so a positive second moment is never stored as 0 (ALGORITHMS.md
    §10.4); an element whose scale is 0 (its row or column all zeros) decodes to 0. The error
    of an element is at most :math:`s/32` (below :math:`s/16`: up to :math:`s/16`). With
    ``stochastic`` (keyword-only) each value goes to one of its two neighbouring codes with
    probabilities that keep its expected value (below :math:`s/16`: code 0).
    """
    x = jnp.asarray(x).astype(jnp.float32)
    shape = tuple(x.shape)
    if len(shape) < 2:
        raise ValueError(f"quantize_rank1 needs a tensor of 2 or more axes, got shape {shape}")
    a = jnp.abs(x)
    axes = range(len(shape))
    maxima: tuple[jax.Array, ...]
    if len(shape) == 2:
        maxima = (_row_absmax(x), _column_absmax(x))
    else:
        maxima = tuple(_max_keeping_nan(a, [j for j in axes if j != k]) for k in axes)
    scale = _rank1_scale(maxima, shape)
    scaled = a / jnp.where(scale > 0, scale, 1.0)
    if stochastic:
        noise = _hash_noise(x.reshape(-1, shape[-1])).reshape(shape)
        codes = _encode_4bit(scaled, x, False, noise)
    else:
        codes = _encode_linear_4bit(scaled)
    if shape[-1] % 2:
        codes = jnp.pad(codes, [(0, 0)] * (len(shape) - 1) + [(0, 1)])
    return Rank1QuantizedArray(codes=_pack(codes), maxima=maxima, shape=shape)


def dequantize_rank1(q: Rank1QuantizedArray) -> jax.Array:
    """The float32 tensor ``(codes + 1) / 16 * min_k maxima[k]``, shaped ``q.shape``."""
    codes = _unpack(q.codes)[..., : q.shape[-1]]
    return _decode_linear_4bit(codes) * _rank1_scale(q.maxima, q.shape)


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
        return state._replace(**changes) if changes else state  # type: ignore[attr-defined]
    if isinstance(state, (tuple, list)):
        return type(state)(_rebuild(s, visit) for s in state)
    return state


@transformation("quantize_moments")
class QuantizeMoments(GradientTransformation):
    r"""Keeps the moments of ``inner`` in 8-bit (or 4-bit) quantized form between steps.

    Each step dequantizes the moments to float32, runs ``inner.update`` on them (so the update
    uses the fresh float32 moments, as bitsandbytes' kernels do), and requantizes the new ones:

    .. math:: m = Q_s[c_m] \cdot s_m, \quad (u, m') = \mathrm{inner}(g, m), \quad
              (c_m, s_m) = \mathrm{quantize}(m')

    The state has ``inner``'s own type with every quantized moment leaf replaced by a
    :class:`QuantizedArray` (fields ``codes`` and ``absmax``), so
    ``state.mu["w"].codes`` reads the codes of parameter ``w``'s first moment.

    With ``bits=4`` (Li et al., "Memory Efficient Optimizers with 4-bit States", NeurIPS 2023;
    torchao's ``AdamW4bit``) signed moments use the 16-value signed dynamic map with blocks of
    ``block_size`` (default 128), and unsigned moments of tensors with 2 or more axes the
    zero-point-free linear map with rank-1 normalization (:func:`quantize_rank1`, a
    :class:`Rank1QuantizedArray`; 1-D ones the same map with blocks). Two codes per byte: about
    ``0.5 + 4 / block_size`` bytes per moment element.

    Args:
      inner: the transformation whose moments are stored in 8 bits: ``scale_by_adam``, ``trace``,
        ``scale_by_lion``, ``scale_by_rms``, an optax transformation or a chain of them.
      block_size: elements per quantization block, default 256 at 8 bits (bitsandbytes >= 0.44;
        2048 is the paper's, ALGORITHMS.md §15 row 25) and 128 at 4 bits (Li et al.).
      min_8bit_size: moments of tensors with fewer elements keep ``inner``'s float state
        (default 4096, as bitsandbytes and torchao), at 8 or 4 bits.
      keep_float32: leaves whose moments stay in float state whatever their size: a pytree of
        bools (or a prefix of the params' tree) or a callable ``params -> pytree of bools``.
        This is the optimizer half of bitsandbytes' ``StableEmbedding``: pass a mask selecting
        the embedding tables (the other half, a LayerNorm after the embedding, is the model's).
      moments: ``{field name: "signed" | "unsigned"}``, the state fields holding moments and the
        map each uses. Default: ``mu`` and ``trace`` signed, ``nu`` unsigned, wherever they occur
        in ``inner``'s state (also inside chains and optax states).
      bits: 8 (default) or 4 (keyword-only).
      stochastic_rounding: requantize the moments with stochastic rounding (unbiased: the
        expected stored value is the float32 moment) instead of nearest (keyword-only).

    Non-finite gradients: as in the float transformation they make the moments non-finite; in
    8 bits a non-finite element spoils its whole block (bitsandbytes' kernels zero the moments of
    such an element instead). Skip such steps before this transformation.
    """

    complex_params = False

    inner: Any
    block_size: int | None = None
    min_8bit_size: int = 4096
    keep_float32: Any = None
    moments: Any = None
    _: dataclasses.KW_ONLY
    bits: int = 8
    stochastic_rounding: bool = False

    def __post_init__(self):
        if isinstance(self.inner, type) or not (
            hasattr(self.inner, "init") and hasattr(self.inner, "update")
        ):
            raise TypeError(f"inner must be a gradient transformation, got {self.inner!r}")
        _check_bits(self.bits)
        check_bool("stochastic_rounding", self.stochastic_rounding)
        if self.block_size is None:
            object.__setattr__(self, "block_size", 256 if self.bits == 8 else 128)
        _check_block_size(self.block_size, self.bits)
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
        found: list[Any] = []
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
            # A moment left unquantized is float32, as the dequantized ones are (bitsandbytes
            # keeps such tensors in float32), even where the inner transformation keeps a
            # bfloat16 parameter's moment in bfloat16 (optax's dtype, its default).
            if jnp.issubdtype(moment.dtype, jnp.floating) and jnp.finfo(moment.dtype).bits < 32:
                return moment.astype(jnp.float32)
            return moment
        # The barrier keeps XLA from constant-folding the quantization of a constant (zero)
        # moment at compile time, which takes seconds per tensor.
        moment = jax.lax.optimization_barrier(moment)
        if self.bits == 4 and not signed and moment.ndim >= 2:
            return quantize_rank1(moment)
        block_size = cast(int, self.block_size)  # filled in by __post_init__
        q = quantize_blockwise(moment, signed=signed, block_size=block_size, bits=self.bits)
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
            stochastic = self.stochastic_rounding
            if isinstance(old, Rank1QuantizedArray):
                r = quantize_rank1(new, stochastic=stochastic)
                return dataclasses.replace(r, codes=shard_alike(r.codes, old.codes)[0])
            q = quantize_blockwise(
                new,
                signed=old.signed,
                block_size=old.block_size,
                bits=old.bits,
                stochastic=stochastic,
            )
            if explicit_sharding(q.codes) is not None:
                return q
            # On Auto axes XLA chooses the layout: keep the one the state came in with.
            codes, _ = shard_alike(q.codes, old.codes)
            absmax, _ = shard_alike(q.absmax, old.absmax)
            return dataclasses.replace(q, codes=codes, absmax=absmax)

        return updates, jax.tree.map(requantize, state, new_state, is_leaf=_is_quantized)


quantize_moments = QuantizeMoments


def _dequantize_like(q, update) -> jax.Array:
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


@state_class(extras=("count", "hyperparams"))
class _DecayAfterStepState:
    count: jax.Array | None
    hyperparams: dict | None


@transformation("decay_after_step", hyperparams=("learning_rate", "weight_decay"))
class _DecayAfterStep(GradientTransformation):
    r"""Shrinks the stepped parameters: :math:`p_t = (p_{t-1} + u)(1 - \eta\lambda)`.

    Returns :math:`u(1 - \eta\lambda) - \eta\lambda\, p_{t-1}`. Placed after
    ``scale_by_learning_rate``, it is bitsandbytes' 8-bit AdamW (decay applied after the Adam
    step); optax and PyTorch's AdamW decay :math:`p_{t-1}` instead, a difference of
    :math:`\eta^2\lambda\, \hat m/(\sqrt{\hat v}+\epsilon)` per step.
    """

    learning_rate: ScalarOrSchedule
    weight_decay: ScalarOrSchedule
    mask: Any = None

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("weight_decay", self.weight_decay, low=0.0)

    def init(self, params):
        return _DecayAfterStepState(count=init_count(), hyperparams=self.init_hyperparams())

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
        return out, _DecayAfterStepState(count=safe_increment(count_of(state)), hyperparams=hp)


# ---------------------------------------------------------------------------------------------
# Named 8-bit optimizers


def _float_counterpart(optimizer: Callable[..., Chain], arguments: Mapping[str, Any]) -> Chain:
    """``optimizer`` called with those of a low-bit variant's ``arguments`` that it takes: the
    variant's arguments are its float counterpart's, by name, plus the quantization's."""
    taken = inspect.signature(optimizer).parameters
    return optimizer(**{k: v for k, v in arguments.items() if k in taken})


def _with_quantized_moments(
    tx: Chain,
    block_size: int,
    min_size: int,
    keep_float32: MaskOrFn,
    bits: int = 8,
    stochastic: bool = False,
) -> list[GradientTransformation]:
    """The parts of the named optimizer ``tx`` with its first, the moments, kept quantized: the
    low-bit optimizer is its float counterpart, argument for argument, with a smaller state."""
    moments, *rest = tx.transforms
    quantized = quantize_moments(
        moments,
        block_size=block_size,
        min_8bit_size=min_size,
        keep_float32=keep_float32,
        bits=bits,
        stochastic_rounding=stochastic,
    )
    return [quantized, *rest]


@state_class
class _StochasticParamRoundingState:
    count: jax.Array


@transformation("stochastic_param_rounding")
class _StochasticParamRounding(GradientTransformation):
    r"""Makes ``apply_updates`` round bfloat16 parameters stochastically.

    For a bfloat16 parameter :math:`p` and update :math:`u` it returns the float32 update
    :math:`\mathrm{SR}(p + u) - p`, where :math:`\mathrm{SR}` rounds the float32 sum to one of its
    two neighbouring bfloat16 values with probabilities that keep its expected value (random
    low 16 bits added before truncation). ``apply_updates`` then adds it in float32, exactly,
    and its cast to bfloat16 is exact: updates smaller than half a bfloat16 ulp still move the
    parameter on average instead of being lost. Other dtypes pass through. The random bits come
    from ``seed`` and a step counter in the state.
    """

    seed: int = 0

    def __post_init__(self):
        check_int("seed", self.seed, what="an integer")

    def init(self, params):
        return _StochasticParamRoundingState(init_count())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), state.count)
        leaves, treedef = jax.tree.flatten(updates)
        param_leaves = treedef.flatten_up_to(params)

        def round_one(i, u, p):
            if u is None or jnp.dtype(p.dtype) != jnp.bfloat16:
                return u
            p32 = p.astype(jnp.float32)
            target = p32 + u.astype(jnp.float32)
            noise = jax.random.bits(jax.random.fold_in(key, i), target.shape, jnp.uint32)
            bits = jax.lax.bitcast_convert_type(target, jnp.uint32) + (noise >> 16)
            rounded = jax.lax.bitcast_convert_type(bits & np.uint32(0xFFFF0000), jnp.float32)
            return jnp.where(jnp.isfinite(target), rounded, target) - p32

        out = [round_one(i, u, p) for i, (u, p) in enumerate(zip(leaves, param_leaves))]
        return treedef.unflatten(out), _StochasticParamRoundingState(safe_increment(state.count))


@named_optimizer
def adam_8bit(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    block_size: int = 256,
    min_8bit_size: int = 4096,
    keep_float32: MaskOrFn = None,
) -> Parts:
    r"""Adam with 8-bit block-wise quantized moments (bitsandbytes' ``Adam8bit``).

    ``chain(quantize_moments(scale_by_adam(...)), scale_by_learning_rate(learning_rate))``: the
    algebra of :func:`gradchain.adam` in float32, with :math:`m` stored in the signed map and
    :math:`v` in the unsigned one between steps (see :func:`quantize_moments`). ``mu_dtype`` and
    ``nu_dtype`` apply to the moments kept in float (small or masked tensors).

    Args: as :func:`gradchain.adam`, plus ``block_size`` (256; 2048 in the paper),
    ``min_8bit_size`` (4096) and ``keep_float32`` (a mask of leaves whose moments stay float).
    """
    tx = _float_counterpart(adam, locals())
    return _with_quantized_moments(tx, block_size, min_8bit_size, keep_float32)


@named_optimizer
def adamw_8bit(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    block_size: int = 256,
    min_8bit_size: int = 4096,
    keep_float32: MaskOrFn = None,
    decay_after_step: bool = False,
    stochastic_rounding: bool = False,
) -> Parts:
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
    ``decay_after_step`` and ``stochastic_rounding`` (False; True: the moments' codes and
    bfloat16 parameters are rounded stochastically, unbiased, see ``_StochasticParamRounding``).

    Differs from bitsandbytes (ALGORITHMS.md §15 row 25): its CUDA kernel decays *after* the
    Adam step, :math:`p_t = (p_{t-1} - \eta\,\hat m/(\sqrt{\hat v}+\epsilon))(1-\eta\lambda)`;
    ``decay_after_step=True`` selects that order.
    """
    check_bool("decay_after_step", decay_after_step)
    check_bool("stochastic_rounding", stochastic_rounding)
    tx = _float_counterpart(adamw, locals())
    quantized, decay, step = _with_quantized_moments(
        tx, block_size, min_8bit_size, keep_float32, stochastic=stochastic_rounding
    )
    if decay_after_step:
        parts = [quantized, step, _DecayAfterStep(learning_rate, weight_decay, mask)]
    else:
        parts = [quantized, decay, step]
    if stochastic_rounding:
        parts.append(_StochasticParamRounding())
    return parts


@named_optimizer
def adamw_4bit(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = False,
    nu_dtype: Any | None = None,
    block_size: int = 128,
    min_4bit_size: int = 4096,
    keep_float32: MaskOrFn = None,
    stochastic_rounding: bool = False,
) -> Parts:
    r"""AdamW with 4-bit moments (Li et al., "Memory Efficient Optimizers with 4-bit States",
    NeurIPS 2023; torchao's ``AdamW4bit``, lpmm).

    ``chain(quantize_moments(scale_by_adam(...), bits=4), add_decoupled_weight_decay(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``: the algebra of :func:`gradchain.adamw`,

    .. math:: p_t = p_{t-1} - \eta\Big(\frac{\hat m_t}{\sqrt{\hat v_t}+\epsilon}
              + \lambda p_{t-1}\Big),

    computed in float32, with :math:`m` stored between steps as 4-bit codes of the signed
    dynamic map in blocks of 128 and :math:`v` (matrices and higher) as 4-bit codes of the
    zero-point-free linear map ``(c + 1) / 16`` with rank-1 normalization (scale
    :math:`\min(\text{row max}, \text{column max})`; vectors: blocks of 128). About 1.03 bytes of
    state per parameter (0.5 + 4 / 128 for :math:`m`, 0.5 plus the row and column maxima for
    :math:`v`).

    Args: as :func:`gradchain.adamw` (optax's defaults, ``weight_decay=1e-4``; torchao uses
    1e-2), plus ``block_size`` (128), ``min_4bit_size`` (4096: smaller tensors keep float32
    state, as torchao), ``keep_float32`` (a mask of leaves whose moments stay float) and
    ``stochastic_rounding`` (as :func:`adamw_8bit`).

    Differs from torchao's ``AdamW4bit``, which quantizes :math:`v` block-wise with the unsigned
    dynamic map (it does not implement rank-1 normalization): this is the paper's best
    configuration (B128/DE for :math:`m`, Rank-1/Linear for :math:`v`).
    """
    check_bool("stochastic_rounding", stochastic_rounding)
    check_int("min_4bit_size", min_4bit_size, what="an integer >= 0")
    tx = _float_counterpart(adamw, locals())
    parts = _with_quantized_moments(
        tx, block_size, min_4bit_size, keep_float32, bits=4, stochastic=stochastic_rounding
    )
    if stochastic_rounding:
        parts.append(_StochasticParamRounding())
    return parts


@named_optimizer
def lion_8bit(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
    *,
    block_size: int = 256,
    min_8bit_size: int = 4096,
    keep_float32: MaskOrFn = None,
) -> Parts:
    r"""Lion with its momentum stored in 8 bits (bitsandbytes' ``Lion8bit``).

    ``chain(quantize_moments(scale_by_lion(b1, b2)), add_decoupled_weight_decay(weight_decay,
    mask), scale_by_learning_rate(learning_rate))``, as ``optax.lion``:

    .. math:: p_t = p_{t-1} - \eta\big(\operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t)
              + \lambda p_{t-1}\big), \qquad m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    with :math:`m` in the signed map between steps. Args: as ``optax.lion``, plus
    ``block_size``, ``min_8bit_size`` and ``keep_float32`` (see :func:`quantize_moments`).
    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023).
    """
    tx = _float_counterpart(lion, locals())
    return _with_quantized_moments(tx, block_size, min_8bit_size, keep_float32)


@named_optimizer
def sgd_8bit(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    block_size: int = 256,
    min_8bit_size: int = 4096,
    keep_float32: MaskOrFn = None,
) -> Parts:
    r"""SGD with its momentum buffer stored in 8 bits (bitsandbytes' ``SGD8bit``).

    ``chain(quantize_moments(trace(momentum, nesterov)), scale_by_learning_rate(learning_rate))``:
    :math:`b_t = g_t + \mu b_{t-1}`, :math:`p_t = p_{t-1} - \eta b_t` (see :func:`gradchain.sgd`),
    with :math:`b` in the signed map between steps. Without ``momentum`` there is no state and
    this is plain :func:`gradchain.sgd`.
    """
    tx = _float_counterpart(sgd, locals())
    if momentum is None:
        return tx.transforms
    return _with_quantized_moments(tx, block_size, min_8bit_size, keep_float32)
