"""Shared machinery for cross-checking a gradchain transformation against an independent one.

``run_both`` drives two transformations with the same gradients for ``steps`` jitted steps and
returns both parameter trajectories; ``assert_trees_close`` compares them leaf by leaf with a
tolerance chosen per dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradchain as gc


# A pytree with a scalar, a vector, a matrix, a 3-D tensor and a bfloat16 leaf.
def mixed_params(seed: int = 0, bf16: bool = True):
    k = jax.random.split(jax.random.PRNGKey(seed), 5)
    params = {
        "scalar": jax.random.normal(k[0], ()),
        "vector": jax.random.normal(k[1], (7,)),
        "matrix": jax.random.normal(k[2], (5, 3)),
        "tensor": jax.random.normal(k[3], (2, 3, 4)),
    }
    if bf16:
        params["bf16"] = jax.random.normal(k[4], (4, 6)).astype(jnp.bfloat16)
    return params


def gradient_stream(params, steps: int, seed: int = 1, scale: float = 1.0):
    """Deterministic pseudo-gradients: a fixed random direction plus noise, per step."""
    keys = jax.random.split(jax.random.PRNGKey(seed), steps)
    out = []
    for key in keys:
        leaves, treedef = jax.tree.flatten(params)
        ks = jax.random.split(key, len(leaves))
        out.append(
            treedef.unflatten(
                [
                    (scale * jax.random.normal(kk, jnp.shape(p), jnp.float32)).astype(p.dtype)
                    for kk, p in zip(ks, leaves)
                ]
            )
        )
    return out


def run(tx, params, grads, apply_updates, extra=None, grad_fn=None):
    """Runs ``tx`` under ``jax.jit`` over ``grads``; returns the list of params after each step."""
    state = tx.init(params)
    extra = extra or {}

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p, **extra)
        return apply_updates(p, u), s

    traj = []
    p = params
    for g in grads:
        p, state = step(p, state, g)
        traj.append(p)
    return traj, state


def float32_trajectory(tx, params, grads):
    """``tx`` jitted on float32 copies of numpy ``params`` and ``grads`` (a list of trees): the
    parameters after each step in float64 numpy, and the last state. For comparisons with a
    numpy transcription of an authors' algorithm."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    out = []
    for g in grads:
        params, state = step(params, state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g))
        out.append(jax.tree.map(lambda x: np.asarray(x, np.float64), params))
    return out, state


def run_both(ours, reference, params, steps: int):
    """``ours`` (gradchain) and ``reference`` (optax) run from ``params`` over the same ``steps``
    gradients under ``jax.jit``: the two parameter trajectories."""
    grads = gradient_stream(params, steps)
    got, _ = run(ours, params, grads, gc.apply_updates)
    want, _ = run(reference, params, grads, optax.apply_updates)
    return got, want


def upcast(tree):
    return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)


def tolerance(dtype):
    """(rtol, atol) for comparing two implementations of the same algebra.

    float32: both sides round each operation to 2^-24; over 20 steps of O(1) updates the
    accumulated difference stays below ~1e-6 relative. gradchain keeps hyperparameters as
    float32 data (live hyperparameters) where optax folds Python doubles, so ``1 - b`` can differ
    by one ulp; that is covered by the same bound. bfloat16 leaves are compared after rounding to
    bfloat16 (8 bits of mantissa): half an ulp relative is 2^-9 ~ 2e-3, and one step may flip the
    rounding of a value, hence 1e-2.
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.bfloat16 or dtype == jnp.float16:
        return 1e-2, 1e-2
    if dtype == jnp.float64:
        return 1e-12, 1e-12
    return 1e-6, 1e-6


def assert_trees_close(actual, expected, what="params", rtol=None, atol=None):
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(actual)
    e_leaves, e_def = jax.tree.flatten(expected)
    assert a_def == e_def, f"{what}: structures differ: {a_def} vs {e_def}"
    for (path, a), e in zip(a_leaves, e_leaves):
        r, t = tolerance(np.asarray(a).dtype)
        r = rtol if rtol is not None else r
        t = atol if atol is not None else t
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(e, np.float64),
            rtol=r,
            atol=t,
            err_msg=f"{what} at {jax.tree_util.keystr(path)}",
        )
