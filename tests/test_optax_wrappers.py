"""optax's wrappers and numerical utilities in gradchain, cross-checked against optax.

Transformations: 20 jitted steps with the same gradients on a tree of float32 leaves and one of
bfloat16 leaves, parameters compared after each step (tolerances of ``crosscheck.tolerance``),
and the measurements in the state compared with optax's. Utilities: exact values (float32
results of the same operations in the same order), including the edge cases optax documents:
the int32 counter at its limit, zero vectors for the safe norms and their gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, run

import gradchain as gc

STEPS = 20


def _params(dtype):
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "vector": jax.random.normal(k[0], (7,)).astype(dtype),
        "matrix": jax.random.normal(k[1], (5, 3)).astype(dtype),
        "tensor": jax.random.normal(k[2], (2, 3, 4)).astype(dtype),
    }


def _norm(tree):
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _every_third(step):
    return step % 3 == 0


# Each pair builds the same transformation from a module (gradchain or optax).
WRAPPERS = {
    # The monitoring wrappers sit between stateless pieces: with a momentum before them, a
    # bfloat16 run would compare the two libraries' momentum dtypes (optax keeps bfloat16, see
    # docs/DIVERGENCES.md), not the wrappers.
    "snapshot": lambda m: m.chain(
        m.scale(-0.1), m.snapshot("norm", _norm), m.clip_by_global_norm(1.0)
    ),
    "monitor": lambda m: m.chain(
        m.scale(-0.1),
        m.monitor(
            {
                "norm": _norm,
                "norm_ema": m.measure_with_ema(_norm, 0.9),
                "big_ema": m.measure_with_ema(lambda u: _norm(u) > 1.0, 0.8, debias=False),
            }
        ),
        m.clip_by_global_norm(1.0),
    ),
    "conditionally_transform": lambda m: m.chain(
        m.conditionally_transform(m.scale_by_adam(), _every_third), m.scale(-0.05)
    ),
    "conditionally_mask": lambda m: m.conditionally_mask(m.adam(0.05), _every_third),
    "conditionally_transform[extra_args]": lambda m: m.chain(
        m.conditionally_transform(
            m.scale_by_adam(), lambda step, loss: loss > 0.5, forward_extra_args=True
        ),
        m.scale(-0.05),
    ),
}
EXTRA = {"conditionally_transform[extra_args]": {"loss": jnp.asarray(1.0)}}
MEASURED = {"snapshot": ("norm",), "monitor": ("norm", "norm_ema", "big_ema")}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(WRAPPERS))
def test_wrapper_matches_optax_over_20_jitted_steps(name, dtype):
    params = _params(dtype)
    grads = gradient_stream(params, STEPS)
    extra = EXTRA.get(name)
    ours, our_state = run(WRAPPERS[name](gc), params, grads, gc.apply_updates, extra)
    theirs, their_state = run(WRAPPERS[name](optax), params, grads, optax.apply_updates, extra)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert_trees_close(a, b, what=f"params after step {step + 1}")
    for key in MEASURED.get(name, ()):
        np.testing.assert_allclose(
            np.asarray(gc.tree.get(our_state, key), np.float64),
            np.asarray(optax.tree.get(their_state, key), np.float64),
            rtol=1e-6,
            err_msg=key,
        )


def test_conditionally_transform_counts_steps_and_passes_updates_through_when_skipped():
    tx = gc.conditionally_transform(gc.scale(2.0), lambda step: step == 1)
    g = {"w": jnp.ones(3)}
    state = tx.init(g)
    outs = []
    for _ in range(3):
        u, state = tx.update(g, state)
        outs.append(float(u["w"][0]))
    assert outs == [1.0, 2.0, 1.0]
    assert int(state.step) == 3


def test_conditionally_mask_zeroes_skipped_steps_and_keeps_the_inner_state():
    tx = gc.conditionally_mask(gc.adam(0.1), lambda step: step == 0)
    g = {"w": jnp.ones(3)}
    state = tx.init(g)
    _, state = tx.update(g, state, g)
    before = state.inner_state
    u, state = jax.jit(tx.update)(g, state, g)
    np.testing.assert_array_equal(u["w"], 0.0)
    for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(before)):
        np.testing.assert_array_equal(a, b)
    assert int(state.step) == 2


def test_counter_saturates_at_the_int32_limit():
    tx = gc.conditionally_transform(gc.identity(), lambda step: step >= 0)
    g = {"w": jnp.ones(2)}
    state = tx.init(g)
    state = gc.tree_set(state, step=jnp.asarray(2**31 - 1, jnp.int32))
    _, state = tx.update(g, state)
    assert int(state.step) == 2**31 - 1


def test_monitor_state_keeps_its_structure_from_init_on():
    """optax's monitor starts with no measurements (a state that changes structure at the first
    step); gradchain's holds zeros shaped like them, so one compiled step serves every step."""
    tx = gc.monitor({"norm": _norm, "ema": gc.measure_with_ema(_norm, 0.9)})
    params = _params(jnp.float32)
    state = tx.init(params)
    _, new = tx.update(params, state)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state)):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
    assert float(state.measurements["norm"]) == 0.0


def test_measure_with_ema_state_is_optax_layout_with_a_float_accumulator():
    tx = gc.measure_with_ema(lambda u: _norm(u) > 1.0, 0.9)
    params = _params(jnp.float32)
    state = tx.init(params)
    assert isinstance(state[0], gc.EmptyState)
    assert state[1].ema.dtype == jnp.float32  # optax: bool until the first update
    reference = optax.measure_with_ema(lambda u: _norm(u) > 1.0, 0.9).init(params)
    paths = lambda s: [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(s)[0]
    ]
    assert paths(state) == paths(reference) == ["[1].count", "[1].ema"]
    # The live layout keeps the decay.
    live = gc.with_live_hyperparams(tx).init(params)
    assert float(gc.tree_get(live, "decay")) == pytest.approx(0.9)
    out, state = tx.update(params, state)
    assert float(out) == pytest.approx(1.0)  # debiased: the first measurement itself
    assert int(state[1].count) == 1


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.snapshot(3, _norm), "measure_name must be a str"),
        (lambda: gc.snapshot("n", 3), "measure must be a function"),
        (lambda: gc.monitor([_norm]), "measures must be a dict"),
        (lambda: gc.monitor({"n": 3}), r"measures\['n'\]"),
        (lambda: gc.measure_with_ema(_norm, 1.5), "decay must be in"),
        (lambda: gc.measure_with_ema(_norm, 0.9, debias="yes"), "debias must be a bool"),
        (lambda: gc.conditionally_mask(3, _every_third), "inner must be a gradient"),
        (lambda: gc.conditionally_transform(gc.sgd(0.1), 3), "should_transform_fn must be"),
        (
            lambda: gc.conditionally_transform(gc.sgd(0.1), _every_third, forward_extra_args=1),
            "forward_extra_args must be a bool",
        ),
    ],
)
def test_invalid_wrapper_arguments_raise_naming_the_argument(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build()


def test_a_condition_that_is_not_a_scalar_is_named():
    tx = gc.conditionally_mask(gc.sgd(0.1), lambda step: jnp.ones(2, bool))
    g = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="should_transform_fn must return a boolean scalar"):
        tx.update(g, tx.init(g))


# Utilities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [0, 1, 2**31 - 2, 2**31 - 1], ids=["zero", "one", "below_limit", "at_limit"]
)
def test_safe_int32_increment_matches_optax_and_saturates(value):
    x = jnp.asarray(value, jnp.int32)
    ours, theirs = gc.safe_int32_increment(x), optax.safe_int32_increment(x)
    assert ours.dtype == theirs.dtype == jnp.int32
    assert int(ours) == int(theirs) == min(value + 1, 2**31 - 1)


X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
NORM_CASES = {
    "vector": (X[0], {}),
    "matrix": (X, {}),
    "zeros": (np.zeros(5, np.float32), {}),
    "axis": (X, {"axis": 1}),
    "axis_keepdims": (X, {"axis": 0, "keepdims": True}),
    "zero_row": (np.concatenate([X[:1] * 0, X[1:]]), {"axis": 1}),
    "ord_1": (X[0], {"ord": 1}),
    "ord_inf": (X[0], {"ord": np.inf}),
    "ord_fro": (X, {"ord": "fro"}),
    "ord_nuc": (X, {"ord": "nuc"}),
    "complex": ((X + 1j * X[::-1]).astype(np.complex64), {}),
    "tensor": (np.stack([X, X]), {}),
}


@pytest.mark.parametrize("name", list(NORM_CASES))
# 0 takes the norm everywhere but at zero rows; 100 takes min_norm everywhere.
@pytest.mark.parametrize("min_norm", [0.0, 100.0])
def test_safe_norm_and_its_gradient_match_optax(name, min_norm):
    x, kwargs = NORM_CASES[name]
    x = jnp.asarray(x)
    ours = gc.safe_norm(x, min_norm, **kwargs)
    theirs = optax.safe_norm(x, min_norm, **kwargs)
    np.testing.assert_allclose(ours, theirs, rtol=2e-7)
    assert ours.shape == theirs.shape
    if jnp.isrealobj(x):
        grad = jax.grad(lambda v, f: jnp.sum(f(v, min_norm, **kwargs)), argnums=0)
        g_ours, g_theirs = grad(x, gc.safe_norm), grad(x, optax.safe_norm)
        assert bool(jnp.all(jnp.isfinite(g_ours)))
        np.testing.assert_allclose(g_ours, g_theirs, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("min_norm", [0.0, 100.0])
def test_safe_norm_derivatives_in_min_norm_and_of_second_order_match_optax(min_norm):
    x = jnp.asarray(X[0])
    dm = lambda f: jax.grad(lambda m: f(x, m))(jnp.float32(min_norm))
    np.testing.assert_allclose(dm(gc.safe_norm), dm(optax.safe_norm))
    hess = lambda f: jax.hessian(lambda v: f(v, min_norm))(x)
    np.testing.assert_allclose(hess(gc.safe_norm), hess(optax.safe_norm), rtol=1e-5, atol=1e-7)


def test_safe_norm_reads_its_input_once():
    # optax takes a second norm of where(small, 1, x), which XLA:CPU writes to memory and reads
    # back (3x the input's bytes); a trust ratio per leaf paid that on every parameter.
    x = jnp.ones((1024, 1024))
    compiled = jax.jit(lambda v: gc.safe_norm(v, 1e-3)).lower(x).compile()
    accessed = compiled.cost_analysis()["bytes accessed"]
    assert accessed < 1.1 * x.nbytes, accessed / x.nbytes


def test_safe_norm_of_zeros_is_min_norm_with_a_zero_gradient_not_nan():
    zero = jnp.zeros(3)
    assert float(gc.safe_norm(zero, 0.0)) == 0.0
    np.testing.assert_array_equal(jax.grad(lambda v: gc.safe_norm(v, 0.0))(zero), 0.0)
    np.testing.assert_array_equal(jax.grad(lambda v: gc.safe_root_mean_squares(v, 0.0))(zero), 0.0)


@pytest.mark.parametrize("name", ["vector", "matrix", "zeros", "complex", "tensor"])
@pytest.mark.parametrize("min_rms", [0.0, 100.0])
def test_safe_root_mean_squares_matches_optax(name, min_rms):
    x = jnp.asarray(NORM_CASES[name][0])
    np.testing.assert_allclose(
        gc.safe_root_mean_squares(x, min_rms), optax.safe_root_mean_squares(x, min_rms), rtol=2e-7
    )


MOMENT_HELPERS = {
    "moment2": (gc.update_moment, optax.update_moment, 2),
    "moment1": (gc.update_moment, optax.update_moment, 1),
    "per_elem2": (gc.update_moment_per_elem_norm, optax.update_moment_per_elem_norm, 2),
    "per_elem3": (gc.update_moment_per_elem_norm, optax.update_moment_per_elem_norm, 3),
    "infinity": (gc.update_infinity_moment, optax.update_infinity_moment, 1e-8),
}
# Complex updates: only the per-element norm is defined for them (|g|^order), in optax as here.
MOMENT_CASES = [
    (name, dtype)
    for name in MOMENT_HELPERS
    for dtype in ("float32", "bfloat16", "complex64")
    if dtype != "complex64" or name.startswith("per_elem")
]


@pytest.mark.parametrize("name, dtype", MOMENT_CASES)
def test_moment_helpers_match_optax_exactly(name, dtype):
    ours, theirs, arg = MOMENT_HELPERS[name]
    updates = jax.tree.map(lambda x: x.astype(dtype), _params(jnp.float32))
    moments = jax.tree.map(lambda x: jnp.abs(x).astype(jnp.float32) * 0.5, _params(jnp.float32))
    a, b = ours(updates, moments, 0.9, arg), theirs(updates, moments, 0.9, arg)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


def test_moment_helpers_keep_none_leaves():
    updates = {"a": jnp.ones(2), "b": None}
    moments = {"a": jnp.zeros(2), "b": None}
    assert gc.update_moment(updates, moments, 0.9, 2)["b"] is None


def test_incremental_and_periodic_update_match_optax():
    new, old = _params(jnp.float32), jax.tree.map(lambda x: x * 0.3, _params(jnp.float32))
    for step_size in (0.0, 0.01, 0.5, 1.0):
        assert_trees_close(
            jax.jit(gc.incremental_update)(new, old, step_size),
            optax.incremental_update(new, old, step_size),
        )
    step = jax.jit(gc.periodic_update)
    for t in range(12):
        expected = optax.periodic_update(new, old, t, 4)
        got = step(new, old, t, 4)
        for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
            np.testing.assert_array_equal(x, y)
    assert gc.incremental_update(None, new["vector"], 1.0) is None


def test_periodic_update_names_mismatched_trees():
    with pytest.raises(ValueError, match="old_tensors and new_tensors"):
        gc.periodic_update({"a": jnp.ones(2)}, {"b": jnp.ones(2)}, 0, 2)


def _spd(n, seed=0, condition=100.0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return jnp.asarray(q @ np.diag(np.geomspace(1.0, 1.0 / condition, n)) @ q.T, jnp.float32)


def test_power_iteration_matches_optax_on_a_matrix_and_an_operator():
    m = _spd(6)
    for ours, theirs in [
        (gc.power_iteration(m), optax.power_iteration(m)),
        (
            gc.power_iteration(lambda v: {"x": m @ v["x"]}, v0={"x": jnp.ones(6)}),
            optax.power_iteration(lambda v: {"x": m @ v["x"]}, v0={"x": jnp.ones(6)}),
        ),
    ]:
        np.testing.assert_array_equal(ours[0], theirs[0])
        for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(theirs[1])):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(gc.power_iteration(m)[0], 1.0, rtol=1e-4)


def test_power_iteration_needs_v0_for_an_operator():
    with pytest.raises(ValueError, match="v0 must be given"):
        gc.power_iteration(lambda v: v)


@pytest.mark.parametrize("p", [1, 2, 4, 8])
@pytest.mark.parametrize("size", [1, 5])
def test_matrix_inverse_pth_root_matches_optax(p, size):
    m = _spd(size)
    ours, err = gc.matrix_inverse_pth_root(m, p)
    theirs, their_err = optax.matrix_inverse_pth_root(m, p)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(err, their_err)


def test_matrix_inverse_pth_root_is_the_root_for_every_p():
    """optax takes the power of two nearest p inside the iteration (round(log2 p)); for p = 3
    that is T^2 and the result is not the cube root. gradchain forms T^p."""
    m = _spd(4, condition=10.0)
    root, _ = gc.matrix_inverse_pth_root(m, 3, ridge_epsilon=0.0)
    cube = np.linalg.matrix_power(np.linalg.inv(np.asarray(root, np.float64)), 3)
    np.testing.assert_allclose(cube, m, rtol=1e-3, atol=1e-4)
    theirs, _ = optax.matrix_inverse_pth_root(m, 3, ridge_epsilon=0.0)
    assert not np.allclose(theirs, root, rtol=1e-2)


@pytest.mark.parametrize("bad, message", [(0, "p must be"), (2.5, "p must be")])
def test_matrix_inverse_pth_root_validates_p(bad, message):
    with pytest.raises(ValueError, match=message):
        gc.matrix_inverse_pth_root(_spd(3), bad)


@pytest.mark.parametrize("k", [(), (3,)], ids=["vector", "matrix"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_nnls_matches_optax(k, dtype):
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.standard_normal((10, 6)), dtype)
    b = jnp.asarray(rng.standard_normal((10, *k)), dtype)
    ours, theirs = gc.nnls(a, b, 200), optax.nnls(a, b, 200)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    assert bool(jnp.all(ours >= 0))


def test_nnls_names_bad_shapes():
    with pytest.raises(ValueError, match="A must be a matrix"):
        gc.nnls(jnp.ones(3), jnp.ones(3), 10)
    with pytest.raises(ValueError, match="b must have shape"):
        gc.nnls(jnp.ones((3, 2)), jnp.ones(4), 10)


def test_multi_normal_matches_optax():
    loc, log_scale = jnp.arange(6.0).reshape(2, 3), jnp.full((1, 3), -0.5)
    ours, theirs = gc.multi_normal(loc, log_scale), optax.multi_normal(loc, log_scale)
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(ours.sample((), key), theirs.sample((), key))
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(ours.log_prob(x), theirs.log_prob(x))
    for a, b in zip(ours.params, theirs.params):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Incompatible shapes for broadcasting: loc"):
        gc.multi_normal(jnp.ones((2, 3)), jnp.ones((3, 2)))


MB = optax.microbatching.AccumulationType


def _batch_fn(w, x, y):
    return {"sum": jnp.sum((x @ w - y) ** 2), "rows": x @ w, "mean": jnp.mean(x, axis=0)}


@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("types", ["gradchain", "optax"])
def test_microbatch_matches_optax_and_the_whole_batch(size, types):
    acc_type = gc.microbatching.AccumulationType if types == "gradchain" else MB
    rng = np.random.default_rng(2)
    w = jnp.asarray(rng.standard_normal(3), jnp.float32)
    x = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    y = jnp.asarray(rng.standard_normal(8), jnp.float32)
    acc = {"sum": acc_type.SUM, "rows": acc_type.CONCAT, "mean": acc_type.MEAN}
    ours = jax.jit(gc.microbatch(_batch_fn, (1, 2), size, acc))(w, x, y)
    theirs = optax.microbatch(_batch_fn, (1, 2), size, {k: MB[v.name] for k, v in acc.items()})(
        w, x, y
    )
    whole = _batch_fn(w, x, y)
    for key in whole:
        np.testing.assert_array_equal(ours[key], theirs[key])
        np.testing.assert_allclose(ours[key], whole[key], rtol=1e-5, atol=1e-6)


def test_microbatch_running_mean_with_fewer_real_microbatches():
    x = jnp.arange(1.0, 13.0)
    ours = gc.microbatch(
        jnp.mean, 0, 3, gc.microbatching.AccumulationType.RUNNING_MEAN, num_real_microbatches=2
    )(x)
    theirs = optax.microbatch(jnp.mean, 0, 3, MB.RUNNING_MEAN, num_real_microbatches=2)(x)
    np.testing.assert_array_equal(ours, theirs)


def test_microbatch_names_an_indivisible_batch_and_returns_fun_for_none():
    with pytest.raises(ValueError, match="divisible by microbatch_size=3"):
        gc.microbatch(jnp.sum, 0, 3)(jnp.ones(8))
    with pytest.raises(ValueError, match="microbatch_size must be"):
        gc.microbatch(jnp.sum, 0, 0)
    assert gc.microbatch(jnp.sum, 0, None) is jnp.sum


def test_the_microbatching_namespace_has_optaxs_public_names():
    optax_names = {n for n in dir(optax.microbatching) if not n.startswith("_")}
    assert optax_names <= {n for n in dir(gc.microbatching) if not n.startswith("_")}
    for name in ("micro_grad", "micro_vmap", "microbatch", "reshape_batch_axis"):
        assert getattr(gc.microbatching, name).__module__.startswith("gradchain")


@pytest.mark.parametrize("axis", [0, 1])
def test_reshape_batch_axis_matches_optax(axis):
    x = {"a": jnp.moveaxis(jnp.arange(12 * 2 * 3.0).reshape(12, 2, 3), 0, axis)}
    ours = gc.microbatching.reshape_batch_axis(x, 4, axis)
    theirs = optax.microbatching.reshape_batch_axis(x, 4, axis)
    assert ours["a"].shape == theirs["a"].shape
    np.testing.assert_array_equal(ours["a"], theirs["a"])


def _row_fn(w, x, scale=1.0):
    return {"dot": scale * jnp.dot(x, w), "sq": x**2}


@pytest.mark.parametrize("size", [None, 1, 2, 4])
@pytest.mark.parametrize("acc", ["CONCAT", "SUM", "MEAN"])
def test_micro_vmap_matches_optax_and_jax_vmap(size, acc):
    rng = np.random.default_rng(5)
    w = jnp.asarray(rng.standard_normal(3), jnp.float32)
    x = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    scale = jnp.linspace(0.5, 2.0, 8)
    ours = jax.jit(
        gc.microbatching.micro_vmap(_row_fn, (None, 0), microbatch_size=size, accumulator=MB[acc])
    )(w, x, scale=scale)
    theirs = optax.microbatching.micro_vmap(
        _row_fn, (None, 0), microbatch_size=size, accumulator=MB[acc]
    )(w, x, scale=scale)
    rows = jax.vmap(_row_fn, (None, 0))(w, x, scale=scale)
    reduce = {"CONCAT": lambda r: r, "SUM": lambda r: r.sum(0), "MEAN": lambda r: r.mean(0)}[acc]
    for key in rows:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(ours[key], reduce(rows[key]), rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match="out_axes"):
        gc.microbatching.micro_vmap(_row_fn, out_axes=1)


def _mse(params, x, y):
    return 0.5 * jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _clip_to_unit(g):
    norm = jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g)))
    return jax.tree.map(lambda x: x * jnp.minimum(1.0, 1.0 / norm), g)


@pytest.mark.parametrize("size", [None, 2, 4])
@pytest.mark.parametrize("keep_batch_dim", [True, False])
def test_micro_grad_matches_optax_and_per_example_gradients(size, keep_batch_dim):
    rng = np.random.default_rng(6)
    params = {"w": jnp.asarray(rng.standard_normal(3), jnp.float32), "b": jnp.zeros(())}
    x = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32)
    y = jnp.asarray(3 * rng.standard_normal(8), jnp.float32)
    kwargs = dict(
        batch_argnums=(1, 2),
        keep_batch_dim=keep_batch_dim,
        microbatch_size=size,
        accumulator=MB.MEAN,
        transform_fn=_clip_to_unit,
        metrics_fn=lambda g: jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree.leaves(g))),
    )
    loss = _mse if keep_batch_dim else (lambda p, xi, yi: _mse(p, xi[None], yi[None]))
    ours, ours_aux = jax.jit(gc.microbatching.micro_grad(loss, **kwargs))(params, x, y)
    theirs, theirs_aux = optax.microbatching.micro_grad(loss, **kwargs)(params, x, y)
    # Independently: every example's gradient by vmap, clipped to norm 1, averaged.
    one = jax.grad(lambda p, xi, yi: _mse(p, xi[None], yi[None]))
    per_example = jax.vmap(one, (None, 0, 0))(params, x, y)
    norms = jnp.sqrt(sum(jnp.sum(a.reshape(8, -1) ** 2, 1) for a in jax.tree.leaves(per_example)))
    expected = jax.tree.map(
        lambda a: jnp.mean(
            a * jnp.minimum(1.0, 1.0 / norms).reshape((8,) + (1,) * (a.ndim - 1)), 0
        ),
        per_example,
    )
    for key in params:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ours[key], expected[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours_aux.metrics, norms, rtol=1e-5)
    np.testing.assert_allclose(ours_aux.values, theirs_aux.values, rtol=1e-6)
    assert type(ours_aux).__name__ == "Aux" and ours_aux.aux is None


def test_micro_grad_has_aux_and_early_stopping_match_optax():
    def loss(w, x):
        return jnp.sum((x @ w) ** 2), {"pred": x @ w}

    w, x = jnp.ones(2), jnp.arange(16.0).reshape(8, 2)
    kwargs = dict(has_aux=True, microbatch_size=2, num_real_microbatches=3)
    ours, ours_aux = gc.microbatching.micro_grad(loss, **kwargs)(w, x)
    theirs, theirs_aux = optax.microbatching.micro_grad(loss, **kwargs)(w, x)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours_aux.aux["pred"], theirs_aux.aux["pred"])


def test_micro_vmap_per_example_gradients_feed_dpsgd():
    # micro_vmap of the gradient is jax.vmap's per-example gradients, computed 2 rows at a time:
    # DP-SGD's input, the same update either way.
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}
    x, y = jnp.arange(24.0).reshape(8, 3) / 10, jnp.arange(8.0)
    one = jax.grad(lambda p, xi, yi: _mse(p, xi[None], yi[None]))
    tx = gc.dpsgd(0.1, 1.0, 0.5, seed=0)
    by_vmap = jax.vmap(one, (None, 0, 0))(params, x, y)
    by_micro = gc.microbatching.micro_vmap(one, (None, 0, 0), microbatch_size=2)(params, x, y)
    state = tx.init(params)
    u_vmap, _ = tx.update(by_vmap, state, params)
    u_micro, _ = tx.update(by_micro, state, params)
    for key in params:
        np.testing.assert_allclose(u_micro[key], u_vmap[key], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight_decay", [0.0, 0])
def test_constant_zero_weight_decay_leaves_updates_untouched_as_optax(weight_decay):
    # optax returns the updates as they are for a constant 0: an infinite or NaN parameter does
    # not turn its update into 0 * inf, and the step does not read the parameters.
    params = {"a": jnp.array([1.0, jnp.inf, jnp.nan]), "b": jnp.ones(2, jnp.bfloat16)}
    updates = {"a": jnp.full(3, 0.5), "b": jnp.ones(2, jnp.bfloat16)}
    ours = gc.add_decayed_weights(weight_decay)
    theirs = optax.add_decayed_weights(weight_decay)
    out, _ = ours.update(updates, ours.init(params), params)
    ref, _ = theirs.update(updates, theirs.init(params), params)
    for k in params:
        np.testing.assert_array_equal(out[k], ref[k])
        assert out[k].dtype == ref[k].dtype
    np.testing.assert_array_equal(out["a"], 0.5)
    assert out["a"] is updates["a"] and out["b"] is updates["b"]


def test_zero_weight_decay_made_live_still_applies_a_value_set_later():
    params = {"a": jnp.array([2.0, jnp.inf])}
    tx = gc.with_live_hyperparams(gc.add_decayed_weights(0.0))
    state = gc.tree_set(tx.init(params), weight_decay=0.5)
    out, _ = tx.update({"a": jnp.ones(2)}, state, params)
    np.testing.assert_array_equal(out["a"], [2.0, jnp.inf])
