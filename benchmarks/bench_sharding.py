"""Per-device optimizer-state memory of AdamW on 8 devices: replicated, ZeRO-1, and FSDP.

    python benchmarks/bench_sharding.py

Runs on 8 simulated CPU devices unless ``XLA_FLAGS`` already sets a device count (on a real
8-accelerator host, set ``JAX_PLATFORMS`` accordingly). Bytes are measured from the arrays'
addressable shards (``gc.per_device_bytes``), not computed from shapes; collectives are read
from the compiled training step.
"""

from __future__ import annotations

import os
import re

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import gradchain as gc

LAYERS, D, FF, VOCAB = 4, 256, 1024, 4096


def model_shapes():
    """A small transformer-shaped MLP stack: 3.2M parameters, every size divisible by 8."""
    shapes = {"embed": (VOCAB, D)}
    for i in range(LAYERS):
        shapes[f"layer{i}"] = {"up": (D, FF), "up_b": (FF,), "down": (FF, D), "down_b": (D,)}
    return shapes


def params_on(mesh, spec_of):
    rng = np.random.default_rng(0)

    def make(shape):
        x = (0.02 * rng.standard_normal(shape)).astype(np.float32)
        return jax.device_put(x, NamedSharding(mesh, spec_of(shape)))

    return jax.tree.map(make, model_shapes(), is_leaf=_is_shape)


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

    return jax.jit(step).lower(params, state, tokens).compile().as_text()


def parameter_gathers(hlo: str) -> tuple[int, int]:
    """(count, bytes) of the arrays all-gathered in ``hlo`` that are shaped like a parameter."""
    shapes = {tuple(s) for s in jax.tree.leaves(model_shapes(), is_leaf=_is_shape)}
    count = total = 0
    for result in re.findall(r"=\s*(\([^)]*\)|\S+)\s+all-gather(?:-start)?\(", hlo):
        for dims in re.findall(r"f32\[([\d,]*)\]", result):
            shape = tuple(int(d) for d in dims.split(",") if d)
            if shape in shapes:
                count, total = count + 1, total + 4 * int(np.prod(shape))
    return count, total


def _is_shape(x) -> bool:
    return isinstance(x, tuple)


def moments(state):
    return {"mu": gc.tree_get(state, "mu"), "nu": gc.tree_get(state, "nu")}


def main():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert jax.device_count() == 8, jax.devices()
    tokens = jax.device_put(
        np.random.default_rng(1).integers(0, VOCAB, (64, 32)), NamedSharding(mesh, P("data"))
    )
    adamw = gc.adamw(1e-3, weight_decay=0.1)
    n_params = sum(int(np.prod(s)) for s in jax.tree.leaves(model_shapes(), is_leaf=_is_shape))

    replicated = params_on(mesh, lambda shape: P())
    fsdp = params_on(mesh, lambda shape: P("data"))  # every leading dimension divides by 8
    zero1 = gc.zero1(adamw, mesh, axis="data")

    layouts = {
        "replicated (data parallel)": (adamw, replicated),
        "zero1 (data parallel)": (zero1, replicated),
        "fsdp (params sharded)": (adamw, fsdp),
    }
    print(
        f"AdamW, {n_params / 1e6:.2f}M float32 parameters, {jax.device_count()} devices "
        f"({jax.devices()[0].platform})\n"
    )
    print(
        f"{'layout':28s} {'moments/device':>15s} {'state/device':>13s} {'vs replicated':>14s} "
        f"{'param all-gathers/step':>23s}"
    )
    base = None
    for name, (tx, params) in layouts.items():
        state = tx.init(params)
        m = max(gc.per_device_bytes(moments(state)).values())
        total = max(gc.per_device_bytes(state).values())
        base = base or m
        count, gathered = parameter_gathers(step_hlo(tx, params, state, tokens))
        print(
            f"{name:28s} {m:>15,d} {total:>13,d} {f'1/{base / m:g}':>14s} "
            f"{f'{count} ({gathered:,d} B)':>23s}"
        )
    print(
        f"\n{n_params * 4:,d} B of parameters in {len(jax.tree.leaves(replicated))} arrays. "
        "moments/device: mu and nu bytes held by the\nfullest device; state/device adds the "
        "replicated counts and hyperparameters; param\nall-gathers/step: all-gathers of "
        "parameter-shaped arrays in the compiled training step."
    )


if __name__ == "__main__":
    main()
