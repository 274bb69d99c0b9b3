"""AdEMAMix's warmups and ADOPT against the authors' algorithms, written out in numpy.

optax has neither warmup; the references below are the authors' PyTorch step functions
(apple/ml-ademamix ``AdEMAMix.step`` with ``linear_warmup_scheduler`` and
``linear_hl_warmup_scheduler``; iShohei220/adopt ``_single_tensor_adopt``) transcribed to float64
numpy, as docs/ALGORITHMS.md §16 states them. gradchain runs in float32 under ``jax.jit``;
over 12 steps of O(1) updates float32 rounding stays below 1e-5 relative (2e-5 with
:math:`\\beta_2` near 1, as ``test_crosscheck_foundation.ADAM_RTOL``).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from crosscheck import float32_trajectory

import gradchain as gc

STEPS = 12
RTOL = 2e-5


def _grads(shape=(4, 3), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) + 0.3 for _ in range(STEPS)]


def _run(tx, p0, grads):
    return float32_trajectory(tx, p0, grads)[0]


# AdEMAMix ---------------------------------------------------------------------------------------


def _linear_warmup(step, alpha_end, alpha_start=0.0, warmup=1):
    if step < warmup:
        a = step / float(warmup)
        return (1.0 - a) * alpha_start + a * alpha_end
    return alpha_end


def _linear_hl_warmup(step, beta_end, beta_start=0.0, warmup=1):
    def f(beta, eps=1e-8):
        return math.log(0.5) / math.log(beta + eps) - 1

    def f_inv(t):
        return math.pow(0.5, 1 / (t + 1))

    if step < warmup:
        a = step / float(warmup)
        return f_inv((1.0 - a) * f(beta_start) + a * f(beta_end))
    return beta_end


def _ademamix_reference(p0, grads, lr, b1, b2, b3, alpha, eps, wd, alpha_warmup, b3_warmup):
    p = np.array(p0, np.float64)
    fast, slow, sq = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    out = []
    for step, g in enumerate(grads, start=1):
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        a = alpha if alpha_warmup is None else _linear_warmup(step, alpha, 0, alpha_warmup)
        beta3 = b3 if b3_warmup is None else _linear_hl_warmup(step, b3, b1, b3_warmup)
        fast = b1 * fast + (1 - b1) * g
        slow = beta3 * slow + (1 - beta3) * g
        sq = b2 * sq + (1 - b2) * g * g
        denom = np.sqrt(sq) / math.sqrt(bc2) + eps
        update = (fast / bc1 + a * slow) / denom + wd * p
        p = p - lr * update
        out.append(p)
    return out


@pytest.mark.parametrize(
    "alpha_warmup, b3_warmup", [(None, None), (8, None), (None, 8), (5, 20), (1, 1)]
)
def test_ademamix_matches_the_authors_step_with_their_warmups(alpha_warmup, b3_warmup):
    kw = dict(lr=0.01, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, eps=1e-8, wd=0.1)
    p0, grads = np.linspace(-1, 1, 12).reshape(4, 3), _grads()
    tx = gc.ademamix(
        kw["lr"],
        kw["b1"],
        kw["b2"],
        kw["b3"],
        kw["alpha"],
        kw["eps"],
        weight_decay=kw["wd"],
        alpha_warmup=alpha_warmup,
        b3_warmup=b3_warmup,
    )
    ours = _run(tx, p0, grads)
    ref = _ademamix_reference(p0, grads, **kw, alpha_warmup=alpha_warmup, b3_warmup=b3_warmup)
    for k, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6, err_msg=f"step {k + 1}")


def test_the_warmups_change_the_trajectory():
    # The cross-check above could not fail if the warmup arguments were ignored: they must move
    # the parameters away from the unwarmed run.
    p0, grads = np.linspace(-1, 1, 12).reshape(4, 3), _grads()
    plain = _run(gc.ademamix(0.01), p0, grads)[-1]
    for kw in (dict(alpha_warmup=8), dict(b3_warmup=8)):
        assert not np.allclose(_run(gc.ademamix(0.01, **kw), p0, grads)[-1], plain, rtol=1e-4)


def test_warmup_arguments_are_validated_by_name():
    with pytest.raises(ValueError, match="alpha_warmup"):
        gc.scale_by_ademamix(alpha_warmup=0)
    with pytest.raises(ValueError, match="b3_warmup"):
        gc.ademamix(0.1, b3_warmup=2.5)
    with pytest.raises(ValueError, match="b3"):
        gc.ademamix(0.1, b3=1.0)


# ADOPT ------------------------------------------------------------------------------------------


def _adopt_reference(p0, grads, lr, b1, b2, eps, clip_lambda, wd):
    """iShohei220/adopt ``_single_tensor_adopt``, ``decouple=True``: step 0 only fills v."""
    p = np.array(p0, np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    out = []
    for step, g in enumerate(grads):
        if step == 0:
            v = v + g * g
            out.append(p.copy())
            continue
        p = p - lr * wd * p
        normed = g / np.maximum(np.sqrt(v), eps)
        if clip_lambda is not None:
            c = clip_lambda(step)
            normed = np.clip(normed, -c, c)
        m = m + (1 - b1) * (normed - m)
        p = p - lr * m
        v = b2 * v + (1 - b2) * g * g
        out.append(p)
    return out


@pytest.mark.parametrize("clipping", [True, False])
def test_adopt_matches_the_authors_step(clipping):
    p0 = np.linspace(-1, 1, 12).reshape(4, 3)
    # Small early gradients, then large ones: the step^0.25 clip is active in the first steps.
    grads = [g * (0.05 if k < 2 else 3.0) for k, g in enumerate(_grads(seed=1))]
    kw = dict(lr=0.01, b1=0.9, b2=0.9999, eps=1e-6)
    tx = gc.adopt(kw["lr"], kw["b1"], kw["b2"], kw["eps"], use_clipping=clipping)
    ours = _run(tx, p0, grads)
    ref = _adopt_reference(
        p0, grads, **kw, clip_lambda=(lambda s: s**0.25) if clipping else None, wd=0.0
    )
    for k, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6, err_msg=f"step {k + 1}")
    if clipping:
        unclipped = _run(gc.adopt(0.01, 0.9, 0.9999, 1e-6, use_clipping=False), p0, grads)
        assert not np.allclose(ours[-1], unclipped[-1], rtol=1e-4)


def test_adopt_decoupled_weight_decay_is_the_authors_after_the_first_step():
    # The authors skip the decay at the initializing step; gradchain's chain decays there by
    # lr * wd * p0: after that step the two differ by exactly that factor, then evolve alike.
    p0, grads = np.linspace(-1, 1, 12).reshape(4, 3), _grads(seed=2)
    kw = dict(lr=0.01, b1=0.9, b2=0.999, eps=1e-6)
    ours = _run(gc.adopt(kw["lr"], kw["b1"], kw["b2"], kw["eps"], weight_decay=0.5), p0, grads)
    ref = _adopt_reference(
        p0 * (1 - 0.01 * 0.5), grads, **kw, clip_lambda=lambda s: s**0.25, wd=0.5
    )
    # (the reference started from the parameters gradchain has after its first step)
    for k, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-6, err_msg=f"step {k + 1}")


def test_adopt_first_update_is_zero_and_only_fills_nu():
    g = jnp.array([3.0, -4.0])
    u, s = gc.scale_by_adopt().update(g, gc.scale_by_adopt().init(g))
    np.testing.assert_array_equal(np.asarray(u), 0.0)
    np.testing.assert_array_equal(np.asarray(s.mu), 0.0)
    np.testing.assert_array_equal(np.asarray(s.nu), np.asarray(g * g))


def test_adopt_mask_needs_weight_decay():
    with pytest.raises(ValueError, match="weight_decay"):
        gc.adopt(0.1, mask=lambda p: p)
