"""Step time of float32, 8-bit and 4-bit AdamW against their memory floors and optax's AdamW.

One run times, on one large leaf and then on the GPT-2 small tree (124.4M parameters, 148
leaves), one jitted step (``update`` + ``apply_updates``, parameters and state donated; median of
``--reps`` steps, the variants called in turn so that a change of machine load hits all alike)
of:

* optax's float32 ``adamw`` (the reference of the last column);
* gradchain's float32 ``adamw``, ``adamw_8bit`` and ``adamw_4bit``;
* each gradchain optimizer's **memory floor**: a jitted kernel over the very arrays its step must
  read and write (parameters, gradients, every state array), one add per element. Bytes per
  parameter: float32 AdamW 28; 8-bit about 16 (p and g in, p out: 12; two 1-byte codes in and
  out: 4; block scales); 4-bit about 14 (two half-byte codes in and out: 2).

Columns: state bytes per parameter; XLA's own count of the bytes the compiled step accesses per
parameter; median step time; the floor's; step / floor; step / optax's float32 step.

Usage::

    python benchmarks/bench_8bit.py                   # 8M-element leaf, then GPT-2 small
    python benchmarks/bench_8bit.py --leaf 4e6 --no-gpt2 --reps 20
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from _common import (
    _donated_variant,
    count_params,
    gc,
    gpt2_shapes,
    machine,
    make_tree,
    markdown_table,
    ms,
    optimizer_variant,
    ratio,
    time_round_robin,
)


def state_floor_variant(name, tx, params, grads):
    """Streams the step's own arrays once: ``p + g`` and ``s + 1`` for every state array."""
    params = jax.tree.map(jnp.copy, params)
    state = tx.init(params)

    def kernel(p, s, g):
        return jax.tree.map(lambda a, b: a + b, p, g), jax.tree.map(lambda x: x + 1, s)

    return _donated_variant(name, kernel, params, state, grads, 0.0)


def table(title: str, params, reps: int) -> str:
    n = count_params(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
    reference = optimizer_variant(
        "optax adamw (float32)", optax.adamw(1e-3), optax.apply_updates, params, grads
    )
    ours = {
        "adamw (float32)": gc.adamw(1e-3),
        "adamw_8bit": gc.adamw_8bit(1e-3),
        "adamw_4bit": gc.adamw_4bit(1e-3),
    }
    pairs = []
    for name, tx in ours.items():
        step = optimizer_variant(name, tx, gc.apply_updates, params, grads)
        floor = state_floor_variant(f"{name} floor", tx, params, grads)
        pairs.append((step, floor))
    time_round_robin([reference] + [v for pair in pairs for v in pair], reps)
    rows = []
    for step, floor in [(reference, None)] + pairs:
        rows.append(
            [
                step.name,
                f"{step.state_bytes:.3f}",
                f"{step.traffic:.1f}",
                ms(step.median),
                "-" if floor is None else ms(floor.median),
                "-" if floor is None else ratio(step.median, floor.median),
                ratio(step.median, reference.median),
            ]
        )
    header = [
        "optimizer",
        "state B/param",
        "accessed B/param",
        "step ms",
        "floor ms",
        "step / floor",
        "step / optax float32",
    ]
    return (
        f"{title}: {n / 1e6:.1f}M parameters in {len(jax.tree.leaves(params))} leaves, median of {reps} steps\n\n"
        + markdown_table(header, rows)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leaf", type=float, default=8e6, help="elements of the large leaf")
    parser.add_argument("--no-gpt2", action="store_true", help="skip the GPT-2 small tree")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"# {machine()}")
    cols = 1024
    leaf = {"w": make_tree({"w": (max(1, int(args.leaf) // cols), cols)}, seed=0)["w"]}
    print(table("One leaf", leaf, args.reps))
    del leaf
    if not args.no_gpt2:
        print()
        print(
            table(
                "GPT-2 small tree",
                make_tree(gpt2_shapes(full=True), seed=0),
                max(3, args.reps // 2),
            )
        )


if __name__ == "__main__":
    main()
