"""gradchain on a mesh of 8 simulated CPU devices: the checks tests/test_sharding.py runs.

They run in their own process, because the device count is fixed when JAX starts and the rest of
the suite runs on one device::

    python tests/sharded_checks.py              # every check
    python tests/sharded_checks.py NAME ...     # some of them

Each check prints one JSON line ``{"check": NAME, "ok": bool, "detail": str}``.

Two meshes are used: ``mesh`` (4 x 2, axes "data" and "model") holds parameters sharded along
both axes, like a model split by tensor and data parallelism; ``mesh8`` (8, axis "data") holds
replicated parameters, as in plain data parallelism, for ZeRO-1. The single-device reference of
every sharded run is the same computation with every array on device 0.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import functools
import json
import pathlib
import re
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import gradchain as gc
from gradchain.base import (
    GradientTransformation,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.numerics import (
    ema,
    init_count,
    safe_increment,
    zeros_like_param,
    zeros_like_reduced,
)

jax.config.update("jax_numpy_rank_promotion", "raise")

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 4


# ---------------------------------------------------------------------------------------------
# A factored second moment written for these checks: row and column statistics of matrices


@state_class
class FactoredState:
    count: jax.Array
    v_row: object
    v_col: object
    v: object
    hyperparams: dict


@transformation("factored_rms_for_checks", hyperparams=("decay",))
class FactoredRMS(GradientTransformation):
    """Adafactor's factored second moment (ALGORITHMS.md §4.1) with the last two axes factored:
    ``v_row = ema(mean(g^2, -1))``, ``v_col = ema(mean(g^2, -2))``, ``u = g / sqrt(v_hat)``."""

    decay: float = 0.8
    eps: float = 1e-30

    def init(self, params):
        def stats(p):
            if p.ndim < 2:
                return jnp.zeros((1,)), jnp.zeros((1,)), zeros_like_param(p)
            return zeros_like_reduced(p, -1), zeros_like_reduced(p, -2), jnp.zeros((1,))

        rows, cols, vs = tree_map_multi(stats, 3, params)
        return FactoredState(
            count=init_count(), v_row=rows, v_col=cols, v=vs, hyperparams=self.init_hyperparams()
        )

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        b = hp["decay"]

        def step(g, r, c, v):
            g2 = g * g + self.eps
            if g.ndim < 2:
                v = ema(v, g2, b)
                return g / jnp.sqrt(v), r, c, v
            r = ema(r, jnp.mean(g2, axis=-1), b)
            c = ema(c, jnp.mean(g2, axis=-2), b)
            v_hat = (r / jnp.mean(r, axis=-1, keepdims=True))[..., None] * c[..., None, :]
            return g / jnp.sqrt(v_hat), r, c, v

        out, rows, cols, vs = tree_map_multi(step, 4, updates, state.v_row, state.v_col, state.v)
        return out, FactoredState(
            count=safe_increment(state.count), v_row=rows, v_col=cols, v=vs, hyperparams=hp
        )


# ---------------------------------------------------------------------------------------------
# Meshes, parameters, optimizers


def make_mesh(shape, names, kind):
    types = {"auto": AxisType.Auto, "explicit": AxisType.Explicit}[kind]
    return jax.make_mesh(shape, names, axis_types=(types,) * len(names))


# The parameters of the 4 x 2 mesh and their layout: a matrix sharded along both axes, a square
# one (whose row and column statistics have the same shape), a vector along "model", a
# replicated scalar and a replicated odd-sized vector.
SPECS = {
    "w": P("data", "model"),
    "sq": P("data", "model"),
    "b": P("model"),
    "s": P(),
    "odd": P(),
}
SHAPES = {"w": (16, 8), "sq": (8, 8), "b": (8,), "s": (), "odd": (5,)}

# Data-parallel parameters of the 8-device mesh: every size divisible by 8 except "odd".
DP_SHAPES = {"w": (16, 8), "emb": (8, 24), "b": (8,), "odd": (5,)}


def host_params(shapes, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    return {n: np.asarray(jax.random.normal(k, s)) for k, (n, s) in zip(keys, shapes.items())}


def host_grads(shapes, steps=STEPS, seed=1):
    return [host_params(shapes, seed=seed + i) for i in range(steps)]


def place(tree, mesh, specs):
    return {n: jax.device_put(x, NamedSharding(mesh, specs[n])) for n, x in tree.items()}


def on_device0(tree):
    d0 = jax.devices()[0]
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), d0), tree)


OPTIMIZERS = {
    "adamw": lambda: gc.adamw(1e-2, weight_decay=0.1),
    "sgd_momentum": lambda: gc.sgd(1e-2, momentum=0.9),
    # the gradients have a global norm of about 15: every step is clipped
    "clip_adamw": lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2)),
    # Live: the state keeps the global norm each step measured.
    "clip_adamw_live": lambda: gc.with_live_hyperparams(
        gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2))
    ),
    "factored": lambda: gc.chain(FactoredRMS(), gc.scale(-1e-2)),
    # flat buffers: the sharded matrices and the "model"-sharded vector (at least 8 elements)
    # keep their own arrays and layouts, the replicated scalar and odd vector share one buffer
    "flatten_clip_adamw": lambda: gc.flatten(
        gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2, weight_decay=0.1)), min_size=8
    ),
}
if hasattr(gc, "adafactor"):
    OPTIMIZERS["adafactor"] = lambda: gc.adafactor(1e-2, min_dim_size_to_factor=4)

# Optimizers whose step reduces across coordinates in other ways: Sophia's clipping statistics
# and Hutchinson probe, Prodigy's and D-Adaptation's global estimates of d, GaLore's SVD and
# projections, Muon's Newton-Schulz matmuls. GaLore's rank 3 gives its projected moments (3 x 8)
# and projectors (16 x 3, 8 x 3) shapes that no piece of a gradient has, so that the HLO tells
# them apart.
REDUCING = {
    "sophia": lambda: gc.sophia(1e-2, update_interval=2),
    "prodigy": lambda: gc.prodigy(1.0),
    "dadapt_adamw": lambda: gc.dadapt_adamw(1.0),
    "galore": lambda: gc.galore(1e-2, rank=3, update_proj_gap=2),
    "muon": lambda: gc.muon(1e-2, param_labels=gc.muon_labels),
}
ALL = {**OPTIMIZERS, **REDUCING}
ON_MESH = list(ALL) + ["adamw-explicit", "galore-explicit"]
# The steps that move matrices between devices by design (checked apart): GaLore's SVD needs a
# whole gradient matrix, and XLA gathers the matrices of Muon's Newton-Schulz iteration.
GATHERING = ("galore", "muon")
EXTRA_ARGS = {"sophia": {"obj_fn": lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p))}}


# ---------------------------------------------------------------------------------------------
# Runs shared by several checks (each compiled once)


def step_fn(tx, extra=None):
    extra = extra or {}

    def step(params, state, grads):
        updates, state = tx.update(grads, state, params, **extra)
        return gc.apply_updates(params, updates), state

    return jax.jit(step)


def trajectory(tx, params, grads, state=None, extra=None):
    """Params and state after each of the jitted steps, and the compiled step's HLO text.

    The compiled step refuses inputs laid out differently from the first step's, so a state
    whose layout drifts fails here too.
    """
    state = tx.init(params) if state is None else state
    step = step_fn(tx, extra).lower(params, state, grads[0]).compile()
    out = []
    for g in grads:
        params, state = step(params, state, g)
        out.append((params, state))
    return out, step.as_text()


@functools.cache
def mesh_run(opt, kind="auto"):
    """``opt`` on the 4 x 2 mesh: (sharded trajectory, its HLO, single-device trajectory)."""
    mesh = make_mesh((4, 2), ("data", "model"), kind)
    tx = ALL[opt]()
    extra = EXTRA_ARGS.get(opt)
    params, grads = host_params(SHAPES), host_grads(SHAPES)
    with jax.set_mesh(mesh):
        state = tx.init(place(params, mesh, SPECS))
    sharded, hlo = trajectory(
        tx, place(params, mesh, SPECS), [place(g, mesh, SPECS) for g in grads], state, extra
    )
    single, _ = trajectory(tx, on_device0(params), [on_device0(g) for g in grads], None, extra)
    return mesh, tx, sharded, hlo, single


@functools.cache
def zero1_run(opt, kind="auto"):
    mesh8 = make_mesh((8,), ("data",), kind)
    inner = OPTIMIZERS[opt]()
    tx = gc.zero1(inner, mesh8, axis="data")
    replicated = {n: P() for n in DP_SHAPES}
    params, grads = host_params(DP_SHAPES), host_grads(DP_SHAPES)
    sharded, hlo = trajectory(
        tx, place(params, mesh8, replicated), [place(g, mesh8, replicated) for g in grads]
    )
    single, _ = trajectory(inner, on_device0(params), [on_device0(g) for g in grads])
    return mesh8, tx, params, sharded, hlo, single


# ---------------------------------------------------------------------------------------------
# Assertions


def mismatched_shardings(tree, expected) -> list[str]:
    """Paths of the leaves of ``tree`` not laid out as ``expected``."""
    bad = []
    for (path, x), want in zip(
        jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree.leaves(expected)
    ):
        if not x.sharding.is_equivalent_to(want, x.ndim):
            bad.append(f"{jax.tree_util.keystr(path)}: {x.sharding} (expected {want})")
    return bad


def assert_layout(tree, expected, what):
    bad = mismatched_shardings(tree, expected)
    assert not bad, f"{what}: " + "; ".join(bad)


def assert_close(actual, expected, what):
    # The sharded step sums squares (global norms, means) shard by shard and then across
    # shards: a re-association, so agreement is to fp32 rounding of O(1) values accumulated
    # over the steps, not bit for bit.
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0], jax.tree.leaves(expected)
    ):
        np.testing.assert_allclose(
            np.asarray(a, np.float64),
            np.asarray(e, np.float64),
            rtol=2e-6,
            atol=2e-7,
            err_msg=f"{what} at {jax.tree_util.keystr(path)}",
        )


def collectives(hlo: str) -> list[tuple[str, str]]:
    """``(op, result shape)`` of every collective in a compiled HLO text; a collective that XLA
    combined over several arrays (a tuple result) counts once per array."""
    ops = "all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter"
    pattern = rf"=\s*(\([^)]*\)|\S+)\s+({ops})(?:-start)?\("
    found = []
    for m in re.finditer(pattern, hlo):
        for shape in re.findall(r"\w+\[[\d,]*\]", m.group(1)):
            found.append((m.group(2), shape))
    return found


# ---------------------------------------------------------------------------------------------
# The checks

CHECKS = {}


def check(name):
    def register(fn):
        CHECKS[name] = fn
        return fn

    return register


def for_each(names, template):
    def register(fn):
        for n in names:
            CHECKS[template.format(n)] = functools.partial(fn, n)
        return fn

    return register


@check("eight_devices")
def _():
    assert jax.device_count() == 8, jax.devices()


INIT_CASES = ON_MESH


def init_case(case):
    """(tx, mesh, sharded params, the same as ShapeDtypeStructs) for ``opt[-explicit]``."""
    opt, _, kind = case.partition("-")
    mesh = make_mesh((4, 2), ("data", "model"), kind or "auto")
    params = place(host_params(SHAPES), mesh, SPECS)
    abstract = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    return ALL[opt](), mesh, params, abstract


@for_each(INIT_CASES, "init_eager_follows_params[{}]")
def _(case):
    tx, mesh, params, _ = init_case(case)
    with jax.set_mesh(mesh):  # where eager scalars are created replicated over the mesh
        state = tx.init(params)
    assert_layout(state, gc.state_shardings(tx, params), "eager init")


@for_each(INIT_CASES, "init_jit_follows_params[{}]")
def _(case):
    tx, _, params, _ = init_case(case)
    state = jax.jit(tx.init)(params)  # no out_shardings: the layout comes from init itself
    assert_layout(state, gc.state_shardings(tx, params), "jitted init")


# Prodigy keeps a copy of the initial parameters, so its init needs their values, not shapes.
@for_each([c for c in INIT_CASES if c != "prodigy"], "init_abstract_follows_params[{}]")
def _(case):
    tx, mesh, _, abstract = init_case(case)
    with jax.set_mesh(mesh):
        state = tx.init(abstract)
    assert_layout(state, gc.state_shardings(tx, abstract), "init from ShapeDtypeStruct")
    # abstract_state describes that state: shapes, dtypes and placement
    described = gc.abstract_state(tx, abstract)
    assert jax.tree.structure(described) == jax.tree.structure(state)
    for d, x in zip(jax.tree.leaves(described), jax.tree.leaves(state)):
        assert (d.shape, d.dtype) == (x.shape, x.dtype), (d, x)
    assert_layout(state, jax.tree.map(lambda d: d.sharding, described), "abstract_state")


@check("moments_follow_their_param")
def _():
    mesh = make_mesh((4, 2), ("data", "model"), "auto")
    abstract = {
        n: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, SPECS[n]))
        for n, s in SHAPES.items()
    }
    # Live: the hyperparameters are state leaves too, replicated.
    sh = gc.state_shardings(gc.with_live_hyperparams(gc.adamw(1e-3)), abstract)
    for field in ("mu", "nu"):
        got = gc.tree_get(sh, field)
        for n, spec in SPECS.items():
            assert got[n].is_equivalent_to(NamedSharding(mesh, spec), len(SHAPES[n])), (field, n)
    assert gc.tree_get(sh.scale_by_adam, "count").spec == P()
    assert gc.tree_get(sh, "learning_rate").spec == P()


@check("factored_statistics_follow_kept_axes")
def _():
    mesh = make_mesh((4, 2), ("data", "model"), "auto")
    abstract = {
        n: jax.ShapeDtypeStruct(s, jnp.float32, sharding=NamedSharding(mesh, SPECS[n]))
        for n, s in SHAPES.items()
    }
    sh = gc.state_shardings(FactoredRMS(), abstract)
    expected = {
        # v_row has one value per row: the row axis ("data") stays sharded, also for the
        # square matrix, whose v_row and v_col have the same shape
        ("v_row", "w"): P("data"),
        ("v_row", "sq"): P("data"),
        ("v_col", "w"): P("model"),
        ("v_col", "sq"): P("model"),
        ("v_row", "b"): P(),  # (1,) placeholders of an unfactored vector
        ("v", "b"): P("model"),
        ("v", "w"): P(),
    }
    for (field, n), spec in expected.items():
        got = getattr(sh, field)[n]
        assert got.is_equivalent_to(NamedSharding(mesh, spec), 1), (field, n, got)
    if not hasattr(gc, "adafactor"):
        return
    # gradchain's own factors keep the reduced axis with size 1 (unsharded) and the parameter's
    # sharding on the other; unused entries are optax's (1,) placeholders, replicated. "w"
    # (16 x 8) reduces its larger axis 0 in v_row, the square "sq" its later axis 1.
    sh = gc.state_shardings(gc.adafactor(1e-2, min_dim_size_to_factor=4), abstract)
    expected = {
        ("v_row", "w"): P(None, "model"),
        ("v_col", "w"): P("data", None),
        ("v_row", "sq"): P("data", None),
        ("v_col", "sq"): P(None, "model"),
        ("v", "b"): P("model"),
        ("v", "odd"): P(),
    }
    for (field, n), spec in expected.items():
        got = gc.tree_get(sh, field)[n]
        assert got.is_equivalent_to(NamedSharding(mesh, spec), 2), (field, n, got)
    for field, n in [("v", "w"), ("v", "sq"), ("v_row", "b"), ("v_col", "odd")]:
        got = gc.tree_get(sh, field)[n]
        assert got.is_equivalent_to(NamedSharding(mesh, P()), 1), (field, n, got)


@for_each(ON_MESH, "sharded_update_matches_single_device[{}]")
def _(opt):
    opt, _, kind = opt.partition("-")
    _, _, sharded, _, single = mesh_run(opt, kind or "auto")
    for k, ((ps, ss), (p1, s1)) in enumerate(zip(sharded, single)):
        assert_close(ps, p1, f"params after step {k + 1}")
        assert_close(ss, s1, f"state after step {k + 1}")


@for_each(ON_MESH, "sharded_update_keeps_state_layout[{}]")
def _(opt):
    opt, _, kind = opt.partition("-")
    mesh, tx, sharded, _, _ = mesh_run(opt, kind or "auto")
    params = place(host_params(SHAPES), mesh, SPECS)
    expected = gc.state_shardings(tx, params)
    for k, (ps, ss) in enumerate(sharded):
        assert_layout(ss, expected, f"state after step {k + 1}")
        assert_layout(ps, {n: NamedSharding(mesh, s) for n, s in SPECS.items()}, "params")


@for_each(
    [o for o in ON_MESH if o.partition("-")[0] not in GATHERING],
    "sharded_update_gathers_nothing[{}]",
)
def _(opt):
    opt, _, kind = opt.partition("-")
    _, _, _, hlo, _ = mesh_run(opt, kind or "auto")
    ops = collectives(hlo)
    moved = [o for o in ops if o[0] != "all-reduce"]
    assert not moved, f"the sharded step moves arrays between devices: {moved}"
    # what is reduced across devices is global norms and means: scalars and the factored
    # statistics' partial sums, never a full moment
    moment_shapes = {f"f32[{','.join(map(str, s))}]" for s in SHAPES.values() if len(s) == 2}
    full = [o for o in ops if o[1] in moment_shapes]
    assert not full, f"full moments all-reduced: {full}"


def hlo_dims(shape: str) -> tuple:
    """``"f32[1,16,8]"`` -> ``(16, 8)``: XLA adds leading unit (batch) axes to matrices."""
    dims = tuple(int(d) for d in shape[shape.index("[") + 1 : -1].split(",") if d)
    while dims and dims[0] == 1:
        dims = dims[1:]
    return dims


def branches(hlo: str) -> str:
    """The HLO text of the computations that conditionals run as branches."""
    names = {
        n.strip()
        for group in re.findall(r"branch_computations=\{([^}]*)\}", hlo)
        for n in group.split(",")
    }
    blocks = re.split(r"\n(?=\S)", hlo)  # a computation starts at the line's first column
    return "\n".join(b for b in blocks if b.split(" ", 1)[0] in names)


@for_each(["auto", "explicit"], "galore_gathers_gradients_for_its_svd_never_its_state[{}]")
def _(kind):
    _, _, sharded, hlo, _ = mesh_run("galore", kind)
    ops = [(op, hlo_dims(shape)) for op, shape in collectives(hlo)]
    # Every sharded state leaf (projectors 16x3 and 8x3, projected moments 3x8, the moments of
    # the vector "b") stays in shards: no collective ever yields one whole. The projection's
    # contraction is all-reduced per shard (3 x 4).
    whole = {x.shape for x in jax.tree.leaves(sharded[-1][1]) if not x.sharding.is_fully_replicated}
    assert {(16, 3), (8, 3), (3, 8), (8,)} <= whole, whole
    assert not [o for o in ops if o[1] in whole], f"a state leaf moved whole: {ops}"
    # The SVD (a LAPACK or cuSOLVER call) needs the whole matrix, by design: each projected
    # gradient ("w" 16 x 8, "sq" 8 x 8) is gathered whole once, inside the branch that
    # refreshes the projector, so that the other steps gather nothing.
    in_branches = [(op, hlo_dims(shape)) for op, shape in collectives(branches(hlo))]
    matrices = {SHAPES["w"], SHAPES["sq"]}
    gathered = sorted(s for op, s in in_branches if op == "all-gather" and s in matrices)
    assert gathered == sorted(matrices), f"whole gradients gathered: {gathered} in {ops}"
    gathers = [o for o in ops if o[0] == "all-gather"]
    assert gathers == [o for o in in_branches if o[0] == "all-gather"], f"outside: {gathers}"


@check("galore_eager_update_keeps_state_layout")
def _():
    mesh = make_mesh((4, 2), ("data", "model"), "auto")
    tx = REDUCING["galore"]()
    params = place(host_params(SHAPES), mesh, SPECS)
    expected = gc.state_shardings(tx, params)
    with jax.set_mesh(mesh):
        state = tx.init(params)
        for k, g in enumerate(host_grads(SHAPES, steps=3)):  # refreshes at steps 1 and 3
            updates, state = tx.update(place(g, mesh, SPECS), state, params)
            assert_layout(state, expected, f"state after eager step {k + 1}")
            assert_layout(updates, {n: NamedSharding(mesh, s) for n, s in SPECS.items()}, "updates")


@for_each(["jit", "eager"], "galore_update_keeps_a_replicated_state_replicated[{}]")
def _(how):
    # XLA would lay the SVD's projector and the projected moments out along the parameters'
    # axes; a state that comes in replicated (as a user may place it) goes out replicated.
    mesh = make_mesh((4, 2), ("data", "model"), "auto")
    tx = REDUCING["galore"]()
    params = place(host_params(SHAPES), mesh, SPECS)
    replicated = NamedSharding(mesh, P())
    state = jax.device_put(tx.init(params), replicated)
    grads = [place(g, mesh, SPECS) for g in host_grads(SHAPES, steps=3)]
    if how == "jit":
        states = [s for _, s in trajectory(tx, params, grads, state)[0]]
    else:
        states = []
        with jax.set_mesh(mesh):
            for g in grads:
                _, state = tx.update(g, state, params)
                states.append(state)
    for k, s in enumerate(states):
        assert_layout(s, jax.tree.map(lambda _: replicated, s), f"state after step {k + 1}")


@check("global_norm_is_global")
def _():
    mesh = make_mesh((4, 2), ("data", "model"), "auto")
    tree = host_params(SHAPES, seed=3)
    expected = np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in tree.values()))
    got = float(jax.jit(gc.global_norm)(place(tree, mesh, SPECS)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    _, _, sharded, _, single = mesh_run("clip_adamw_live", "auto")
    norms = [float(gc.tree_get(s, "global_norm")) for _, s in sharded]
    norms1 = [float(gc.tree_get(s, "global_norm")) for _, s in single]
    np.testing.assert_allclose(norms, norms1, rtol=1e-6)
    assert min(norms) > 1.0, f"the check needs clipped steps, norms were {norms}"


ZERO1_OPTS = ["adamw", "sgd_momentum", "clip_adamw", "adamw-explicit"]


@for_each(ZERO1_OPTS, "zero1_matches_single_device[{}]")
def _(opt):
    opt, _, kind = opt.partition("-")
    _, _, _, sharded, _, single = zero1_run(opt, kind or "auto")
    for k, ((ps, ss), (p1, s1)) in enumerate(zip(sharded, single)):
        assert_close(ps, p1, f"params after step {k + 1}")
        assert_close(ss, s1, f"state after step {k + 1}")


@for_each(ZERO1_OPTS, "zero1_state_split_along_data_params_replicated[{}]")
def _(opt):
    opt, _, kind = opt.partition("-")
    mesh8, tx, params, sharded, _, _ = zero1_run(opt, kind or "auto")
    expected = gc.state_shardings(tx, place(params, mesh8, {n: P() for n in DP_SHAPES}))
    # the rule, spelled out: the dimension with the most elements per device that 8 divides
    split = {"w": P("data", None), "emb": P(None, "data"), "b": P("data"), "odd": P()}
    for field in ["trace"] if opt == "sgd_momentum" else ["mu", "nu"]:
        for n, spec in split.items():
            got = gc.tree_get(expected, field)[n]
            assert got.is_equivalent_to(NamedSharding(mesh8, spec), len(DP_SHAPES[n])), (field, n)
    for k, (ps, ss) in enumerate(sharded):
        assert_layout(ss, expected, f"state after step {k + 1}")
        for n, p in ps.items():
            assert p.sharding.is_fully_replicated, f"param {n} after step {k + 1}: {p.sharding}"


@check("zero1_state_bytes_are_an_eighth")
def _():
    mesh8, tx, params, _sharded, _, _ = zero1_run("adamw", "auto")
    replicated_params = place(params, mesh8, {n: P() for n in DP_SHAPES})
    plain = gc.adamw(1e-2, weight_decay=0.1).init(replicated_params)
    zero = tx.init(replicated_params)

    def divisible_moments(state):  # "odd" (5 elements) cannot be split in 8 and stays whole
        moments = {f: gc.tree_get(state, f) for f in ("mu", "nu")}
        return {f: {n: v for n, v in m.items() if n != "odd"} for f, m in moments.items()}

    full = gc.per_device_bytes(divisible_moments(plain))
    split = gc.per_device_bytes(divisible_moments(zero))
    assert len(full) == len(split) == 8
    for d in full:
        assert split[d] * 8 == full[d], (d, split[d], full[d])


@for_each(["adamw", "clip_adamw"], "zero1_gathers_each_update_once[{}]")
def _(opt):
    _, _, _, _, hlo, _ = zero1_run(opt, "auto")
    gathers = [s for op, s in collectives(hlo) if op == "all-gather"]
    # one all-gather per split parameter (odd stays replicated), each of a parameter's shape
    expected = sorted(f"f32[{','.join(map(str, DP_SHAPES[n]))}]" for n in ("w", "emb", "b"))
    assert sorted(gathers) == expected, gathers


@for_each(["auto", "explicit"], "zero1_init_jit_and_abstract_split_state[{}]")
def _(kind):
    mesh8 = make_mesh((8,), ("data",), kind)
    tx = gc.zero1(OPTIMIZERS["clip_adamw"](), mesh8, axis="data")
    params = place(host_params(DP_SHAPES), mesh8, {n: P() for n in DP_SHAPES})
    expected = gc.state_shardings(tx, params)
    assert_layout(jax.jit(tx.init)(params), expected, "jitted zero1 init")
    abstract = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    assert_layout(tx.init(abstract), expected, "zero1 init from ShapeDtypeStruct")
    # the form jit returns: no trailing None on Auto axes, one entry per axis on Explicit ones
    assert gc.tree_get(expected, "mu")["w"].spec == (
        P("data") if kind == "auto" else P("data", None)
    )


# Tensor-parallel parameters (split along "model") under ZeRO-1 along "data".
TP_SPECS = {"w": P(None, "model"), "b": P("model"), "odd": P()}
TP_SHAPES = {"w": (16, 8), "b": (8,), "odd": (5,)}


@for_each(["auto", "explicit"], "zero1_adds_data_axis_to_tensor_parallel_layout[{}]")
def _(kind):
    mesh = make_mesh((4, 2), ("data", "model"), kind)
    inner = OPTIMIZERS["adamw"]()
    # on Auto axes the parameters' layout is not in their types: it is given
    specs = TP_SPECS if kind == "auto" else None
    tx = gc.zero1(inner, mesh, axis="data", param_specs=specs)
    params, grads = host_params(TP_SHAPES), host_grads(TP_SHAPES)
    sharded, _ = trajectory(
        tx, place(params, mesh, TP_SPECS), [place(g, mesh, TP_SPECS) for g in grads]
    )
    single, _ = trajectory(inner, on_device0(params), [on_device0(g) for g in grads])
    expected = {"w": P("data", "model"), "b": P(("model", "data")), "odd": P()}
    for k, ((ps, ss), (p1, s1)) in enumerate(zip(sharded, single)):
        assert_close(ps, p1, f"params after step {k + 1}")
        assert_close(ss, s1, f"state after step {k + 1}")
        assert_layout(ps, {n: NamedSharding(mesh, sp) for n, sp in TP_SPECS.items()}, "params")
        assert_layout(
            gc.tree_get(ss, "mu"), {n: NamedSharding(mesh, sp) for n, sp in expected.items()}, "mu"
        )


@for_each(["mesh", "zero1"], "checkpoint_restores_into_state_layout[{}]")
def _(layout):
    import tempfile

    import orbax.checkpoint as ocp

    if layout == "mesh":
        mesh, tx, sharded, _, _ = mesh_run("clip_adamw", "auto")
        params = place(host_params(SHAPES), mesh, SPECS)
    else:
        mesh8, tx, host, sharded, _, _ = zero1_run("clip_adamw", "auto")
        params = place(host, mesh8, {n: P() for n in DP_SHAPES})
    state = sharded[-1][1]
    abstract_params = jax.tree.map(
        lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(f"{tmp}/state", state)
        checkpointer.wait_until_finished()
        restored = checkpointer.restore(f"{tmp}/state", gc.abstract_state(tx, abstract_params))
    assert_layout(restored, gc.state_shardings(tx, params), "restored state")
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# 8-bit states (gradchain.quantization) on the 4 x 2 mesh: blocks of 16 so that the small test
# parameters are quantized. A shard of "w" (4 x 8) or "sq" (2 x 8) along "data" holds whole
# blocks, so their codes are split by blocks along "data"; "b" (4 per "model" shard), "s" and
# "odd" hold less than a block per shard and stay replicated.
BLOCKS_8BIT = {"w": P("data", None), "sq": P("data", None), "b": P(), "s": P(), "odd": P()}


def adamw_8bit():
    return gc.adamw_8bit(1e-2, weight_decay=0.1, block_size=16, min_8bit_size=0)


@functools.cache
def run_8bit(kind):
    mesh = make_mesh((4, 2), ("data", "model"), kind)
    tx = adamw_8bit()
    params, grads = host_params(SHAPES), host_grads(SHAPES)
    placed = place(params, mesh, SPECS)
    with jax.set_mesh(mesh):
        state = tx.init(placed)
    sharded, hlo = trajectory(tx, placed, [place(g, mesh, SPECS) for g in grads], state)
    single, _ = trajectory(tx, on_device0(params), [on_device0(g) for g in grads])
    return mesh, tx, placed, state, sharded, hlo, single


@for_each(["auto", "explicit"], "8bit_update_matches_single_device[{}]")
def _(kind):
    *_, sharded, _, single = run_8bit(kind)
    for k, ((ps, ss), (p1, s1)) in enumerate(zip(sharded, single)):
        assert_close(ps, p1, f"params after step {k + 1}")
        assert_close(ss, s1, f"state after step {k + 1}")  # the same codes


@for_each(["auto", "explicit"], "8bit_state_split_by_blocks[{}]")
def _(kind):
    mesh, tx, placed, state, sharded, _, _ = run_8bit(kind)
    expected = gc.state_shardings(tx, placed)
    for field in ("mu", "nu"):
        for n, spec in BLOCKS_8BIT.items():
            q = gc.tree_get(expected, field)[n]
            assert q.codes.is_equivalent_to(NamedSharding(mesh, spec), 2), (field, n, q.codes)
    assert_layout(state, expected, "init")
    for k, (_, ss) in enumerate(sharded):
        assert_layout(ss, expected, f"state after step {k + 1}")


@check("8bit_zero1_splits_blocks_along_data")
def _():
    mesh8 = make_mesh((8,), ("data",), "auto")
    inner = gc.adamw_8bit(1e-2, block_size=8, min_8bit_size=0)
    tx = gc.zero1(inner, mesh8, axis="data")
    replicated = {n: P() for n in DP_SHAPES}
    params, grads = host_params(DP_SHAPES), host_grads(DP_SHAPES)
    sharded, _ = trajectory(
        tx, place(params, mesh8, replicated), [place(g, mesh8, replicated) for g in grads]
    )
    single, _ = trajectory(inner, on_device0(params), [on_device0(g) for g in grads])
    for k, ((ps, ss), (p1, s1)) in enumerate(zip(sharded, single)):
        assert_close(ps, p1, f"params after step {k + 1}")
        assert_close(ss, s1, f"state after step {k + 1}")
    # "w" (16 x 8) is split along its rows: 2 rows, 2 blocks of 8, per device
    codes = gc.tree_get(sharded[-1][1], "mu")["w"].codes
    assert codes.sharding.is_equivalent_to(NamedSharding(mesh8, P("data", None)), 2), codes.sharding
    assert {s.data.shape for s in codes.addressable_shards} == {(2, 8)}


@check("sharding_page_example_runs")
def _():
    text = (ROOT / "docs" / "sharding.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace = {"__name__": "sharding_page_example"}
    with jax.numpy_rank_promotion("allow"):  # the example runs with JAX's default settings
        exec(compile(code, "docs/sharding.md", "exec"), namespace)
    assert np.isfinite(namespace["loss_value"]), namespace["loss_value"]
    assert namespace["losses"][-1] < namespace["losses"][0], namespace["losses"]


def main(names):
    names = names or list(CHECKS)
    failed = 0
    for name in names:
        try:
            CHECKS[name]()
            result = {"check": name, "ok": True, "detail": ""}
        except Exception:
            failed += 1
            result = {"check": name, "ok": False, "detail": traceback.format_exc()}
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
