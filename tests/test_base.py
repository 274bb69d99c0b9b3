"""The protocol: inspectable transformations, named states, chaining with optax both ways."""

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc


def test_repr_shows_the_chain_and_every_hyperparameter():
    text = repr(gc.adamw(1e-3))
    assert text.startswith("adamw(learning_rate=0.001")
    for part in (
        "scale_by_adam(b1=0.9, b2=0.999, eps=1e-08",
        "add_decoupled_weight_decay(weight_decay=0.0001",
        "scale_by_learning_rate(learning_rate=0.001",
    ):
        assert part in text


def test_hyperparameters_read_back_by_name():
    tx = gc.adamw(3e-4, b1=0.8, weight_decay=0.1)
    assert tx.learning_rate == 3e-4 and tx.b1 == 0.8 and tx.b2 == 0.999 and tx.weight_decay == 0.1
    assert gc.scale_by_adam(eps=1e-6).eps == 1e-6
    with pytest.raises(AttributeError, match="no hyperparameter 'momentum_decay'"):
        _ = tx.momentum_decay


def test_equal_arguments_give_equal_transformations():
    assert gc.adamw(1e-3) == gc.adamw(1e-3)
    assert hash(gc.adamw(1e-3)) == hash(gc.adamw(1e-3))
    assert gc.adamw(1e-3) != gc.adamw(2e-3)
    assert gc.adam(1e-3) != gc.adamw(1e-3)
    assert gc.scale_by_adam() == gc.scale_by_adam(0.9, 0.999)


def test_transformations_are_immutable():
    tx = gc.scale_by_adam()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.b1 = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        gc.adamw(1e-3).b1 = 0.5


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.adam(-1.0), r"learning_rate must be in \[0, inf\), got -1.0"),
        (lambda: gc.scale_by_adam(b1=1.0), r"b1 must be in \[0, 1\), got 1.0"),
        (lambda: gc.scale_by_adam(b2=-0.1), r"b2 must be in \[0, 1\)"),
        (lambda: gc.scale_by_adam(eps=-1e-8), r"eps must be in \[0, inf\)"),
        (lambda: gc.clip_by_global_norm(0.0), r"max_norm must be in \(0, inf\)"),
        (lambda: gc.clip_by_global_norm(-1.0), r"max_norm must be in \(0, inf\)"),
        (lambda: gc.adamw(1e-3, weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
        (lambda: gc.sgd(0.1, momentum=1.5), r"momentum must be in \[0, 1\]"),
        (lambda: gc.scale_by_adam(mu_dtype=jnp.int32), r"mu_dtype must be a floating dtype"),
        (lambda: gc.adam("fast"), r"learning_rate must be a number"),
        (lambda: gc.scale_by_adam(b1=float("nan")), r"b1 must not be NaN"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_state_fields_are_read_by_name_from_a_whole_chain():
    tx = gc.with_live_hyperparams(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(0.01)))
    params = mixed_params()
    state = tx.init(params)
    grads = gradient_stream(params, 1)[0]
    _, state = tx.update(grads, state, params)
    assert gc.tree_get(state, "mu").keys() == params.keys()
    assert float(gc.tree_get(state, "learning_rate")) == pytest.approx(0.01)
    assert float(gc.tree_get(state, "global_norm")) == pytest.approx(float(gc.global_norm(grads)))
    assert int(state.adamw.scale_by_adam.count) == 1
    with pytest.raises(KeyError, match="'count' is ambiguous"):
        gc.tree_get(state, "count")
    with pytest.raises(KeyError, match="no state field"):
        gc.tree_get(state, "momentum_buffer")
    paths = [p for p, _ in gc.tree_get_all_with_path(state, "count")]
    assert "state.adamw.scale_by_adam.count" in paths


def test_default_layout_is_optax_and_names_the_option_for_hyperparameters():
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(0.01))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(0.01)).init(params)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    assert paths == [p for p, _ in jax.tree_util.tree_flatten_with_path(reference)[0]]
    assert isinstance(state[0], gc.EmptyState) and isinstance(state[1][2], gc.EmptyState)
    assert isinstance(state[1][0], gc.ScaleByAdamState) and state[1][0].hyperparams is None
    with pytest.raises(KeyError, match="with_live_hyperparams"):
        gc.tree_get(state, "learning_rate")
    with pytest.raises(KeyError, match="with_live_hyperparams"):
        gc.tree_set(state, learning_rate=0.5)


def test_tree_set_changes_a_hyperparameter_without_recompiling():
    tx = gc.with_live_hyperparams(gc.sgd(0.1))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(None)
        u, s = tx.update({"w": jnp.ones(3)}, s, p)
        return gc.apply_updates(p, u), s

    params, state = step(params, state)
    state = gc.tree_set(state, learning_rate=0.5)
    params, state = step(params, state)
    np.testing.assert_allclose(params["w"], 1 - 0.1 - 0.5, rtol=1e-6)
    assert len(traces) == 1


def test_gradchain_transform_inside_optax_chain():
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, 20)
    ours, _ = run(
        optax.chain(gc.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale(-0.01)),
        params,
        grads,
        optax.apply_updates,
    )
    ref, _ = run(
        optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.scale(-0.01)),
        params,
        grads,
        optax.apply_updates,
    )
    assert_trees_close(ours[-1], ref[-1])


def test_optax_transform_inside_gradchain_chain():
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, 20)
    tx = gc.chain(optax.clip_by_global_norm(1.0), gc.adam(0.01))
    ours, state = run(tx, params, grads, gc.apply_updates)
    ref, _ = run(
        optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01)),
        params,
        grads,
        optax.apply_updates,
    )
    assert_trees_close(ours[-1], ref[-1])
    assert state.names[0] == "clip_by_global_norm"


def test_updates_with_another_structure_name_the_first_differing_path():
    tx = gc.adam(1e-3)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(
        ValueError, match=r"first difference at leaf 1: updates has \['c'\], state.mu has \['b'\]"
    ):
        tx.update({"a": jnp.ones(2), "c": jnp.ones(3)}, state, params)
    with pytest.raises(ValueError, match=r"differ in shape at \['b'\]: \(4,\) vs \(3,\)"):
        tx.update({"a": jnp.ones(2), "b": jnp.ones(4)}, state, params)


def test_weight_decay_without_params_is_a_clear_error():
    tx = gc.adamw(1e-3)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="add_decoupled_weight_decay needs the current parameters"):
        tx.update(params, tx.init(params))


def test_a_chain_rejects_a_state_it_did_not_make():
    with pytest.raises(ValueError, match="expected the state made by this chain's init"):
        gc.adam(1e-3).update(
            {"w": jnp.ones(2)}, gc.sgd(0.1, momentum=0.9).init({"w": jnp.ones(2)}).states[0]
        )


def test_integer_params_are_rejected_with_their_path():
    with pytest.raises(TypeError, match=r"parameter \['steps'\] has dtype int32"):
        gc.adam(1e-3).init({"w": jnp.ones(2), "steps": jnp.zeros((), jnp.int32)})


def test_init_from_shape_dtype_structs_matches_init_from_arrays():
    params = mixed_params()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    for tx in (gc.adamw(1e-3), gc.sgd(0.1, momentum=0.9), gc.clip_by_global_norm(1.0)):
        a, b = tx.init(abstract), tx.init(params)
        assert jax.tree.structure(a) == jax.tree.structure(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.shape == y.shape and x.dtype == y.dtype
            np.testing.assert_array_equal(x, y)


def test_step_counter_saturates_instead_of_wrapping():
    top = jnp.iinfo(jnp.int32).max
    assert int(gc.safe_increment(jnp.asarray(top - 1, jnp.int32))) == top
    assert int(gc.safe_increment(jnp.asarray(top, jnp.int32))) == top


def test_adam_stays_finite_and_correct_with_a_counter_at_the_limit():
    tx = gc.scale_by_adam()
    params = {"w": jnp.ones(3)}
    state = dataclasses.replace(
        tx.init(params), count=jnp.asarray(jnp.iinfo(jnp.int32).max, jnp.int32)
    )
    u, state = jax.jit(tx.update)({"w": jnp.full(3, 2.0)}, state)
    # bias corrections are 1 at t = 2^31 - 1: u = m/(sqrt(v) + eps) with m = 0.1*2, v = 0.001*4
    np.testing.assert_allclose(u["w"], 0.2 / (np.sqrt(0.004) + 1e-8), rtol=1e-5)
    assert int(state.count) == jnp.iinfo(jnp.int32).max


def test_second_call_does_not_recompile():
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3))
    params = mixed_params()
    traces = []

    @jax.jit
    def update(g, s, p):
        traces.append(None)
        return tx.update(g, s, p)

    state = tx.init(params)
    for g in gradient_stream(params, 3):
        _, state = update(g, state, params)
    assert len(traces) == 1


def test_identity_and_apply_updates_keep_dtypes():
    params = mixed_params()
    u, _ = gc.identity().update(params, gc.identity().init(params))
    new = gc.apply_updates(params, u)
    assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, params)
    np.testing.assert_allclose(new["vector"], 2 * params["vector"])


def test_every_public_name_is_exported():
    missing = [n for n in gc.__all__ if not hasattr(gc, n)]
    assert not missing


@gc.named_optimizer
def _clipped_sgd(learning_rate, max_norm=1.0, *, momentum=None):
    """A test optimizer."""
    parts = [gc.clip_by_global_norm(max_norm)]
    if momentum is not None:
        parts.append(gc.trace(momentum))
    return [*parts, gc.scale_by_learning_rate(learning_rate)]


def test_named_optimizer_records_the_bound_call_once():
    tx = _clipped_sgd(0.1, momentum=0.9)
    assert tx.name == "_clipped_sgd"
    assert tx.config == {"learning_rate": 0.1, "max_norm": 1.0, "momentum": 0.9}
    assert repr(tx).startswith("_clipped_sgd(learning_rate=0.1, max_norm=1.0, momentum=0.9) = ")
    assert tx.max_norm == 1.0 and tx.learning_rate == 0.1
    assert [t.name for t in tx.transforms] == [
        "clip_by_global_norm",
        "trace",
        "scale_by_learning_rate",
    ]
    assert _clipped_sgd(0.1) == _clipped_sgd(learning_rate=0.1, max_norm=1.0)
    signature = inspect.signature(_clipped_sgd)
    assert str(
        signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()]
        )
    ) == ("(learning_rate, max_norm=1.0, *, momentum=None) -> 'Chain'")
    # An unannotated learning rate is annotated as optax annotates it: a schedule is accepted.
    assert signature.parameters["learning_rate"].annotation == gc.ScalarOrSchedule
    assert _clipped_sgd.__doc__ == "A test optimizer."
    with pytest.raises(TypeError, match=r"_clipped_sgd\(\): missing a required argument"):
        _clipped_sgd()
