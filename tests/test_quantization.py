"""8-bit optimizer states: the maps, the block-wise round trip, and optimizers built on them."""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

# SHA-256 of the 256 little-endian float32 values of bitsandbytes' maps, as printed in
# ALGORITHMS.md Appendix A (generated there by bitsandbytes 0.50.2's create_dynamic_map).
SIGNED_MAP_SHA256 = "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c"
UNSIGNED_MAP_SHA256 = "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398"

NO_8BIT = 2**40  # a min_8bit_size that keeps every state in float


def worst_relative_error(signed: bool) -> float:
    """The largest distance from a point of [-1, 1] ([0, 1] unsigned) to the code it gets.

    Nearest rounding is off by at most half the largest gap G between neighbouring codes. The
    signed map has no -1: a scaled value of -1 lands on its most negative code Q[0] = -0.99296874,
    at distance 1 - |Q[0]| (= G/2 + 1 ulp). The sign rule moves a negative value that would round
    to 0 to Q[126], no farther than the gap between the two.
    """
    q = gc.dynamic_map(signed).astype(np.float64)
    half_gap = np.max(np.diff(q)) / 2
    return max(half_gap, 1 + q[0]) if signed else half_gap


# ---------------------------------------------------------------------------------------------
# The maps


@pytest.mark.parametrize("signed, digest", [(True, SIGNED_MAP_SHA256), (False, UNSIGNED_MAP_SHA256)])
def test_dynamic_maps_equal_the_bitsandbytes_tables_bit_for_bit(signed, digest):
    table = gc.dynamic_map(signed)
    assert table.dtype == np.float32 and table.shape == (256,)
    assert hashlib.sha256(table.astype("<f4").tobytes()).hexdigest() == digest


def test_dynamic_maps_have_the_documented_layout():
    s, u = gc.dynamic_map(True), gc.dynamic_map(False)
    assert np.all(np.diff(s) > 0) and np.all(np.diff(u) > 0)
    assert s[127] == 0 and s[255] == 1 and s[0] == np.float32(-0.99296874) and -1 not in s
    assert s[128] == -s[126] and np.array_equal(s[128:255], -s[126::-1])
    assert u[0] == 0 and u[255] == 1 and u[1] == pytest.approx(3.25e-7, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Quantize / dequantize


def _blocks(kind: str, n_blocks: int, block_size: int, seed: int = 0):
    """Test data, ending with a partial block of 100 elements."""
    rng = np.random.default_rng(seed)
    n = n_blocks * block_size + 100
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "heavy_tailed":
        # Cauchy values, each block scaled by 10^k for k in [-12, 12]: within-block outliers and
        # scales far apart across blocks.
        x = rng.standard_cauchy(n)
        scales = 10.0 ** rng.integers(-12, 13, size=n_blocks + 1)
        return (x * np.repeat(scales, block_size)[:n]).astype(np.float32)
    if kind == "zero_blocks":
        x = rng.standard_normal(n).astype(np.float32)
        x[: block_size] = 0.0
        x[3 * block_size : 5 * block_size] = 0.0
        x[-100:] = 0.0
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["normal", "heavy_tailed", "zero_blocks"])
@pytest.mark.parametrize("block_size", [256, 2048])
@pytest.mark.parametrize("signed", [True, False])
def test_round_trip_error_is_bounded_per_block(kind, block_size, signed):
    x = _blocks(kind, 8, block_size)
    if not signed:
        x = x * x  # second moments are non-negative
    q = gc.quantize_blockwise(x.reshape(-1, 4), signed=signed, block_size=block_size)
    assert q.codes.shape == (9, block_size) and q.codes.dtype == jnp.uint8
    assert q.absmax.shape == (9,) and q.absmax.dtype == jnp.float32
    back = np.asarray(gc.dequantize_blockwise(q)).reshape(-1)
    padded = np.zeros(9 * block_size, np.float32)
    padded[: x.size] = x
    blocks = padded.reshape(9, block_size)
    absmax = np.max(np.abs(blocks), axis=1)
    np.testing.assert_array_equal(q.absmax, absmax)
    err = np.abs(np.pad(back, (0, padded.size - back.size)) - padded).reshape(9, block_size)
    # Dividing by the scale and multiplying back each round once: 2^-23 relative slack.
    bound = absmax.astype(np.float64) * (worst_relative_error(signed) + 2.0**-23)
    assert np.all(err.max(axis=1) <= bound), (err.max(axis=1) / absmax, worst_relative_error(signed))


def test_all_zero_blocks_encode_exact_zeros():
    x = _blocks("zero_blocks", 8, 256)
    for signed in (True, False):
        q = gc.quantize_blockwise(x, signed=signed)
        zero = 127 if signed else 0
        for b in (0, 3, 4, 8):
            assert q.absmax[b] == 0 and np.all(np.asarray(q.codes[b]) == zero)
        back = np.asarray(gc.dequantize_blockwise(q))
        assert np.all(back[x == 0] == 0)


def _nearest_codes(scaled: np.ndarray, signed: bool) -> np.ndarray:
    """Brute force: index of the closest map value, then the sign rule for negative values."""
    table = gc.dynamic_map(signed).astype(np.float64)
    idx = np.argmin(np.abs(scaled.astype(np.float64)[:, None] - table[None, :]), axis=1)
    if signed:
        idx = np.where((scaled < 0) & (idx == 127), 126, idx)
    return idx


@pytest.mark.parametrize("signed", [True, False])
def test_codes_are_the_nearest_map_values(signed):
    rng = np.random.default_rng(1)
    # Values in every decade of the map, both signs (unsigned: magnitudes only).
    x = (rng.uniform(0.1, 1, 64 * 256) * 10.0 ** rng.integers(-8, 1, 64 * 256)).astype(np.float32)
    if signed:
        x *= rng.choice([-1, 1], size=x.size).astype(np.float32)
    q = gc.quantize_blockwise(x, signed=signed)
    scaled = (x.reshape(64, 256) / np.asarray(q.absmax)[:, None]).reshape(-1)
    np.testing.assert_array_equal(np.asarray(q.codes).reshape(-1), _nearest_codes(scaled, signed))


def test_a_first_moment_never_changes_sign():
    tiny = np.float32(1e-9)
    x = np.array([1.0, -1.0, -tiny, tiny, -0.5, 0.0] + [0.0] * 250, np.float32)
    q = gc.quantize_blockwise(x, signed=True)
    codes = np.asarray(q.codes).reshape(-1)[:6]
    # -1 has no code of its own: the most negative one; -1e-9 is closest to 0 but goes to the
    # smallest negative code; +1e-9 may become 0, which reverses no step.
    np.testing.assert_array_equal(codes, [255, 0, 126, 127, codes[4], 127])
    back = np.asarray(gc.dequantize_blockwise(q))
    assert np.all(back[x < 0] < 0) and np.all(back[x > 0] >= 0)


def test_a_quantized_array_is_a_pytree_of_its_codes_and_scales():
    q = gc.quantize_blockwise(jnp.ones((3, 1000)), signed=False, block_size=2048)
    leaves, treedef = jax.tree.flatten(q)
    assert [leaf.shape for leaf in leaves] == [(2, 2048), (2,)]
    assert jax.tree.unflatten(treedef, leaves).shape == (3, 1000)
    assert q.block_size == 2048 and q.size == 3000 and not q.signed
    np.testing.assert_array_equal(jax.jit(gc.dequantize_blockwise)(q), np.ones((3, 1000)))
