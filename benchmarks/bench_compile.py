"""How long does one optimizer step take to compile, against optax's?

For each optimizer, in one process and on the same parameters and gradients, the jitted step
(``update`` + ``apply_updates``, parameters and state donated, as in ``bench_step.py``) of
gradchain and of optax is traced, lowered and compiled ``--repeats`` times in turn, with
``jax.clear_caches()`` before each, so that a change of machine load hits both alike. Reported:
the median wall and CPU seconds (trace + lower + compile), their ratio to optax's, and what the
programs hold: operations in the lowered StableHLO (``pow`` ones apart: a bias correction
formed per leaf shows there) and the fusions and kernel parameters of the compiled HLO.

    python benchmarks/bench_compile.py                                  # GPT-2 small / 4
    python benchmarks/bench_compile.py --optimizers adamw,lion --repeats 7
    python benchmarks/bench_compile.py --tree many-leaves --optimizers adamw --repeats 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from _common import (
    bench_tree_shapes,
    count_params,
    gc,
    jax,
    machine,
    make_tree,
    markdown_table,
    optax,
    optimizers,
    ratio,
)

DEFAULT = "adamw,lion,sgd,adafactor,muon"


def _step(tx, apply_updates, extra):
    def step(p, s, g):
        u, s = tx.update(g, s, p, **extra)
        return apply_updates(p, u), s

    return step


def _compile_once(tx, apply_updates, params, grads, extra):
    """(wall s, CPU s, lowered text, compiled text) of one cold trace + lower + compile."""
    state = tx.init(params)
    jax.clear_caches()
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = jax.jit(_step(tx, apply_updates, extra), donate_argnums=(0, 1)).lower(
        params, state, grads
    )
    compiled = lowered.compile()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, lowered, compiled


def _counts(lowered, compiled) -> tuple[int, int, int, int]:
    """Operations and ``pow`` operations of the lowered program; fusions and fused-computation
    parameters of the compiled one."""
    text = lowered.as_text()
    ops = len(re.findall(r"= (?:stablehlo|chlo|mhlo)\.\w+", text))
    pows = len(re.findall(r"stablehlo\.power", text))
    hlo = compiled.as_text() or ""
    fusions = len(re.findall(r"^\s*\S+ = \S+ fusion\(", hlo, re.M))
    params = len(re.findall(r"^\s*\S+ = \S+ parameter\(", hlo, re.M))
    return ops, pows, fusions, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", choices=["gpt2", "many-leaves"], default="gpt2")
    parser.add_argument("--full", action="store_true", help="the real sizes (124M / 21M params)")
    parser.add_argument("--leaves", type=int, default=2000)
    parser.add_argument("--optimizers", default=DEFAULT, help="comma separated")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    shapes, title = bench_tree_shapes(args.tree, args.full, args.leaves)
    params = make_tree(shapes, seed=0)
    grads = make_tree(shapes, seed=1, scale=1.0)
    table = optimizers()
    print(f"# {title}: {count_params(params):,} float32 parameters in {len(shapes)} leaves")
    print(f"machine: {machine()}")
    print(
        f"command: python benchmarks/bench_compile.py {' '.join(argv or __import__('sys').argv[1:])}"
    )
    print(flush=True)

    rows = []
    for name in args.optimizers.split(","):
        opt = table[name]
        sides = {"gradchain": (opt.gradchain, gc.apply_updates)}
        if opt.optax is not None:
            sides["optax"] = (opt.optax, optax.apply_updates)
        walls = {k: [] for k in sides}
        cpus = {k: [] for k in sides}
        counts = {}
        for _ in range(args.repeats):
            for side, (make, apply_updates) in sides.items():
                wall, cpu, lowered, compiled = _compile_once(
                    make(), apply_updates, params, grads, opt.extra
                )
                walls[side].append(wall)
                cpus[side].append(cpu)
                counts.setdefault(side, _counts(lowered, compiled))
        ref_wall = statistics.median(walls["optax"]) if "optax" in sides else float("nan")
        ref_cpu = statistics.median(cpus["optax"]) if "optax" in sides else float("nan")
        for side in sides:
            w, c = statistics.median(walls[side]), statistics.median(cpus[side])
            ops, pows, fusions, kparams = counts[side]
            rows.append(
                [
                    name,
                    side,
                    f"{w:.2f}",
                    ratio(w, ref_wall),
                    f"{c:.2f}",
                    ratio(c, ref_cpu),
                    str(ops),
                    str(pows),
                    str(fusions),
                    str(kparams),
                ]
            )
        print(
            f"[{name}] " + ", ".join(f"{r[1]} {r[2]} s ({r[3]})" for r in rows[-len(sides) :]),
            flush=True,
        )
    print()
    print(f"load average at the end: {__import__('os').getloadavg()[0]:.1f}")
    print(
        markdown_table(
            [
                "optimizer",
                "library",
                "compile (s)",
                "vs optax",
                "compile CPU (s)",
                "CPU vs optax",
                "StableHLO ops",
                "pow ops",
                "fusions",
                "HLO parameters",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
