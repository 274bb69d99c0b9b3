"""Small, fast training fixtures shared by the combinator, checkpoint and framework tests.

Gradient streams come from numpy's generator (no JAX dispatch per leaf and step), and whole runs
are one ``jax.lax.scan`` inside ``jax.jit``: one compilation and one dispatch per run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def stream(params, steps: int, seed: int = 1, nan_at=()):
    """Pseudo-gradients for ``steps`` steps, stacked on a leading axis; a NaN in every leaf at
    the steps in ``nan_at``."""
    rng = np.random.default_rng(seed)

    def leaf(p):
        g = rng.standard_normal((steps, *np.shape(p))).astype(np.float32)
        for i in nan_at:
            g[(i,) + (0,) * np.ndim(p)] = np.nan
        return jnp.asarray(g).astype(p.dtype)

    return jax.tree.map(leaf, params)


def unstack(stacked, steps: int):
    return [jax.tree.map(lambda g: g[i], stacked) for i in range(steps)]


def scan_run(tx, params, grads, apply_updates, trajectory: bool = False):
    """Runs ``tx`` over the stacked ``grads`` in one jitted scan; returns (params, state) after
    the last step, or (params after every step, stacked; final state) with ``trajectory``."""

    @jax.jit
    def go(params, grads):
        def step(carry, g):
            p, s = carry
            u, s = tx.update(g, s, p)
            p = apply_updates(p, u)
            return (p, s), (p if trajectory else None)

        (p, s), traj = jax.lax.scan(step, (params, tx.init(params)), grads)
        return (traj if trajectory else p), s

    return go(params, grads)


def bits_equal(a, b) -> bool:
    """Leaf-by-leaf equality of the bytes (so -0.0 != 0.0 and NaN payloads count)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        x.dtype == y.dtype
        and np.array_equal(
            np.asarray(x).reshape(-1).view(np.uint8), np.asarray(y).reshape(-1).view(np.uint8)
        )
        for x, y in zip(la, lb)
    )


def transformer_params(stacked: bool, layers: int = 2, d: int = 8, vocab: int = 11, seed: int = 0):
    """A small pre-norm transformer's parameter tree, flax-style names, with its ``layers``
    either a list of per-layer trees or one tree stacked on a leading layer axis (for scan)."""
    rng = np.random.default_rng(seed)

    def dense(n_in, n_out):
        return {
            "kernel": rng.standard_normal((n_in, n_out)).astype(np.float32),
            "bias": np.zeros(n_out, np.float32),
        }

    def norm():
        return {"scale": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)}

    def layer():
        return {
            "attn_norm": norm(),
            "attn": {
                "query": dense(d, d),
                "key": dense(d, d),
                "value": dense(d, d),
                "out": dense(d, d),
            },
            "mlp_norm": norm(),
            "mlp": {"up": dense(d, 4 * d), "down": dense(4 * d, d)},
        }

    per_layer = [layer() for _ in range(layers)]
    body = jax.tree.map(lambda *xs: np.stack(xs), *per_layer) if stacked else per_layer
    tree = {
        "embed": {"embedding": rng.standard_normal((vocab, d)).astype(np.float32)},
        "pos_embed": rng.standard_normal((16, d)).astype(np.float32),
        "layers": body,
        "final_norm": norm(),
        "head": dense(d, vocab),
    }
    return jax.tree.map(jnp.asarray, tree)


def linear_problem(batch: int = 32, n_in: int = 6, n_out: int = 3):
    """Least squares ``mean((x w + b - y)^2)`` on a fixed random batch: (params, x, y, loss)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, n_in)), jnp.float32)
    y = jnp.asarray(rng.standard_normal((batch, n_out)), jnp.float32)
    params = {
        "w": jnp.asarray(0.1 * rng.standard_normal((n_in, n_out)), jnp.float32),
        "b": jnp.zeros(n_out, jnp.float32),
    }

    def loss(p, xb, yb):
        return jnp.mean(jnp.square(xb @ p["w"] + p["b"][None, :] - yb))

    return params, x, y, loss
