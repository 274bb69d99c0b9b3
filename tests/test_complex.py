"""Complex parameters follow optax: second moments of ``|g|^2``, the rest in complex arithmetic.

Each optimizer runs 30 jitted steps on complex parameters (a vector and a matrix large enough for
Adafactor to factor) against optax's optimizer of the same name. The objective is
``sum |p - target|^2`` with optax's convention of conjugated gradients.
"""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

CASES = [
    ("adam", {}),
    ("adamw", {}),
    ("nadam", {}),
    ("nadamw", {}),
    ("amsgrad", {}),
    ("adamax", {}),
    ("adamaxw", {}),
    ("radam", {}),
    ("rmsprop", {}),
    ("rmsprop", {"centered": True}),
    ("adagrad", {}),
    ("adafactor", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("lamb", {}),
    ("lars", {}),
    ("adabelief", {}),
    ("yogi", {}),
    ("novograd", {}),
    ("optimistic_gradient_descent", {}),
]


def _run(module, name, kwargs, steps=30):
    key = jax.random.PRNGKey(0)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "v": jax.random.normal(k1, (5,)) + 1j * jax.random.normal(k2, (5,)),
        "m": (jax.random.normal(k3, (130, 129)) * (0.5 - 1j)).astype(jnp.complex64),
    }
    target = jax.tree.map(lambda p: jnp.full_like(p, 1 + 1j), params)
    loss = lambda p: sum(
        jnp.sum(jnp.abs(a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
    )
    tx = getattr(module, name)(0.05, **kwargs)

    @jax.jit
    def step(p, s):
        g = jax.tree.map(jnp.conj, jax.grad(loss)(p))
        u, s = tx.update(g, s, p)
        return module.apply_updates(p, u), s

    state = tx.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    return params


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=[f"{n}{kw or ''}" for n, kw in CASES])
def test_complex_parameters_match_optax(name, kwargs):
    ours, theirs = _run(gc, name, kwargs), _run(optax, name, kwargs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.complex64
        # 30 float32 steps of O(1) values: a few ulps of drift per step.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("adaptive", [False, True])
def test_complex_muon_matches_optax(adaptive):
    # Muon orthogonalizes complex matrices with the Hermitian Gram matrix (the vector goes to its
    # AdamW part); adaptive scaling uses the complex inner product <m, u> = sum(conj(m) u).
    def namespace(module):
        return SimpleNamespace(muon=module.contrib.muon, apply_updates=module.apply_updates)

    kwargs = {"adaptive": adaptive}
    # Adaptive steps are scaled by <m, u>, a sum over the 16770 entries of the matrix (about
    # 1e4 here), so they diverge within a few steps and two correct implementations part by
    # rounding alone: compare one step. That sum, in another order, carries ~1e-5 relative
    # error into an update of size ~1e2: hence 2e-4 there.
    steps, tol = (1, 2e-4) if adaptive else (30, 2e-5)
    ours = _run(namespace(gc), "muon", kwargs, steps)
    theirs = _run(namespace(optax), "muon", kwargs, steps)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["schedule_free_sgd", "schedule_free_adamw"])
def test_complex_schedule_free_matches_optax(name):
    # The interpolation between z and x has real weights; the base optimizer handles |g|^2.
    def namespace(module):
        return SimpleNamespace(
            **{name: getattr(module.contrib, name)}, apply_updates=module.apply_updates
        )

    ours, theirs = _run(namespace(gc), name, {}), _run(namespace(optax), name, {})
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert a.dtype == b.dtype == jnp.complex64
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-5)
