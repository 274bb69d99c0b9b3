"""Step time of 8-bit AdamW against float32 AdamW and against the memory floor.

One step is ``update`` plus ``apply_updates`` under ``jax.jit`` with the parameters and the state
donated; times are the fastest of ``--repeats`` steps. The *memory floor* of an optimizer is a
jitted kernel that streams exactly the bytes its step must move (read the parameters, the
gradients and every state array; write the parameters and every state array) with one add per
element: no step on this machine moving those bytes can be faster. Bytes per parameter:

* float32 AdamW: read p, g, m, v (16), write p, m, v (12): 28;
* 8-bit AdamW: read p, g (8) and two codes (2), write p (4) and two codes (2), plus the block
  scales (16 / block_size): about 16.

Usage::

    python benchmarks/bench_8bit.py                 # 4M parameters (CPU-sized)
    python benchmarks/bench_8bit.py --size 124e6    # GPT-2 small sized
    python benchmarks/bench_8bit.py --gpt2          # the GPT-2 small tree itself (148 leaves)
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from _common import gc, gpt2_shapes, machine, make_tree


def matrices(size: int, n_leaves: int = 8, width: int = 1024):
    """``n_leaves`` float32 matrices of ``width`` columns holding about ``size`` parameters,
    each with a (float-state) bias."""
    rows = max(1, size // (n_leaves * width))
    keys = jax.random.split(jax.random.PRNGKey(0), n_leaves)
    return {
        f"layer{i}": {"w": jax.random.normal(k, (rows, width)) * 0.02, "b": jnp.zeros(width)}
        for i, k in enumerate(keys)
    }


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def best_time(fn, args, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds (the least disturbed by other work on the
    machine); ``fn`` donates and returns its first two arguments."""
    p, s, g = args
    p, s = fn(p, s, g)  # compile and warm up
    p, s = fn(p, s, g)
    jax.block_until_ready((p, s))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        p, s = fn(p, s, g)
        jax.block_until_ready((p, s))
        times.append(time.perf_counter() - start)
    return min(times)


def optimizer_step(tx):
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    return jax.jit(step, donate_argnums=(0, 1))


def floor_step(p, s, g):
    """Reads p, s and g once and writes p and s once: one add per element."""
    return jax.tree.map(lambda a, b: a + b, p, g), jax.tree.map(lambda x: x + 1, s)


floor_step = jax.jit(floor_step, donate_argnums=(0, 1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=float, default=4e6, help="parameters (default 4e6)")
    parser.add_argument("--gpt2", action="store_true", help="use the GPT-2 small tree")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)

    params = make_tree(gpt2_shapes(full=True), seed=0) if args.gpt2 else matrices(int(args.size))
    n = sum(x.size for x in jax.tree.leaves(params))
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    print(f"# {machine()}")
    print(f"# {n / 1e6:.1f}M parameters in {len(jax.tree.leaves(params))} leaves")
    print(
        "| optimizer | state B/param | moved B/param | step ms | floor ms | step / floor "
        "| step / float32 step |"
    )
    print("|---|---|---|---|---|---|---|")
    reference = None
    for name, tx in (
        ("adamw (float32)", gc.adamw(1e-3)),
        ("adamw_8bit, block 256", gc.adamw_8bit(1e-3)),
        ("adamw_8bit, block 2048", gc.adamw_8bit(1e-3, block_size=2048)),
    ):
        fresh = lambda: (jax.tree.map(jnp.copy, params), tx.init(params))
        p, s = fresh()
        moved = 2 * nbytes(p) + nbytes(grads) + 2 * nbytes(s)
        step = best_time(optimizer_step(tx), (p, s, grads), args.repeats)
        p, s = fresh()
        floor = best_time(floor_step, (p, s, grads), args.repeats)
        reference = reference or step
        print(
            f"| {name} | {nbytes(s) / n:.3f} | {moved / n:.2f} | {step * 1e3:.2f} "
            f"| {floor * 1e3:.2f} | {step / floor:.2f} | {step / reference:.2f} |"
        )


if __name__ == "__main__":
    main()
