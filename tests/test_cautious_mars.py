"""Cautious AdamW/Lion and MARS-AdamW against the authors' algorithms, written out in numpy.

optax has none of them. Each reference is the authors' PyTorch step transcribed to float64 numpy
as docs/ALGORITHMS.md §16.4-16.5 states it (kyleliang919/C-Optim's ``AdamW``/``Lion`` with the
cautious mask; AGI-Arena/MARS ``update_fn`` with ``mars_type="mars-adamw"``). gradchain runs in
float32 under ``jax.jit`` for 12 steps on a matrix and a vector leaf; float32 rounding of O(1)
steps stays below 2e-5 relative (``test_crosscheck_foundation.ADAM_RTOL``). The cautious mask is
a discontinuous function of ``u * g``: the gradients are drawn so that no product is within
float32 rounding of 0 (checked below), so both sides keep the same coordinates.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from crosscheck import float32_trajectory

import gradchain as gc

STEPS = 12
RTOL = 2e-5
SHAPES = {"w": (4, 3), "b": (5,)}


def _params():
    return {k: np.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _grads(seed=0, drift=0.3):
    """A fixed direction plus noise: the momentum and the gradient disagree on some coordinates."""
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s) + drift for k, s in SHAPES.items()} for _ in range(STEPS)]


def _run(tx, grads):
    return float32_trajectory(tx, _params(), grads)[0]


def _assert_close(ours, ref):
    for k, (a, b) in enumerate(zip(ours, ref)):
        for name in SHAPES:
            np.testing.assert_allclose(
                a[name], b[name], rtol=RTOL, atol=1e-6, err_msg=f"{name} at step {k + 1}"
            )


# Cautious ---------------------------------------------------------------------------------------


def _cautious_mask(u, g):
    mask = (u * g > 0).astype(np.float64)
    assert np.min(np.abs(u * g)) > 1e-5  # no coordinate on the fence (see the module docstring)
    return mask * (mask.size / (mask.sum() + 1))


def _c_adamw_reference(grads, lr, b1, b2, eps, wd):
    p = _params()
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        new = {}
        for k in SHAPES:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            denom = np.sqrt(v[k] / (1 - b2**t)) + eps
            x = p[k] * (1 - lr * wd)
            new[k] = x - lr / (1 - b1**t) * m[k] * _cautious_mask(m[k], g[k]) / denom
        p = new
        out.append(p)
    return out


def _c_lion_reference(grads, lr, b1, b2, wd):
    p = _params()
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    out = []
    for g in grads:
        new = {}
        for k in SHAPES:
            update = np.sign(b1 * m[k] + (1 - b1) * g[k])
            x = p[k] * (1 - lr * wd)
            new[k] = x - lr * update * _cautious_mask(update, g[k])
            m[k] = b2 * m[k] + (1 - b2) * g[k]
        p = new
        out.append(p)
    return out


def test_cautious_adamw_matches_the_authors_step():
    grads = _grads(seed=3)
    ours = _run(gc.cautious_adamw(0.01, 0.9, 0.999, 1e-8, weight_decay=0.1), grads)
    _assert_close(ours, _c_adamw_reference(grads, 0.01, 0.9, 0.999, 1e-8, 0.1))


def test_cautious_lion_matches_the_authors_step():
    grads = _grads(seed=4)
    ours = _run(gc.cautious_lion(0.01, 0.9, 0.99, weight_decay=0.1), grads)
    _assert_close(ours, _c_lion_reference(grads, 0.01, 0.9, 0.99, 0.1))


def test_the_mask_changes_the_trajectory_and_zeroes_disagreeing_coordinates():
    grads = _grads(seed=3)
    plain = _run(gc.adamw(0.01, weight_decay=0.1), grads)[-1]
    assert not np.allclose(
        _run(gc.cautious_adamw(0.01, weight_decay=0.1), grads)[-1]["w"], plain["w"], rtol=1e-3
    )
    tx = gc.cautious(gc.scale_by_adam())
    state = tx.init(jnp.zeros(4))
    _, state = tx.update(jnp.array([1.0, 1.0, 1.0, 1.0]), state)
    u, _ = tx.update(jnp.array([-0.5, 2.0, 3.0, 4.0]), state)
    # Adam's first coordinate still points along +1 against the gradient -0.5 (m = 0.09 - 0.05): masked; the three
    # others are kept and scaled by 4 / (3 + 1) = 1.
    adam = gc.scale_by_adam()
    _, adam_state = adam.update(jnp.ones(4), adam.init(jnp.zeros(4)))
    unmasked, _ = adam.update(jnp.array([-0.5, 2.0, 3.0, 4.0]), adam_state)
    assert float(u[0]) == 0.0
    np.testing.assert_allclose(np.asarray(u[1:]), np.asarray(unmasked[1:]), rtol=1e-6)


def test_descent_wraps_a_whole_optimizer():
    # adamw's updates point downhill: descent=True keeps the same coordinates as the direction.
    grads = _grads(seed=5)
    ref = _run(gc.cautious_adamw(0.01, weight_decay=0.0), grads)
    ours = _run(gc.cautious(gc.adamw(0.01, weight_decay=0.0), descent=True), grads)
    _assert_close(ours, ref)


def test_cautious_arguments_are_validated_by_name():
    with pytest.raises(ValueError, match="inner"):
        gc.cautious(3.0)
    with pytest.raises(ValueError, match="descent"):
        gc.cautious(gc.scale_by_adam(), descent=1)


# MARS -------------------------------------------------------------------------------------------


def _mars_reference(grads, lr, b1, b2, eps, gamma, wd, optimize_1d, betas_1d=(0.9, 0.95)):
    """AGI-Arena/MARS ``update_fn`` (mars-adamw, approx): ``last_grad`` starts at 0."""
    p = _params()
    m = {k: np.zeros(s) for k, s in SHAPES.items()}
    v = {k: np.zeros(s) for k, s in SHAPES.items()}
    last = {k: np.zeros(s) for k, s in SHAPES.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        new = {}
        for k in SHAPES:
            if optimize_1d or g[k].ndim == 2:
                c = g[k] + gamma * (b1 / (1 - b1)) * (g[k] - last[k])
                norm = np.linalg.norm(c)
                if norm > 1:
                    c = c / norm
                beta1, beta2 = b1, b2
            else:
                c = g[k]
                beta1, beta2 = betas_1d
            m[k] = beta1 * m[k] + (1 - beta1) * c
            v[k] = beta2 * v[k] + (1 - beta2) * c * c
            denom = (np.sqrt(v[k]) / np.sqrt(1 - beta2**t) + eps) * (1 - beta1**t)
            new[k] = p[k] - lr * (p[k] * wd + m[k] / denom)
            last[k] = g[k]
        p = new
        out.append(p)
    return out


@pytest.mark.parametrize("optimize_1d", [False, True])
@pytest.mark.parametrize("scale", [0.05, 3.0])  # the norm clip inactive, then active
def test_mars_matches_the_authors_step(optimize_1d, scale):
    grads = [{k: scale * x for k, x in g.items()} for g in _grads(seed=6)]
    tx = gc.mars(3e-3, 0.95, 0.99, 1e-8, 0.025, weight_decay=0.1, optimize_1d=optimize_1d)
    ref = _mars_reference(grads, 3e-3, 0.95, 0.99, 1e-8, 0.025, 0.1, optimize_1d)
    _assert_close(_run(tx, grads), ref)


def test_mars_correction_moves_the_trajectory_away_from_adamw():
    grads = _grads(seed=6)
    plain = _run(gc.mars(3e-3, gamma=0.0, max_norm=1e9), grads)[-1]
    adam = _run(gc.adamw(3e-3, 0.95, 0.99, weight_decay=0.0), grads)[-1]
    np.testing.assert_allclose(plain["w"], adam["w"], rtol=1e-5)  # gamma 0, no clip: Adam
    assert not np.allclose(_run(gc.mars(3e-3), grads)[-1]["w"], adam["w"], rtol=1e-4)


def test_mars_arguments_are_validated_by_name():
    for kw, name in [
        ({"gamma": -1.0}, "gamma"),
        ({"max_norm": 0.0}, "max_norm"),
        ({"b1_1d": 1.0}, "b1_1d"),
    ]:
        with pytest.raises(ValueError, match=name):
            gc.mars(0.1, **kw)
