"""gradchain across processes (``jax.distributed`` on 127.0.0.1): the checks tests/test_multihost.py
runs.

tests/test_multihost.py starts two of these processes per run, each with 1 or 2 CPU devices
and gloo collectives, the way one process per GPU (or per host) runs a training job::

    python tests/multihost_driver.py PHASE WORKDIR PROCESS_ID NUM_PROCESSES PORT [CHECK ...]

``PHASE`` is ``train`` (every check; it also saves the checkpoints of the resume checks in
``WORKDIR``) or ``resume`` (fresh processes that restore those checkpoints and continue). Each
check prints one JSON line ``{"check": NAME, "process": ID, "ok": bool, "detail": str}``; the
test passes a check when every process reports it ok.

Parameters live on a global mesh of every device of every process, axis ``"data"``: sharded
along it (FSDP) or replicated (data parallelism, for ``zero1``). The single-process reference
of every run is the same computation with every array on this process's first device.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import sys
import time
import traceback

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if __name__ == "__main__":
    # before anything (importing gradchain included) starts JAX's backend
    PHASE, WORKDIR, PROCESS_ID, NUM_PROCESSES, PORT, *SELECTED = sys.argv[1:]
    WORKDIR = pathlib.Path(WORKDIR)
    jax.distributed.initialize(
        f"127.0.0.1:{PORT}", int(NUM_PROCESSES), int(PROCESS_ID), initialization_timeout=60
    )

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradchain as gc  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS, SAVE_AT = 20, 10

# Every size divides by 4 (2 processes x 2 devices) except "odd", which stays whole.
SHAPES = {"w": (16, 8), "emb": (8, 24), "b": (8,), "odd": (5,)}
FSDP = {"w": P("data"), "emb": P(None, "data"), "b": P(), "odd": P()}
REPLICATED = {n: P() for n in SHAPES}


def optimizers(mesh) -> dict:
    """``name: (tx, layout, single-process reference tx)``."""
    return {
        "adamw": (gc.adamw(1e-2, weight_decay=0.1), FSDP, None),
        # the gradients' global norm is about 15: every step is clipped
        "clip_adamw": (gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2)), FSDP, None),
        "adafactor": (gc.adafactor(1e-2, min_dim_size_to_factor=4), FSDP, None),
        "zero1": (gc.zero1(gc.adamw(1e-2), mesh), REPLICATED, gc.adamw(1e-2)),
        "adamw_8bit": (gc.adamw_8bit(1e-2, block_size=32), FSDP, None),
        "muon": (gc.muon(1e-2, param_labels=gc.muon_labels), FSDP, None),
    }


# ---------------------------------------------------------------------------------------------
# Placement


def global_mesh(kind="auto"):
    types = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[kind]
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(types,))


def host_tree(seed):
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in SHAPES.items()}


def place(tree, mesh, specs):
    return {n: jax.device_put(x, NamedSharding(mesh, specs[n])) for n, x in tree.items()}


def on_first_device(tree):
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.local_devices()[0]), tree)


def gathered(tree):
    """Every leaf's global value, as numpy, in every process."""
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def grads_at(step, where):
    return where(host_tree(1000 + step))


def step_fn(tx, params):
    """The jitted training step, its outputs laid out as its inputs: the parameters as they
    are, the state as ``gc.state_shardings`` says (what a multi-host step states; left to
    itself XLA may, for one, return zero1's parameters sharded instead of replicated)."""

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return gc.apply_updates(params, updates), state

    shardings = (jax.tree.map(lambda x: x.sharding, params), gc.state_shardings(tx, params))
    return jax.jit(step, out_shardings=shardings)


def run(step, params, state, where, first, last):
    for k in range(first, last):
        params, state = step(params, state, grads_at(k, where))
    return params, state


def assert_close(actual, expected, what):
    # Global reductions (norms, means, Muon's matmuls) are summed shard by shard and then
    # across devices: a re-association, so agreement is to fp32 rounding accumulated over the
    # steps, not bit for bit.
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)
    ):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(e, np.float64),
            rtol=2e-5,
            atol=2e-6,
            err_msg=f"{what} at {jax.tree_util.keystr(path)}",
        )


def assert_equal(actual, expected, what):
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)
    ):
        assert np.array_equal(np.asarray(a), np.asarray(e)), (
            f"{what} at {jax.tree_util.keystr(path)}: max difference "
            f"{np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e, np.float64)))}"
        )


def leaf_problems(tree, mesh):
    """Paths of the leaves that are not global arrays on ``mesh`` (host-local, uncommitted)."""
    bad = []
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        sharding = x.sharding
        if not (x.committed and isinstance(sharding, NamedSharding) and sharding.mesh == mesh):
            bad.append(f"{jax.tree_util.keystr(path)}: {sharding} committed={x.committed}")
    return bad


def collectives(hlo: str) -> list[tuple[str, str]]:
    """``(op, result shape)`` of every collective in a compiled HLO text, one per array."""
    ops = "all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"
    found = []
    for m in re.finditer(rf"=\s*(\([^)]*\)|\S+)\s+({ops})(?:-start)?\(", hlo):
        for shape in re.findall(r"\w+\[[\d,]*\]", m.group(1)):
            found.append((m.group(2), shape))
    return found


# ---------------------------------------------------------------------------------------------
# The checks

CHECKS: dict = {}


def check(name, phases=("train",)):
    def register(fn):
        for phase in phases:
            CHECKS[phase, name] = fn
        return fn

    return register


@check("processes_and_devices")
def _():
    assert jax.process_count() == 2, jax.process_count()
    assert jax.device_count() == 2 * jax.local_device_count(), jax.devices()


for _name in ("adamw", "clip_adamw", "adafactor", "zero1", "adamw_8bit", "muon"):

    @check(f"init_commits_every_leaf_to_the_mesh[{_name}]")
    def _(name=_name):
        # cases 1 and 2: the default init next to parameters on a global mesh
        mesh = global_mesh()
        tx, layout, _ = optimizers(mesh)[name]
        state = tx.init(place(host_tree(0), mesh, layout))
        bad = leaf_problems(state, mesh)
        assert not bad, "; ".join(bad)
        assert sum(gc.per_process_bytes(state).values()) > 0

    @check(f"twenty_steps_match_one_process[{_name}]")
    def _(name=_name):
        mesh = global_mesh()
        tx, layout, reference = optimizers(mesh)[name]
        where = lambda t: place(t, mesh, layout)
        params = where(host_tree(0))
        state = tx.init(params)
        step = step_fn(tx, params)
        gc.save_state(WORKDIR / f"{name}-0", {"params": params, "state": state})
        params, state = run(step, params, state, where, 0, SAVE_AT)
        gc.save_state(WORKDIR / f"{name}-{SAVE_AT}", {"params": params, "state": state})
        params, state = run(step, params, state, where, SAVE_AT, STEPS)
        assert step._cache_size() == 1, f"the step compiled {step._cache_size()} times"
        final = gathered(params)
        if jax.process_index() == 0:
            np.savez(WORKDIR / f"{name}-final.npz", **final)

        reference = reference or tx
        params1 = on_first_device(host_tree(0))
        params1, _ = run(
            step_fn(reference, params1), params1, reference.init(params1), on_first_device, 0, STEPS
        )
        assert_close(final, params1, f"params after {STEPS} steps")

    @check(f"checkpoint_continues_bit_identically[{_name}]", phases=("resume",))
    def _(name=_name):
        mesh = global_mesh()
        tx, layout, _ = optimizers(mesh)[name]
        where = lambda t: place(t, mesh, layout)
        params = abstract(where(host_tree(0)))
        like = {"params": params, "state": gc.abstract_state(tx, params)}
        with np.load(WORKDIR / f"{name}-final.npz") as f:
            final = {n: f[n] for n in f.files}
        step = step_fn(tx, params)
        for start in (0, SAVE_AT):
            restored = gc.restore_state(WORKDIR / f"{name}-{start}", like)
            p, _ = run(step, restored["params"], restored["state"], where, start, STEPS)
            assert_equal(gathered(p), final, f"resumed at step {start}")
        assert step._cache_size() == 1, f"the step compiled {step._cache_size()} times"


@check("init_sharded_gives_exactly_the_asked_shardings")
def _():
    # case 5: two parameters of one shape, one sharded and one replicated; case 6: zero1
    mesh = global_mesh()
    params = place(
        {"a": np.ones((8, 8), np.float32), "b": np.ones((8, 8), np.float32)},
        mesh,
        {"a": P("data"), "b": P()},
    )
    for tx in (gc.adamw(1e-2), gc.zero1(gc.adamw(1e-2), mesh)):
        expected = gc.state_shardings(tx, params)
        for s in jax.tree.leaves(expected):
            assert s.spec == P(*s.spec) and (not s.spec or s.spec[-1] is not None), s
        state = gc.init_sharded(tx, params)
        got = jax.tree.map(lambda x: x.sharding, state)
        assert got == expected, f"{tx.name}: {got} != {expected}"
        mu = gc.tree_get(expected, "mu")
        if tx.name == "adamw":
            assert mu["a"].spec == P("data") and mu["b"].spec == P(), mu
        step = step_fn(tx, params)
        p, s = params, state
        for _ in range(3):
            p, s = step(p, s, p)
        assert step._cache_size() == 1, f"{tx.name}: compiled {step._cache_size()} times"


def _tree_set_case(mesh_of):
    """Steps, a ``tree_set`` of the learning rate, steps again: one compiled program; the new
    value keeps its leaf's sharding and dtype, takes effect, and the state still saves."""
    mesh = mesh_of()
    tx = gc.with_live_hyperparams(gc.adamw(1e-2))
    if mesh is None:
        params = on_first_device(host_tree(0))
    else:
        params = place(host_tree(0), mesh, FSDP)
    step = step_fn(tx, params)
    params, state = step(params, tx.init(params), params)
    old = gc.tree_get(state, "learning_rate")
    state = gc.tree_set(state, learning_rate=1e-4)
    new = gc.tree_get(state, "learning_rate")
    assert new.sharding == old.sharding and new.dtype == old.dtype, (new.sharding, old.sharding)
    assert float(new.addressable_data(0)) == np.float32(1e-4), new
    params, state = step(params, state, params)
    assert step._cache_size() == 1, f"the step compiled {step._cache_size()} times"
    if mesh is not None and not params["w"].is_fully_addressable:
        gc.save_state(WORKDIR / "tree_set", gc.tree_set(state, learning_rate=1e-3))


@check("tree_set_never_recompiles[one_device]")
def _():
    _tree_set_case(lambda: None)


@check("tree_set_never_recompiles[mesh_of_this_process]")
def _():
    _tree_set_case(
        lambda: jax.make_mesh(
            (jax.local_device_count(),),
            ("data",),
            axis_types=(AxisType.Auto,),
            devices=jax.local_devices(),
        )
    )


@check("tree_set_never_recompiles[across_processes]")
def _():
    _tree_set_case(global_mesh)


@check("save_state_writes_and_restores_a_state_across_processes")
def _():
    mesh = global_mesh()
    tx = gc.zero1(gc.adamw(1e-2), mesh)
    params = place(host_tree(0), mesh, REPLICATED)
    _, state = step_fn(tx, params)(params, tx.init(params), params)
    assert not jax.tree.leaves(state)[1].is_fully_addressable
    path = WORKDIR / "zero1-state"
    gc.save_state(path, state)
    assert path.is_dir(), "a state across processes is saved with orbax, as a directory"
    restored = gc.restore_state(path, gc.abstract_state(tx, params))
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, state)
    assert_equal(gathered(restored), gathered(state), "restored state")


@check("state_shardings_keeps_a_memory_kind")
def _():
    mesh = global_mesh()
    params = place(host_tree(0), mesh, FSDP)
    tx = gc.adamw(1e-2)
    shardings = gc.state_shardings(tx, params, memory_kind="pinned_host")
    kinds = {s.memory_kind for s in jax.tree.leaves(shardings)}
    assert kinds == {"pinned_host"}, kinds
    state = gc.init_sharded(tx, params, memory_kind="pinned_host")
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state)} == {"pinned_host"}
    assert gc.per_device_bytes(state, memory_kind="device") == {}
    abstract_kinds = {
        x.sharding.memory_kind
        for x in jax.tree.leaves(gc.abstract_state(tx, params, memory_kind="pinned_host"))
    }
    assert abstract_kinds == {"pinned_host"}, abstract_kinds


@check("zero1_offload_keeps_state_on_host_and_matches_bit_for_bit")
def _():
    mesh = global_mesh()
    where = lambda t: place(t, mesh, REPLICATED)
    results = {}
    for offload in (False, True):
        tx = gc.zero1(gc.adamw(1e-2), mesh, offload=offload)
        params = where(host_tree(0))
        state = tx.init(params)
        step = step_fn(tx, params)
        params, state = run(step, params, state, where, 0, 5)
        kinds = {x.sharding.memory_kind for x in jax.tree.leaves(state)}
        expected = {"pinned_host"} if offload else {"device"}
        assert kinds == expected, (offload, kinds)
        assert jax.tree.map(lambda x: x.sharding, state) == gc.state_shardings(tx, params)
        assert step._cache_size() == 1, f"offload={offload}: compiled {step._cache_size()} times"
        hlo = step.lower(params, state, params).compile().as_text()
        entry = re.search(r"entry_computation_layout=\{\((.*?)\)->", hlo).group(1)
        # host memory is memory space 5 in XLA's layouts: S(5)
        assert ("S(5)" in entry) == offload, entry
        results[offload] = gathered((params, state))
    assert_equal(results[True], results[False], "offloaded run")


@check("per_device_and_per_process_bytes_see_every_process")
def _():
    mesh = global_mesh()
    tx = gc.zero1(gc.adamw(1e-2), mesh)
    state = tx.init(place(host_tree(0), mesh, REPLICATED))
    moments = {f: {n: gc.tree_get(state, f)[n] for n in ("w", "emb", "b")} for f in ("mu", "nu")}
    per_device = gc.per_device_bytes(moments)
    n = jax.device_count()
    assert set(per_device) == set(jax.devices()), per_device
    whole = 2 * 4 * sum(int(np.prod(SHAPES[k])) for k in ("w", "emb", "b"))
    assert all(b * n == whole for b in per_device.values()), (per_device, whole)
    per_process = gc.per_process_bytes(moments)
    assert per_process == {0: whole // 2, 1: whole // 2}, per_process
    # what each process reads from the shardings for the other's devices is what that process
    # measures on its own shards
    mine = np.array(
        [
            sum(
                s.data.nbytes
                for x in jax.tree.leaves(moments)
                for s in x.addressable_shards
                if s.device == d
            )
            for d in jax.local_devices()
        ]
    )
    everyone = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
    ordered = [per_device[d] for p in (0, 1) for d in jax.devices() if d.process_index == p]
    assert list(everyone) == ordered, (everyone, ordered)


@check("zero1_step_gathers_each_update_once_and_reduces_each_gradient_once")
def _():
    mesh = global_mesh()
    tx = gc.zero1(gc.adamw(1e-2), mesh)
    params = place(host_tree(0), mesh, REPLICATED)
    n = jax.device_count()
    batch = jax.device_put(
        np.random.default_rng(5).standard_normal((4 * n, 16)).astype(np.float32),
        NamedSharding(mesh, P("data")),
    )

    def loss(params, x):
        h = jnp.tanh(x @ params["w"] + params["b"])
        return jnp.mean((h @ params["emb"]) ** 2) + jnp.mean(x[:, :5] * params["odd"])

    @functools.partial(
        jax.jit,
        out_shardings=(jax.tree.map(lambda x: x.sharding, params), gc.state_shardings(tx, params)),
    )
    def step(params, state, x):
        updates, state = tx.update(jax.grad(loss)(params, x), state, params)
        return gc.apply_updates(params, updates), state

    hlo = step.lower(params, tx.init(params), batch).compile().as_text()
    found = collectives(hlo)
    gathers = sorted(s for op, s in found if op == "all-gather")
    # ZeRO-1: one all-gather per split parameter (odd stays whole), of the parameter's shape
    expected = sorted(f"f32[{','.join(map(str, SHAPES[k]))}]" for k in ("w", "emb", "b"))
    assert gathers == expected, found
    # and each gradient reduced over the data axis once: all-reduced whole, or reduce-scattered
    # to the slice this device updates (told apart by their sizes, which differ here; XLA may
    # reduce a matrix's gradient transposed)
    sizes = [
        int(np.prod([int(d) for d in re.findall(r"\d+", s.split("[")[1])]))
        for op, s in found
        if op in ("all-reduce", "reduce-scatter")
    ]
    wanted = {k: int(np.prod(SHAPES[k])) for k in SHAPES}
    for k, size in wanted.items():
        split = k != "odd"
        hits = sizes.count(size) + (sizes.count(size // n) if split else 0)
        assert hits == 1, (k, found)
    assert len(sizes) == len(wanted), found


@check("readme_many_hosts_example_runs")
def _():
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Training on many hosts", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    initialize = jax.distributed.initialize
    calls = []
    # the harness has initialized this process already; the example's call is recorded
    jax.distributed.initialize = lambda *args, **kwargs: calls.append((args, kwargs))
    old_argv, sys.argv = sys.argv, ["train.py", str(jax.process_index())]
    old_cwd = os.getcwd()
    os.chdir(WORKDIR)  # where the example's checkpoint goes
    try:
        namespace = {"__name__": "readme_example"}
        exec(compile(code, "README.md#training-on-many-hosts", "exec"), namespace)
    finally:
        jax.distributed.initialize = initialize
        sys.argv = old_argv
        os.chdir(old_cwd)
    assert len(calls) == 1, calls
    assert namespace["losses"][-1] < namespace["losses"][0], namespace["losses"]
    assert (WORKDIR / "ckpt").is_dir()
    assert all(x.sharding.mesh == namespace["mesh"] for x in jax.tree.leaves(namespace["state"]))


def main(phase, names) -> int:
    registered = [n for p, n in CHECKS if p == phase]
    if jax.process_index() == 0:
        print(json.dumps({"registered": registered}), flush=True)
    names = names or registered
    failed = 0
    for name in names:
        start = time.perf_counter()
        try:
            CHECKS[phase, name]()
            result = {"check": name, "ok": True, "detail": ""}
        except Exception:
            failed += 1
            result = {"check": name, "ok": False, "detail": traceback.format_exc()}
        seconds = round(time.perf_counter() - start, 2)
        print(
            json.dumps({**result, "process": jax.process_index(), "seconds": seconds}), flush=True
        )
    return 1 if failed else 0


if __name__ == "__main__":
    code = main(PHASE, SELECTED)
    jax.distributed.shutdown()
    sys.exit(code)
