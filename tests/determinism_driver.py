"""Runs a few optimizers for 10 jitted steps from a fixed seed and prints a hash of everything
they produced (updates, params and state after each step), one line per optimizer.

Used by test_determinism in two separate processes: the hashes must be identical.
"""

import hashlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc

OPTIMIZERS = {
    "adamw": lambda: gc.adamw(1e-2, weight_decay=0.1),
    "adafactor": lambda: gc.adafactor(1e-2, min_dim_size_to_factor=2),
    "muon": lambda: gc.muon(1e-2),
}


def digest(name: str) -> str:
    tx = OPTIMIZERS[name]()
    key = jax.random.PRNGKey(42)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "w": jax.random.normal(k1, (8, 6)),
        "b": jax.random.normal(k2, (6,)),
        "h": jax.random.normal(k3, (6, 4)).astype(jnp.bfloat16),
    }
    state = tx.init(params)

    @jax.jit
    def step(p, s, k):
        g = jax.tree.map(lambda x: jax.random.normal(k, x.shape, x.dtype), p)
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s, u

    h = hashlib.sha256()
    for k in jax.random.split(jax.random.PRNGKey(7), 10):
        params, state, updates = step(params, state, k)
        for leaf in jax.tree.leaves((params, state, updates)):
            h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    for name in sys.argv[1:] or OPTIMIZERS:
        print(name, digest(name))
