"""The optax protocol, both ways: optax-style construction, unpacking, states and injection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}


def _grads(params):
    return jax.tree.map(lambda p: 2 * p + 0.1, params)


def test_a_transformation_is_built_from_two_functions_positionally_or_by_keyword():
    init = lambda params: gc.EmptyState()
    update = lambda updates, state, params=None: (jax.tree.map(lambda g: -g, updates), state)
    for tx in (
        gc.GradientTransformation(init, update),
        gc.GradientTransformation(init=init, update=update),
    ):
        assert isinstance(tx, gc.GradientTransformation)
        assert not isinstance(tx, gc.GradientTransformationExtraArgs)
        assert tx.init is init and tx.update is update
        out, _ = gc.chain(tx, gc.scale(2.0)).update(
            PARAMS, gc.chain(tx, gc.scale(2.0)).init(PARAMS)
        )
        np.testing.assert_array_equal(out["w"], -2 * PARAMS["w"])


def test_every_transformation_unpacks_and_indexes_like_optax_namedtuple():
    tx = gc.adam(1e-3)
    init, update = tx
    assert (init, update) == (tx[0], tx[1]) == (tx.init, tx.update)
    assert len(tx) == 2
    assert isinstance(tx, gc.GradientTransformationExtraArgs)


def test_with_extra_args_support_wraps_only_what_needs_it():
    plain = gc.GradientTransformation(gc.init_empty_state, lambda u, s, p=None: (u, s))
    wrapped = gc.with_extra_args_support(plain)
    assert isinstance(wrapped, gc.GradientTransformationExtraArgs)
    assert wrapped.update(PARAMS, wrapped.init(PARAMS), loss=1.0)[0] is PARAMS
    adam = gc.adam(1e-3)
    assert gc.with_extra_args_support(adam) is adam


def test_stateless_transformations_match_optax():
    f = lambda u, p: jax.tree.map(lambda a, b: a + 0.1 * b, u, p)
    ours, theirs = gc.stateless(f), optax.stateless(f)
    np.testing.assert_array_equal(
        ours.update(PARAMS, ours.init(PARAMS), PARAMS)[0]["w"],
        theirs.update(PARAMS, theirs.init(PARAMS), PARAMS)[0]["w"],
    )
    leafwise = gc.stateless_with_tree_map(lambda u, p: u * 3 if p is None else u + p)
    assert leafwise.update(PARAMS, None)[0]["b"] == 1.5
    assert leafwise.update(PARAMS, None, PARAMS)[0]["b"] == 1.0


def test_named_chain_keeps_each_state_under_its_name():
    tx = gc.named_chain(("clip", gc.clip_by_global_norm(1.0)), ("adam", gc.adam(0.1)))
    state = tx.init(PARAMS)
    assert list(state) == ["clip", "adam"]
    reference = optax.named_chain(
        ("clip", optax.clip_by_global_norm(1.0)), ("adam", optax.adam(0.1))
    )
    ref_state = reference.init(PARAMS)
    step, ref_step = jax.jit(tx.update), jax.jit(reference.update)
    for _ in range(5):
        u, state = step(_grads(PARAMS), state)
        v, ref_state = ref_step(_grads(PARAMS), ref_state)
        # Adam's update is ~0.1 here: a few float32 ulps of rounding in the moments.
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-5)
    with pytest.raises(ValueError, match="unique names"):
        gc.named_chain(("a", gc.scale(1.0)), ("a", gc.scale(2.0)))


def test_a_chain_state_is_a_tuple_indexed_by_position():
    state = gc.chain(gc.clip(1.0), gc.adam(0.1)).init(PARAMS)
    assert isinstance(state, tuple) and len(state) == 2
    assert isinstance(state[1][0], gc.ScaleByAdamState)
    assert set(optax.ScaleByAdamState._fields) <= set(vars(state[1][0]))


def test_a_state_indexes_by_position_over_optax_fields_as_optax_namedtuple():
    params = {"w": jnp.ones((3, 2))}
    ours = gc.with_live_hyperparams(gc.scale_by_adam()).init(params)
    theirs = optax.scale_by_adam().init(params)
    assert ours.hyperparams is not None  # an extra: it takes no position
    for i, name in enumerate(optax.ScaleByAdamState._fields):
        assert ours[i] is getattr(ours, name)
        assert jax.tree.structure(ours[i]) == jax.tree.structure(theirs[i])
    with pytest.raises(IndexError):
        ours[len(optax.ScaleByAdamState._fields)]


def test_a_partition_state_indexes_by_position_and_by_label():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    labels = {"w": "a", "b": "s"}
    state = gc.partition({"a": gc.adam(0.1), "s": gc.sgd(0.1)}, labels).init(params)
    ref = optax.partition({"a": optax.adam(0.1), "s": optax.sgd(0.1)}, labels).init(params)
    # optax's path to Adam's mu: PartitionState -> inner_states -> MaskedState -> chain -> mu.
    assert state[0]["a"][0][0][1]["w"].shape == ref[0]["a"][0][0][1]["w"].shape
    assert isinstance(state[0]["a"][0][0][1]["b"], gc.MaskedNode)
    assert state["a"] is state.inner_states["a"].inner_state
    # An integer label is a label first.
    by_int = gc.partition({0: gc.adam(0.1), 1: gc.sgd(0.1)}, {"w": 0, "b": 1}).init(params)
    assert by_int[0] is by_int.inner_states[0].inner_state


@pytest.mark.parametrize(
    "name", ["scale", "clip", "clip_by_global_norm", "clip_by_block_rms", "add_decayed_weights"]
)
def test_transformations_optax_keeps_stateless_take_no_state(name):
    tx = getattr(gc, name)(0.5)
    out, state = tx.update(PARAMS, None, PARAMS)
    expected, _ = getattr(optax, name)(0.5).update(PARAMS, None, PARAMS)
    assert state is None
    np.testing.assert_allclose(out["w"], expected["w"], rtol=1e-6)


def test_global_norm_takes_updates_by_keyword():
    assert gc.global_norm(updates=PARAMS) == pytest.approx(float(optax.global_norm(PARAMS)))


@pytest.mark.parametrize("injector", [gc.inject_hyperparams, optax.inject_hyperparams])
def test_injected_learning_rate_is_read_and_written_between_jitted_steps(injector):
    """gradchain's and optax's inject_hyperparams over gradchain's adam both follow optax's
    inject_hyperparams over optax's adam, including a learning rate changed mid-run."""
    ours = injector(gc.adam)(learning_rate=0.1, b1=0.8)
    theirs = optax.inject_hyperparams(optax.adam)(learning_rate=0.1, b1=0.8)
    step_ours, step_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    s_ours, s_theirs = ours.init(PARAMS), theirs.init(PARAMS)
    p_ours = p_theirs = PARAMS
    for k in range(6):
        if k == 3:
            s_ours.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
            s_theirs.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
        u, s_ours = step_ours(_grads(p_ours), s_ours)
        p_ours = gc.apply_updates(p_ours, u)
        v, s_theirs = step_theirs(_grads(p_theirs), s_theirs)
        p_theirs = optax.apply_updates(p_theirs, v)
        np.testing.assert_allclose(p_ours["w"], p_theirs["w"], rtol=1e-5)
    assert float(s_ours.hyperparams["learning_rate"]) == pytest.approx(0.01)
    # Changing the value does not recompile more than optax's own injected adam does.
    assert step_ours._cache_size() <= step_theirs._cache_size()


def test_injected_schedule_static_args_and_dtype():
    tx = gc.inject_hyperparams(gc.sgd, hyperparam_dtype=jnp.bfloat16)(learning_rate=0.5)
    assert tx.init(PARAMS).hyperparams["learning_rate"].dtype == jnp.bfloat16
    schedule = gc.linear_schedule(1.0, 0.0, 4)
    tx = gc.inject_hyperparams(gc.sgd)(learning_rate=schedule)
    state = tx.init(PARAMS)
    for _ in range(2):
        _, state = tx.update(_grads(PARAMS), state)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="static_args"):
        gc.inject_hyperparams(gc.sgd, static_args=("nope",))
