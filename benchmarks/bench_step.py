"""How fast is one optimizer step, against optax and against the memory floor?

For each optimizer, in one run and on the same parameters and gradients:

* ``gradchain``          the optimizer on the parameter tree, ``gradchain.apply_updates``;
* ``gradchain.flatten``  the same optimizer with its state in flat buffers (``gradchain.flatten``:
                         leaves under 65,536 elements share one buffer per dtype);
* ``optax``              the optax optimizer of the same name and hyperparameters;
* ``gradchain flat``     the optimizer on the parameters kept flat (``gradchain.flat_layout``, one
                         buffer): the same arithmetic without any cost from the tree's structure;
* ``array floor``        a kernel streaming exactly the bytes the algorithm must move, over the
                         step's own arrays (parameters, gradients, one array per moment; plus the
                         gradients' global norm where the optimizer clips by it): the floor the
                         performance issue sets its targets against (column "vs array floor");
* ``one-pass floor``     the same bytes in one pass over interleaved buffers, a stricter bound
                         that separate arrays cannot reach on XLA:CPU (column "vs 1-pass floor");
* ``flat array floor``   the array floor over the flat buffers of ``gradchain.flat_layout``: the
                         flat-array floor (column "vs flat");
* ``FLOP floor``         for the matrix optimizers (Muon, GaLore, SOAP), the matrix products the
                         algorithm must compute, alone (column "vs FLOP floor").

Every named optimizer of the registry has a row (``--optimizers`` picks some); an optimizer optax
lacks has no optax row.

Step time is the median over ``--reps`` donated-buffer steps taken in turn; compile time includes
tracing; traffic is XLA's count of bytes read and written per parameter; state is the optimizer
state's size per parameter.

    python benchmarks/bench_step.py                      # GPT-2 small / 4 in width, 15M params
    python benchmarks/bench_step.py --full               # GPT-2 small, 124M params
    python benchmarks/bench_step.py --tree many-leaves   # 2,000 leaves, 2M params (--full: 21M)
    python benchmarks/bench_step.py --optimizers adamw,clip+adamw+cosine --reps 50

Runs unchanged on CPU and GPU (JAX picks the default backend). On XLA:CPU each compiled kernel
is mapped into memory apart, and the many-leaves tree compiles tens of thousands of them: with
``--full`` they pass Linux's default ``vm.max_map_count`` (65,530) and LLVM stops with "Unable
to allocate section memory". Raise it first: ``sudo sysctl -w vm.max_map_count=1048576``.
"""

from __future__ import annotations

import argparse
import gc as pygc
import time

from _common import (
    array_floor_variant,
    bench_tree_shapes,
    count_params,
    floor_bytes,
    floor_variant,
    flop_floor_variant,
    gc,
    machine,
    make_tree,
    markdown_table,
    ms,
    optax,
    optimizer_variant,
    optimizers,
    ratio,
    state_moments,
    time_round_robin,
)

VARIANTS = (
    "gradchain",
    "gradchain.flatten",
    "optax",
    "gradchain flat",
    "array floor",
    "one-pass floor",
    "flat array floor",
    "FLOP floor",
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", choices=["gpt2", "many-leaves"], default="gpt2")
    parser.add_argument("--full", action="store_true", help="the real sizes (124M / 21M params)")
    parser.add_argument("--leaves", type=int, default=2000, help="leaves of the many-leaves tree")
    parser.add_argument("--optimizers", default=",".join(optimizers()), help="comma separated")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma separated subset of the variants (default: all; on the many-leaves tree all "
        "but the array floor over the tree, see below)",
    )
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)

    shapes, title = bench_tree_shapes(args.tree, args.full, args.leaves)
    params = make_tree(shapes, seed=0)
    grads = make_tree(shapes, seed=1, scale=1.0)
    n = count_params(params)
    layout = gc.flat_layout(params)
    flat_params, flat_grads = layout.ravel(params), layout.ravel(grads)
    wanted = set((args.variants or ",".join(VARIANTS)).split(","))
    if args.tree == "many-leaves" and args.variants is None:
        # Its kernel per leaf and output adds thousands of compiled kernels to the others' (see
        # vm.max_map_count above); the flat array floor is the reference for this tree.
        wanted.discard("array floor")
    table = optimizers()

    print(f"# {title}: {n:,} float32 parameters in {len(shapes)} leaves", flush=True)
    print(f"machine: {machine()}")
    print(
        f"command: python benchmarks/bench_step.py {' '.join(argv or __import__('sys').argv[1:])}"
    )
    print()
    names = args.optimizers.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown optimizers {unknown}; known: {', '.join(table)}")
    rows, notes = [], []
    for name in names:
        opt = table[name]
        if opt.gradchain is None:
            notes.append(f"{name}: skipped, {opt.missing}")
            print(f"[{name}] skipped: {opt.missing}", flush=True)
            continue
        variants = []
        t0 = time.perf_counter()
        moments, read, write = opt.moments, opt.read, opt.write
        if moments is None:
            moments = state_moments(opt.gradchain(), params)
            read, write = floor_bytes(moments)
        if "gradchain" in wanted:
            variants.append(
                optimizer_variant(
                    "gradchain", opt.gradchain(), gc.apply_updates, params, grads, opt.extra
                )
            )
        try:
            flat_tx = gc.flatten(opt.gradchain())
        except (ValueError, TypeError) as e:
            # Per-leaf statistics: on flat buffers it would be another algorithm.
            flat_tx = None
            notes.append(f"{name}: no flatten or flat rows, {str(e).split(' (')[0]}")
        if "gradchain.flatten" in wanted and flat_tx is not None:
            variants.append(
                optimizer_variant(
                    "gradchain.flatten", flat_tx, gc.apply_updates, params, grads, opt.extra
                )
            )
        if "optax" in wanted and opt.optax is not None:
            variants.append(
                optimizer_variant(
                    "optax", opt.optax(), optax.apply_updates, params, grads, opt.extra
                )
            )
        if "gradchain flat" in wanted and flat_tx is not None:
            variants.append(
                optimizer_variant(
                    "gradchain flat",
                    opt.gradchain(),
                    gc.apply_updates,
                    flat_params,
                    flat_grads,
                    opt.extra,
                )
            )
        if "array floor" in wanted:
            variants.append(
                array_floor_variant(
                    params, grads, moments, opt.global_norm, leaf_norms=opt.leaf_norms
                )
            )
        if "one-pass floor" in wanted:
            variants.append(floor_variant(n, read, write))
        if "flat array floor" in wanted:
            variants.append(
                array_floor_variant(
                    flat_params,
                    flat_grads,
                    moments,
                    opt.global_norm,
                    name="flat array floor",
                    leaf_norms=opt.leaf_norms,
                )
            )
        if "FLOP floor" in wanted and opt.matmuls is not None:
            variants.append(flop_floor_variant(opt.matmuls(grads)))
        time_round_robin(variants, args.reps)
        by_name = {v.name: v for v in variants}
        optax_v, floor_v = by_name.get("optax"), by_name.get("array floor")
        one_pass_v, flat_v = by_name.get("one-pass floor"), by_name.get("flat array floor")
        flop_v = by_name.get("FLOP floor")
        for v in variants:
            rows.append(
                [
                    name,
                    v.name,
                    ms(v.median),
                    ratio(v.median, optax_v.median) if optax_v else "-",
                    ratio(v.median, floor_v.median) if floor_v else "-",
                    ratio(v.median, one_pass_v.median) if one_pass_v else "-",
                    ratio(v.median, flat_v.median) if flat_v else "-",
                    ratio(v.median, flop_v.median) if flop_v else "-",
                    f"{v.compile_s:.2f}",
                    f"{v.compile_cpu_s:.2f}",
                    f"{v.traffic:.1f}",
                    f"{v.state_bytes:.2f}" if not v.name.endswith("floor") else "-",
                ]
            )
        print(
            f"[{name}] "
            + ", ".join(f"{v.name} {ms(v.median)} ms" for v in variants)
            + f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        del variants, by_name, optax_v, floor_v, one_pass_v, flat_v, flop_v
        pygc.collect()

    print()
    print(
        markdown_table(
            [
                "optimizer",
                "variant",
                "step (ms)",
                "vs optax",
                "vs array floor",
                "vs 1-pass floor",
                "vs flat",
                "vs FLOP floor",
                "compile (s)",
                "compile CPU (s)",
                "traffic (B/param)",
                "state (B/param)",
            ],
            rows,
        )
    )
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
