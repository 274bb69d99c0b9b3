"""A small built-in example: fit a two-layer network with clipped AdamW.

The full demo (a transformer language model racing every optimizer) replaces this module.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

import gradchain as gc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="gradchain", description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        print("gradchain: error: --steps must be positive", file=sys.stderr)
        return 2
    kx, k1, k2 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (256, 8))
    y = jnp.sin(x.sum(axis=1, keepdims=True))
    params = {
        "w1": jax.random.normal(k1, (8, 32)) / jnp.sqrt(8.0),
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 1)) / jnp.sqrt(32.0),
        "b2": jnp.zeros(1),
    }

    def loss(p):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2, weight_decay=1e-4))
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        value, grads = jax.value_and_grad(loss)(p)
        updates, s = tx.update(grads, s, p)
        return gc.apply_updates(p, updates), s, value

    first = None
    for i in range(args.steps):
        params, state, value = step(params, state)
        first = float(value) if first is None else first
    print(tx)
    print(f"loss {first:.4f} -> {float(loss(params)):.4f} after {args.steps} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
