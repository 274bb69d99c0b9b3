"""Optimizer state on a device mesh.

The sharded behaviour runs on 8 simulated CPU devices in one subprocess
(tests/sharded_checks.py: the device count is fixed when JAX starts, and the rest of the suite
keeps one device); each of its checks is reported here as its own test. The rules that need no
devices are tested in process.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradchain as gc
from gradchain.sharding import _zero1_spec, derive_shardings

HERE = pathlib.Path(__file__).resolve().parent

BASE_OPTIMIZERS = [
    "adamw",
    "sgd_momentum",
    "clip_adamw",
    "clip_adamw_live",
    "flatten_clip_adamw",
    "factored",
] + (["adafactor"] if hasattr(gc, "adafactor") else [])
# Optimizers that reduce across coordinates in other ways (tests/sharded_checks.py: REDUCING)
REDUCING = ["sophia", "prodigy", "dadapt_adamw", "galore", "muon"]
ON_MESH = BASE_OPTIMIZERS + REDUCING + ["adamw-explicit", "galore-explicit"]
ZERO1 = ["adamw", "sgd_momentum", "clip_adamw", "adamw-explicit"]
# The names tests/sharded_checks.py registers; the last test below keeps the two lists equal.
SHARDED_CHECKS = [
    "eight_devices",
    "moments_follow_their_param",
    "factored_statistics_follow_kept_axes",
    "global_norm_is_global",
    "zero1_state_bytes_are_an_eighth",
    "sharding_page_example_runs",
    *(
        f"8bit_{what}[{kind}]"
        for what in ("update_matches_single_device", "state_split_by_blocks")
        for kind in ("auto", "explicit")
    ),
    "8bit_zero1_splits_blocks_along_data",
    "checkpoint_restores_into_state_layout[mesh]",
    "checkpoint_restores_into_state_layout[zero1]",
    *(f"init_{how}_follows_params[{o}]" for how in ("eager", "jit") for o in ON_MESH),
    # Prodigy's init copies the parameters' values: not from shapes
    *(f"init_abstract_follows_params[{o}]" for o in ON_MESH if o != "prodigy"),
    *(
        f"sharded_update_{what}[{o}]"
        for what in ("matches_single_device", "keeps_state_layout")
        for o in ON_MESH
    ),
    # GaLore's SVD and Muon's Newton-Schulz iteration gather matrices by design
    *(
        f"sharded_update_gathers_nothing[{o}]"
        for o in ON_MESH
        if o.partition("-")[0] not in ("galore", "muon")
    ),
    *(f"galore_gathers_gradients_for_its_svd_never_its_state[{k}]" for k in ("auto", "explicit")),
    "galore_eager_update_keeps_state_layout",
    *(f"galore_update_keeps_a_replicated_state_replicated[{how}]" for how in ("jit", "eager")),
    *(f"zero1_matches_single_device[{o}]" for o in ZERO1),
    *(f"zero1_state_split_along_data_params_replicated[{o}]" for o in ZERO1),
    *(f"zero1_gathers_each_update_once[{o}]" for o in ("adamw", "clip_adamw")),
    *(
        f"zero1_{what}[{kind}]"
        for what in (
            "init_jit_and_abstract_split_state",
            "adds_data_axis_to_tensor_parallel_layout",
        )
        for kind in ("auto", "explicit")
    ),
]


def _run_checks() -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharded_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["check"]] = r
    return {"results": results, "returncode": proc.returncode, "stderr": proc.stderr[-4000:]}


@pytest.fixture(scope="session")
def sharded(tmp_path_factory, worker_id):
    """The checks' results, computed once per session even when pytest-xdist splits it."""
    if worker_id == "master":
        return _run_checks()
    shared = tmp_path_factory.getbasetemp().parent  # the session's directory, shared by workers
    out = shared / "sharded_checks.json"
    with open(shared / "sharded_checks.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            out.write_text(json.dumps(_run_checks()))
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def worker_id(request):
    return getattr(request.config, "workerinput", {}).get("workerid", "master")


@pytest.mark.parametrize("name", SHARDED_CHECKS)
def test_on_eight_devices(sharded, name):
    result = sharded["results"].get(name)
    assert result is not None, (
        f"check {name} did not report (exit code {sharded['returncode']}):\n{sharded['stderr']}"
    )
    assert result["ok"], result["detail"]


def test_every_check_on_eight_devices_is_reported_here(sharded):
    assert sorted(sharded["results"]) == sorted(SHARDED_CHECKS)


# ---------------------------------------------------------------------------------------------
# Rules that need no devices

# On a 1 x 1 mesh every spec is as valid as on a large one, so the rules are checked here by
# comparing specs.
# Auto axes: specs come without trailing Nones (on Explicit axes, one entry per array axis).
MESH11 = jax.make_mesh((1, 1), ("data", "model"), axis_types=(AxisType.Auto,) * 2)


@pytest.mark.parametrize(
    "field, shape, expected",
    [
        ("mu", (16, 8), P("data", "model")),  # a moment: the parameter's own sharding
        ("v_row", (16,), P("data")),  # one axis reduced: the kept axis's sharding
        ("v_col", (8,), P("model")),
        ("stat", (16, 1), P("data")),  # keepdims: the reduced axis is replicated
        ("stat", (1, 8), P(None, "model")),
        ("v", (1,), P()),  # a placeholder
        ("count", (), P()),
        ("stat", (4, 4), P()),  # unrelated shape
    ],
)
def test_state_leaf_follows_its_param(field, shape, expected):
    sharding = NamedSharding(MESH11, P("data", "model"))
    state = {field: {"w": jax.ShapeDtypeStruct(shape, jnp.float32)}}
    got = derive_shardings(
        state, jax.tree.structure({"w": 0}), [((16, 8), sharding)], NamedSharding(MESH11, P())
    )
    assert got[field]["w"].spec == expected


@pytest.mark.parametrize(
    "field, expected",
    [("v_row", P("data")), ("exp_avg_sq_row", P("data")), ("v_col", P("model")), ("stat", P())],
)
def test_square_matrix_statistic_is_told_by_its_field_name(field, expected):
    # (8, 8) -> (8,) could have reduced either axis; a row statistic keeps the rows
    sharding = NamedSharding(MESH11, P("data", "model"))
    state = {field: {"w": jax.ShapeDtypeStruct((8,), jnp.float32)}}
    got = derive_shardings(
        state, jax.tree.structure({"w": 0}), [((8, 8), sharding)], NamedSharding(MESH11, P())
    )
    assert got[field]["w"].spec == expected


def test_a_single_square_param_tells_rows_from_columns_too():
    # one array as the parameters: the whole state is matched against it
    sharding = NamedSharding(MESH11, P("data", "model"))
    stat = jax.ShapeDtypeStruct((8,), jnp.float32)
    got = derive_shardings(
        {"v_row": stat, "v_col": stat},
        jax.tree.structure(0),
        [((8, 8), sharding)],
        NamedSharding(MESH11, P()),
    )
    assert (got["v_row"].spec, got["v_col"].spec) == (P("data"), P("model"))


def test_optax_states_inside_chains_follow_too():
    params = {
        "w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=NamedSharding(MESH11, P("model"))),
        "b": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=NamedSharding(MESH11, P())),
    }
    tx = gc.chain(gc.clip_by_global_norm(1.0), optax.adam(1e-3))
    shardings = gc.state_shardings(tx, params)
    adam_state = shardings[1][0]
    assert adam_state.mu["w"].spec == adam_state.nu["w"].spec == P("model")
    assert adam_state.count.spec == P()


MESH8 = AbstractMesh((8,), ("data",))
MESH42 = AbstractMesh((4, 2), ("data", "model"))


@pytest.mark.parametrize(
    "shape, spec, mesh, expected",
    [
        ((16, 8), (), MESH8, P("data", None)),  # the dimension with the most elements
        ((8, 24), (), MESH8, P(None, "data")),
        ((8,), (), MESH8, P("data")),
        ((5,), (), MESH8, P(None)),  # nothing divides evenly: stays replicated
        ((), (), MESH8, P()),
        ((12, 16), (None, "model"), MESH42, P("data", "model")),  # 12 vs 16/2 elements
        ((16, 12), ("model", None), MESH42, P("model", "data")),  # 16/2 vs 12
        ((16, 16), ("model", None), MESH42, P("model", "data")),
        ((8, 8), ("data", None), MESH42, P("data", None)),  # already split along data
        ((32, 2), ("model", None), MESH42, P(("model", "data"), None)),  # only dim 0 divides
    ],
)
def test_zero1_adds_the_data_axis_to_the_largest_even_dimension(shape, spec, mesh, expected):
    got = _zero1_spec(spec, shape, mesh, ("data",))
    assert tuple(got) + (None,) * (len(shape) - len(got)) == tuple(expected) + (None,) * (
        len(shape) - len(expected)
    )


def test_zero1_names_an_axis_missing_from_the_mesh():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="axis 'batch' is not an axis of the mesh"):
        gc.zero1(gc.adamw(1e-3), mesh, axis="batch")


def test_zero1_rejects_a_mesh_that_is_not_one():
    with pytest.raises(TypeError, match=r"mesh must be a jax\.sharding\.Mesh"):
        gc.zero1(gc.adamw(1e-3), mesh=("data",))


def test_zero1_reads_hyperparameters_through():
    tx = gc.zero1(gc.adamw(1e-3, b1=0.8), jax.make_mesh((1,), ("data",)))
    assert (tx.b1, tx.learning_rate) == (0.8, 1e-3)
    assert repr(tx).startswith("zero1(inner=adamw(learning_rate=0.001")


def test_single_device_state_stays_on_its_device():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    shardings = gc.state_shardings(gc.adamw(1e-3), params)
    device = params["w"].sharding
    assert all(s == device for s in jax.tree.leaves(shardings))


def test_state_shardings_asks_for_a_mesh_when_the_params_carry_none():
    params = {"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)}
    with pytest.raises(ValueError, match="pass mesh="):
        gc.state_shardings(gc.adamw(1e-3), params)
    mesh = jax.make_mesh((1,), ("data",))
    shardings = gc.state_shardings(gc.adamw(1e-3), params, mesh=mesh)
    assert all(s.mesh == mesh and s.is_fully_replicated for s in jax.tree.leaves(shardings))


def test_abstract_state_is_shaped_like_the_state():
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2, jnp.bfloat16)}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3))
    abstract = gc.abstract_state(tx, params)
    state = tx.init(params)
    assert jax.tree.structure(abstract) == jax.tree.structure(state)
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(state)):
        assert (a.shape, a.dtype, a.sharding) == (s.shape, s.dtype, s.sharding)


def test_per_device_bytes_counts_every_leaf():
    tree = {"a": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(5, jnp.bfloat16)}
    assert gc.per_device_bytes(tree) == {jax.devices()[0]: 3 * 2 * 4 + 5 * 2}


def _spec(sharding, ndim):
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


G = gc.GaLoreDimensionNumbers


@pytest.mark.parametrize(
    "shape, spec, dims, side, projector, moment",
    [
        # left (16 x 8, larger side reduced): P is 16 x r along the rows, moments r x 8
        ((16, 8), P("data", "model"), None, "larger", ("data", None), (None, "model")),
        # right: P is 8 x r along the columns, moments 16 x r
        ((16, 8), P("data", "model"), None, "smaller", ("model", None), ("data", None)),
        # a square matrix: its shapes cannot tell the sides apart, the state's layout can
        ((8, 8), P("data", "model"), None, "larger", ("data", None), (None, "model")),
        ((8, 8), P("data", "model"), None, "smaller", ("model", None), ("data", None)),
        # batch axes keep their sharding
        (
            (4, 16, 8),
            P("data", None, "model"),
            G(1, 2),
            "larger",
            ("data", None, None),
            ("data", None, "model"),
        ),
        # merged columns (4 x 6 = 24) keep the sharding of their first axis...
        (
            (8, 4, 6),
            P("data", "model", None),
            G(0, (1, 2)),
            "larger",
            ("model", None),
            ("data", None),
        ),
        # ...and are replicated when a later axis of the group is sharded
        ((8, 4, 6), P("data", None, "model"), G(0, (1, 2)), "larger", (None, None), ("data", None)),
    ],
)
def test_galore_state_runs_along_the_parameter_axes_it_keeps(
    shape, spec, dims, side, projector, moment
):
    params = {
        "w": jax.ShapeDtypeStruct(shape, jnp.float32, sharding=NamedSharding(MESH11, spec)),
        "b": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(MESH11, P("model"))),
    }
    tx = gc.galore(1e-3, rank=2, weight_dimension_numbers=dims, projected_dim=side)
    shardings = gc.state_shardings(tx, params)
    shapes = jax.eval_shape(tx.init, params)
    for field, expected in (("projector", projector), ("mu", moment), ("nu", moment)):
        got = gc.tree_get(shardings, field)["w"]
        assert _spec(got, len(expected)) == expected, (field, got)
        assert gc.tree_get(shapes, field)["w"].ndim == len(expected)
    assert _spec(gc.tree_get(shardings, "mu")["b"], 1) == ("model",)  # not projected
    assert shardings.scale_by_galore.count.spec == P()


def test_galore_state_of_a_single_matrix_follows_it():
    w = jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=NamedSharding(MESH11, P("data")))
    shardings = gc.state_shardings(gc.scale_by_galore(rank=2), w)
    assert _spec(shardings.projector, 2) == ("data", None)
    assert _spec(shardings.base_optimizer_state.mu, 2) == (None, None)


def test_galore_state_inside_masked_follows_the_parameters_it_sees():
    sharding = NamedSharding(MESH11, P("data", "model"))
    params = {
        "w": jax.ShapeDtypeStruct((16, 8), jnp.float32, sharding=sharding),
        "v": jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=sharding),
    }
    tx = gc.masked(gc.galore(1e-3, rank=2), {"w": False, "v": True})
    shardings = gc.state_shardings(tx, params)
    assert jax.tree.structure(shardings) == jax.tree.structure(jax.eval_shape(tx.init, params))
    # "v" (8 x 16) is projected on the right: P is 16 x r along its columns, moments 8 x r
    assert _spec(gc.tree_get(shardings, "projector")["v"], 2) == ("model", None)
    assert _spec(gc.tree_get(shardings, "mu")["v"], 2) == ("data", None)


def test_an_empty_state_stays_empty_in_the_shardings():
    params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32)}
    tx = gc.chain(gc.identity(), gc.adam(1e-3))
    shardings = gc.state_shardings(tx, params, mesh=MESH11)
    assert jax.tree.structure(shardings) == jax.tree.structure(jax.eval_shape(tx.init, params))


def test_zeros_like_reduced_drops_the_axis():
    p = jax.ShapeDtypeStruct((4, 3, 2), jnp.bfloat16)
    from gradchain.numerics import zeros_like_reduced

    assert zeros_like_reduced(p, 1).shape == (4, 2)
    assert zeros_like_reduced(p, -1, jnp.float32, keepdims=True).shape == (4, 3, 1)
    assert zeros_like_reduced(p, 0).dtype == jnp.bfloat16
    np.testing.assert_array_equal(jax.jit(lambda x: zeros_like_reduced(x, 0))(jnp.ones((4, 3))), 0)


# ---------------------------------------------------------------------------------------------
# Placement on one process (tests/test_multihost.py runs the same across processes)


def test_init_commits_scalars_to_the_params_device():
    params = jax.device_put({"w": jnp.ones((3, 2))}, jax.devices()[0])
    state = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3)).init(params)
    assert all(x.committed for x in jax.tree.leaves(state))
    assert {x.sharding for x in jax.tree.leaves(state)} == {params["w"].sharding}


def test_init_leaves_the_state_of_uncommitted_params_uncommitted():
    state = gc.adamw(1e-3).init({"w": jnp.ones((3, 2))})
    assert not any(x.committed for x in jax.tree.leaves(state))


def test_init_commits_scalars_to_the_params_mesh():
    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P("data")))}
    state = gc.with_live_hyperparams(gc.adamw(1e-3)).init(params)
    for x in (gc.tree_get(state, "learning_rate"), gc.tree_get(state.scale_by_adam, "count")):
        assert x.committed and x.sharding == NamedSharding(mesh, P())


def _placed(params, placed):
    """``params`` uncommitted, on one device, or on a 1-device mesh of Auto or Explicit axes,
    in the spec form jit returns there (``P("data", None)`` on Explicit axes)."""
    if placed == "device":
        return jax.device_put(params, jax.devices()[0])
    if placed.startswith("mesh"):
        kind = AxisType.Explicit if placed == "mesh-explicit" else AxisType.Auto
        mesh = jax.make_mesh((1,), ("data",), axis_types=(kind,))
        spec = P("data", None) if kind == AxisType.Explicit else P("data")
        return jax.device_put(params, NamedSharding(mesh, spec))
    return params


PLACED = ["uncommitted", "device", "mesh-auto", "mesh-explicit"]


@pytest.mark.parametrize("placed", PLACED)
def test_tree_set_keeps_dtype_and_sharding_and_never_recompiles(placed):
    params = _placed({"w": jnp.ones((4, 2))}, placed)
    tx = gc.with_live_hyperparams(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2)))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return gc.apply_updates(params, updates), state

    params, state = step(params, tx.init(params))
    old = gc.tree_get(state, "learning_rate")
    state = gc.tree_set(state, learning_rate=1e-4)
    new = gc.tree_get(state, "learning_rate")
    assert (new.dtype, new.sharding, new.committed) == (old.dtype, old.sharding, old.committed)
    assert float(new) == np.float32(1e-4)
    step(params, state)
    assert step._cache_size() == 1


def test_tree_set_of_a_state_field_keeps_its_dtype():
    state = gc.tree_set(gc.adamw(1e-2).init({"w": jnp.ones(3)}), count=7)
    assert gc.tree_get(state.scale_by_adam, "count").dtype == jnp.int32


@pytest.mark.parametrize("kind", [AxisType.Auto, AxisType.Explicit])
def test_specs_take_the_form_jit_returns(kind):
    # P("data", None) and P("data") are different jit cache keys: jit returns the short form on
    # Auto axes, one entry per array axis on Explicit ones
    mesh = jax.make_mesh((1,), ("data",), axis_types=(kind,))
    params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=NamedSharding(mesh, P()))}
    for tx in (gc.zero1(gc.adamw(1e-3), mesh), gc.adafactor(1e-3, min_dim_size_to_factor=1)):
        state = jax.eval_shape(tx.init, params)
        for s, x in zip(jax.tree.leaves(gc.state_shardings(tx, params)), jax.tree.leaves(state)):
            if kind == AxisType.Auto:
                assert not s.spec or s.spec[-1] is not None, (tx.name, s)
            else:
                assert len(s.spec) == x.ndim, (tx.name, s, x.shape)


@pytest.mark.parametrize("how", ["eager", "init_sharded"])
def test_init_lays_the_state_out_as_the_step_returns_it(how):
    # Explicit axes: on a one-device mesh of Auto axes XLA returns every output replicated,
    # whatever the constraints; tests/test_multihost.py checks Auto axes on real meshes.
    mesh_params = _placed({"w": jnp.ones((4, 4))}, "mesh-explicit")
    tx = gc.zero1(
        gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2)), mesh_params["w"].sharding.mesh
    )
    params = jax.device_put(mesh_params, NamedSharding(mesh_params["w"].sharding.mesh, P()))
    state = tx.init(params) if how == "eager" else gc.init_sharded(tx, params)
    assert jax.tree.map(lambda x: x.sharding, state) == gc.state_shardings(tx, params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(params, state, params)
        return gc.apply_updates(params, updates), state

    _, stepped = step(params, state)
    assert jax.tree.map(lambda x: x.sharding, stepped) == gc.state_shardings(tx, params)


def test_state_shardings_puts_the_state_in_the_memory_asked():
    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": jax.device_put(jnp.ones((4, 2)), NamedSharding(mesh, P()))}
    for tx, kind in ((gc.adamw(1e-3), "pinned_host"), (gc.zero1(gc.adamw(1e-3), mesh), None)):
        shardings = gc.state_shardings(tx, params, memory_kind=kind)
        want = kind or "device"
        assert {s.memory_kind for s in jax.tree.leaves(shardings)} == {want}
    offloaded = gc.zero1(gc.adamw(1e-3), mesh, offload=True)
    kinds = {s.memory_kind for s in jax.tree.leaves(gc.state_shardings(offloaded, params))}
    assert kinds == {"pinned_host"}


def test_zero1_offload_must_be_a_bool_and_keyword():
    mesh = jax.make_mesh((1,), ("data",))
    with pytest.raises(ValueError, match="offload must be a bool"):
        gc.zero1(gc.adamw(1e-3), mesh, offload=1)
    assert "offload=True" in repr(gc.zero1(gc.adamw(1e-3), mesh, offload=True))


def test_per_process_bytes_sums_the_devices_of_each_process():
    tree = {"a": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(5, jnp.bfloat16)}
    assert gc.per_process_bytes(tree) == {jax.process_index(): 3 * 2 * 4 + 5 * 2}
    assert gc.per_device_bytes(tree, memory_kind="pinned_host") == {}


def test_per_device_bytes_reads_abstract_state_too():
    mesh = jax.make_mesh((1,), ("data",))
    params = {"w": jax.ShapeDtypeStruct((4, 2), jnp.float32, sharding=NamedSharding(mesh, P()))}
    tx = gc.adamw(1e-3)
    abstract = gc.per_device_bytes(gc.abstract_state(tx, params))
    concrete = gc.per_device_bytes(gc.init_sharded(tx, jax.tree.map(jnp.ones_like, params)))
    assert abstract == concrete
