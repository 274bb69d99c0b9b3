"""Optimizer-state memory of AdamW per device and per process: replicated, ZeRO-1, FSDP and
ZeRO-1 with the state offloaded to host memory, and the collectives of each training step.

    python benchmarks/bench_sharding.py                    # 2 processes x 4 CPU devices
    python benchmarks/bench_sharding.py --processes 1 --devices 8

Without ``--process-id`` the script starts ``--processes`` copies of itself on 127.0.0.1, joined
by ``jax.distributed`` (gloo collectives on CPU), each with ``--devices`` simulated CPU
devices; process 0 prints the table. Bytes are measured on each process's shards and read from
the arrays' shardings for the other processes (``gc.per_device_bytes``,
``gc.per_process_bytes``), not computed from shapes; collectives are read from the compiled
training step.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys

ARGS = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ARGS.add_argument("--processes", type=int, default=2)
ARGS.add_argument("--devices", type=int, default=4, help="CPU devices per process")
ARGS.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
ARGS.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)

LAYERS, D, FF, VOCAB = 4, 256, 1024, 4096


def launch(args) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={args.devices}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--processes", str(args.processes), "--devices"]
            + [str(args.devices), "--process-id", str(i), "--port", str(port)],
            env=env,
            stdout=None if i == 0 else subprocess.DEVNULL,
        )
        for i in range(args.processes)
    ]
    return max(p.wait(timeout=900) for p in procs)


def main(args) -> None:
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{args.port}", args.processes, args.process_id)

    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import gradchain as gc

    def model_shapes():
        """A small transformer-shaped MLP stack: 3.2M parameters, every size divisible by 8."""
        shapes = {"embed": (VOCAB, D)}
        for i in range(LAYERS):
            shapes[f"layer{i}"] = {"up": (D, FF), "up_b": (FF,), "down": (FF, D), "down_b": (D,)}
        return shapes

    def is_shape(x) -> bool:
        return isinstance(x, tuple)

    def params_on(mesh, spec):
        rng = np.random.default_rng(0)

        def make(shape):
            x = (0.02 * rng.standard_normal(shape)).astype(np.float32)
            return jax.device_put(x, NamedSharding(mesh, spec))

        return jax.tree.map(make, model_shapes(), is_leaf=is_shape)

    def loss(params, tokens):
        h = params["embed"][tokens]
        for i in range(LAYERS):
            layer = params[f"layer{i}"]
            h = h + jax.nn.gelu(h @ layer["up"] + layer["up_b"]) @ layer["down"] + layer["down_b"]
        return jnp.mean(h**2)

    def step_hlo(tx, params, state, tokens):
        def step(params, state, tokens):
            grads = jax.grad(loss)(params, tokens)
            updates, state = tx.update(grads, state, params)
            return gc.apply_updates(params, updates), state

        # outputs laid out as the inputs: XLA would otherwise return zero1's parameters sharded
        out = (jax.tree.map(lambda p: p.sharding, params), gc.state_shardings(tx, params))
        step = jax.jit(step, out_shardings=out)
        return step.lower(params, state, tokens).compile().as_text()

    def collectives(hlo: str) -> dict:
        """``{op: (arrays, bytes)}`` of the collectives in ``hlo``, one per array (XLA combines
        several arrays into one collective with a tuple result)."""
        itemsize = {"f32": 4, "s32": 4, "bf16": 2, "f16": 2, "u8": 1, "s8": 1, "pred": 1}
        out: dict = {}
        ops = "all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute"
        for m in re.finditer(rf"=\s*(\([^)]*\)|\S+)\s+({ops})(?:-start)?\(", hlo):
            for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
                n = int(np.prod([int(d) for d in dims.split(",") if d]))
                count, total = out.get(m.group(2), (0, 0))
                out[m.group(2)] = (count + 1, total + n * itemsize.get(dtype, 4))
        return out

    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    n_dev, n_proc = jax.device_count(), jax.process_count()
    tokens = jax.device_put(
        np.random.default_rng(1).integers(0, VOCAB, (8 * n_dev, 32)), NamedSharding(mesh, P("data"))
    )
    adamw = gc.adamw(1e-3, weight_decay=0.1)
    n_params = sum(int(np.prod(s)) for s in jax.tree.leaves(model_shapes(), is_leaf=is_shape))
    replicated, fsdp = params_on(mesh, P()), params_on(mesh, P("data"))
    layouts = {
        "replicated (data parallel)": (adamw, replicated),
        "zero1 (data parallel)": (gc.zero1(adamw, mesh, axis="data"), replicated),
        "fsdp (params sharded)": (adamw, fsdp),
        "zero1 + offload to host": (gc.zero1(adamw, mesh, axis="data", offload=True), replicated),
    }
    rows = []
    for name, (tx, params) in layouts.items():
        state = tx.init(params)
        device = gc.per_device_bytes(state, memory_kind="device")
        by_process = gc.per_process_bytes(state, memory_kind="device")
        host = gc.per_process_bytes(state, memory_kind="pinned_host")
        found = collectives(step_hlo(tx, params, state, tokens))
        rows.append(
            (
                name,
                max(device.values(), default=0),
                max(by_process.values(), default=0),
                max(host.values(), default=0),
                found,
            )
        )
    if jax.process_index() != 0:
        return
    print(
        f"AdamW, {n_params / 1e6:.2f}M float32 parameters, {n_proc} processes x "
        f"{jax.local_device_count()} devices ({jax.devices()[0].platform}), jax {jax.__version__}\n"
    )
    print(
        "| layout | state in device memory, B/device | B/process | state in host memory, "
        "B/process | all-gathers/step | all-reduces/step | reduce-scatters/step |"
    )
    print("|---|---|---|---|---|---|---|")

    def ops(found, op):
        count, total = found.get(op, (0, 0))
        return f"{count} ({total:,d} B)"

    for name, device, process, host, found in rows:
        print(
            f"| {name} | {device:,d} | {process:,d} | {host:,d} | {ops(found, 'all-gather')} | "
            f"{ops(found, 'all-reduce')} | {ops(found, 'reduce-scatter')} |"
        )
    print(
        f"\n{n_params * 4:,d} B of parameters in {len(jax.tree.leaves(replicated))} arrays. "
        "State bytes: the fullest device, the fullest process; collectives: arrays and bytes "
        "(result shapes) in the compiled training step, per device."
    )


if __name__ == "__main__":
    args = ARGS.parse_args()
    if args.process_id is None and args.processes > 1:
        sys.exit(launch(args))
    if args.process_id is None:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    main(args)
