"""Combinators: cross-checked against optax over jitted steps, and the guarantees they give."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, mixed_params
from training import bits_equal, linear_problem, scan_run, stream, unstack

import gradchain as gc

# Each cross-check wraps the *same* gradchain inner transformation in the gradchain combinator
# and in optax's, so that any difference comes from the combinator itself (the inner
# transformations are cross-checked against optax's in their own tests); the default float32
# tolerance of crosscheck.assert_trees_close then only covers the two programs' rounding.
STEPS = 24


def kept(moments) -> set:
    """The keys of a masked state's moments that hold an array (not a MaskedNode)."""
    return {k for k, v in moments.items() if not isinstance(v, gc.MaskedNode)}


def cross_check(ours, ref, params, grads, *, trajectory=False):
    """Runs the gradchain and the optax combinator over the same gradients in jitted scans."""
    a = scan_run(ours, params, grads, gc.apply_updates, trajectory)
    b = scan_run(ref, params, grads, optax.apply_updates, trajectory)
    return a, b


MASK = {"scalar": False, "vector": True, "matrix": True, "tensor": False, "bf16": True}


@functools.cache
def optax_masked_reference():
    params = mixed_params()
    ref, _ = scan_run(
        optax.masked(gc.adamw(0.01, weight_decay=0.1), MASK),
        params,
        stream(params, STEPS),
        optax.apply_updates,
    )
    return ref


# ---------------------------------------------------------------------------------------------
# masked


@pytest.mark.parametrize(
    "mask",
    [
        MASK,
        lambda p: {k: k in ("vector", "matrix", "bf16") for k in p},
        r"vector|matrix|bf16",
        gc.path_mask(include=r"vector|matrix|bf16"),
    ],
    ids=["tree", "callable", "regex", "path_mask"],
)
def test_masked_matches_optax_masked(mask):
    params = mixed_params()
    inner = gc.adamw(0.01, weight_decay=0.1)
    ours, state = scan_run(gc.masked(inner, mask), params, stream(params, STEPS), gc.apply_updates)
    assert_trees_close(ours, optax_masked_reference())
    assert kept(gc.tree_get(state, "mu")) == {"vector", "matrix", "bf16"}


def test_masked_with_a_prefix_mask_selects_whole_subtrees():
    params = {"encoder": {"w": jnp.ones(3), "b": jnp.ones(2)}, "decoder": {"w": jnp.ones(3)}}
    tx = gc.masked(gc.scale(-1.0), {"encoder": True, "decoder": False})
    updates, _ = tx.update(params, tx.init(params))
    assert (
        updates["encoder"]["w"].tolist() == [-1.0] * 3
        and updates["encoder"]["b"].tolist() == [-1.0] * 2
    )
    assert updates["decoder"]["w"].tolist() == [1.0] * 3


def test_masked_rejects_a_mask_of_another_structure():
    params = {"a": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match="masked: the mask's structure is not a prefix"):
        gc.masked(gc.scale(2.0), {"a": True, "c": False}).init(params)


def test_masked_rejects_a_traced_mask_with_a_clear_error():
    params = {"a": jnp.ones(2)}
    tx = gc.masked(gc.scale(2.0), lambda p: jax.tree.map(lambda x: x[0] > 0, p))
    with pytest.raises(ValueError, match="mask leaves must be concrete bools"):
        jax.jit(tx.update)(params, tx.init(params))


# ---------------------------------------------------------------------------------------------
# partition


LABELS = {"scalar": "sgd", "vector": "adam", "matrix": "adam", "tensor": "sgd", "bf16": "adam"}


def test_partition_matches_optax_partition():
    params = mixed_params()
    groups = {"adam": gc.adamw(0.01, weight_decay=0.1), "sgd": gc.sgd(0.05, momentum=0.9)}
    (ours, state), (ref, ref_state) = cross_check(
        gc.partition(groups, LABELS), optax.partition(groups, LABELS), params, stream(params, STEPS)
    )
    assert_trees_close(ours, ref)
    mu, ref_mu = (
        state["adam"].scale_by_adam.mu,
        ref_state.inner_states["adam"].inner_state.scale_by_adam.mu,
    )
    assert kept(mu) == {"vector", "matrix", "bf16"}
    assert_trees_close({k: mu[k] for k in kept(mu)}, {k: ref_mu[k] for k in kept(mu)}, what="mu")


def test_multi_transform_is_partition():
    assert gc.multi_transform is gc.partition


def test_partition_group_state_is_read_and_reset_by_label():
    params = mixed_params(bf16=False)
    labels = gc.path_labels({"vector|matrix": "adam"}, default="sgd")
    tx = gc.partition({"adam": gc.adam(0.01), "sgd": gc.sgd(0.1, momentum=0.9)}, labels)
    tx = gc.with_live_hyperparams(tx)
    _, state = scan_run(tx, params, stream(params, 3), gc.apply_updates)
    assert int(state["adam"].scale_by_adam.count) == 3
    assert kept(state["adam"].scale_by_adam.mu) == {"vector", "matrix"}
    assert kept(state["sgd"].trace.trace) == {"scalar", "tensor"}
    assert float(gc.tree_get(state["sgd"], "learning_rate")) == pytest.approx(0.1)

    reset = tx.reset(state, "adam", params)
    assert int(reset["adam"].scale_by_adam.count) == 0
    assert all(not np.any(m) for m in jax.tree.leaves(reset["adam"].scale_by_adam.mu))
    assert bits_equal(reset["sgd"], state["sgd"])


def test_partition_changes_one_groups_learning_rate_by_label():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    tx = gc.partition({"fast": gc.sgd(0.1), "slow": gc.sgd(0.1)}, {"w": "fast", "b": "slow"})
    tx = gc.with_live_hyperparams(tx)
    state = tx.init(params)
    state = state.with_group("slow", gc.tree_set(state["slow"], learning_rate=0.01))
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.ones_like, params), state, params)
    np.testing.assert_allclose(updates["w"], -0.1)
    np.testing.assert_allclose(updates["b"], -0.01)


def test_partition_names_a_parameter_whose_label_has_no_transformation():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError, match=r"the parameter \['w'\] has the label 'adam', which has no transformation"
    ):
        gc.partition({"sgd": gc.sgd(0.1)}, {"w": "adam", "b": "sgd"}).init(params)


def test_selective_transform_keeps_no_state_for_frozen_leaves():
    params = {"w": jnp.ones(2), "b": jnp.ones(3)}
    tx = gc.selective_transform(gc.adam(0.1), freeze_mask={"w": False, "b": True})
    state = tx.init(params)
    assert kept(state["train"].scale_by_adam.mu) == {"w"}
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert np.all(updates["b"] == 0) and np.all(updates["w"] != 0)


# ---------------------------------------------------------------------------------------------
# Non-finite gradients


def test_apply_if_finite_matches_optax_including_its_counters():
    params = mixed_params(bf16=False)
    grads = stream(params, STEPS, nan_at=(3, 4, 10, 11, 12, 20))
    inner = gc.adam(0.01)
    (ours, state), (ref, ref_state) = cross_check(
        gc.apply_if_finite(inner, 3), optax.apply_if_finite(inner, 3), params, grads
    )
    assert_trees_close(ours, ref)
    for name in ("notfinite_count", "total_notfinite", "last_finite"):
        assert getattr(state, name) == getattr(ref_state, name), name
    assert int(state.total_notfinite) == 6


def test_apply_if_finite_gives_up_after_max_consecutive_errors_and_resets_after_a_good_step():
    tx = gc.apply_if_finite(gc.sgd(1.0), max_consecutive_errors=2)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    update = jax.jit(tx.update)
    nan, good = {"w": jnp.array([jnp.nan, 1.0])}, {"w": jnp.ones(2)}
    seen = []
    for g in (nan, nan, nan, good, nan):
        u, state = update(g, state, params)
        seen.append((bool(jnp.isnan(u["w"][0])), int(state.notfinite_count)))
    # skipped, skipped, given up (NaN passes), good resets the count, skipped again
    assert seen == [(False, 1), (False, 2), (True, 3), (False, 0), (False, 1)]
    assert int(state.total_notfinite) == 4


def test_nan_steps_leave_params_and_state_exactly_as_if_they_were_omitted():
    params = mixed_params()
    bad = (7, 23, 24, 61, 90)
    grads = unstack(stream(params, 100, nan_at=bad), 100)
    omitted = [g for i, g in enumerate(grads) if i not in bad]
    tx = gc.apply_if_finite(
        gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(0.01, weight_decay=0.1)), 3
    )

    # One compiled step for both runs: the claim is about the same program skipping steps.
    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    def train(grads):
        p, s = params, tx.init(params)
        for g in grads:
            p, s = step(p, s, g)
        return p, s

    (injected_p, injected_s), (clean_p, clean_s) = train(grads), train(omitted)
    assert bits_equal(injected_p, clean_p)
    assert bits_equal(injected_s.inner_state, clean_s.inner_state)
    assert int(injected_s.total_notfinite) == 5 and int(clean_s.total_notfinite) == 0


def test_zero_nans_matches_optax():
    params = mixed_params(bf16=False)
    grads = stream(params, STEPS, nan_at=range(2, STEPS, 3))
    (ours, state), (ref, _) = cross_check(
        gc.chain(gc.zero_nans(), gc.adam(0.01)),
        optax.chain(optax.zero_nans(), gc.adam(0.01)),
        params,
        grads,
    )
    assert_trees_close(ours, ref)
    assert all(
        bool(v) for v in jax.tree.leaves(state.zero_nans.found_nan)
    )  # the last step had NaNs


@pytest.mark.parametrize(
    "ours, ref",
    [
        (gc.set_to_zero(), optax.set_to_zero()),
        (gc.freeze(MASK), optax.freeze(MASK)),
        (gc.freeze(True), optax.freeze(True)),
    ],
    ids=["set_to_zero", "freeze", "freeze_all"],
)
def test_zeroing_transforms_match_optax(ours, ref):
    params = mixed_params()
    (a, _), (b, _) = cross_check(
        gc.chain(ours, gc.sgd(0.1)), optax.chain(ref, gc.sgd(0.1)), params, stream(params, STEPS)
    )
    assert_trees_close(a, b)


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


def test_multisteps_matches_optax_multisteps():
    params = mixed_params()
    inner = gc.adamw(0.01, weight_decay=0.1)
    ours, ref = gc.MultiSteps(inner, 3), optax.MultiSteps(inner, 3)
    (traj, state), (ref_traj, ref_state) = cross_check(
        ours, ref.gradient_transformation(), params, stream(params, STEPS), trajectory=True
    )
    assert_trees_close(traj, ref_traj)  # after every micro-batch, not only the last
    assert int(state.gradient_step) == int(ref_state.gradient_step) == STEPS // 3
    assert bool(ours.has_updated(state)) and bool(ref.has_updated(ref_state))


@pytest.mark.parametrize("use_grad_mean, expected", [(True, [-2.0, -4.0]), (False, [-4.0, -12.0])])
def test_multisteps_follows_a_schedule_of_k_and_skips_rejected_micro_batches(
    use_grad_mean, expected
):
    params = {"w": jnp.zeros(2)}
    tx = gc.MultiSteps(
        gc.sgd(1.0),
        lambda step: jnp.where(step < 1, 2, 3),
        use_grad_mean=use_grad_mean,
        should_skip_update_fn=gc.skip_not_finite,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    emitted = []
    for g in [1.0, 3.0, jnp.nan, 2.0, 4.0, 6.0]:
        u, state = update({"w": jnp.full(2, g)}, state, params)
        emitted.append(float(u["w"][0]))
    # k = 2 over (1, 3); the NaN micro-batch is skipped; then k = 3 over (2, 4, 6)
    assert emitted == [0.0, expected[0], 0.0, 0.0, 0.0, expected[1]]
    assert int(state.skip_state["num_not_finite"]) == 0 and int(state.gradient_step) == 2


@pytest.mark.parametrize(
    "make",
    [lambda: gc.sgd(0.1, momentum=0.9), lambda: gc.adamw(0.01, weight_decay=0.1)],
    ids=["sgd", "adamw"],
)
def test_accumulating_4_micro_batches_equals_one_step_on_the_whole_batch(make):
    params, x, y, loss = linear_problem()
    micro = [(x[i::4], y[i::4]) for i in range(4)]
    big, acc = make(), gc.MultiSteps(make(), 4)

    @jax.jit
    def train(params):
        def big_step(carry, _):
            p, s = carry
            u, s = big.update(jax.grad(loss)(p, x, y), s, p)
            return (gc.apply_updates(p, u), s), None

        def acc_step(carry, _):
            p, s = carry
            for xb, yb in micro:
                u, s = acc.update(jax.grad(loss)(p, xb, yb), s, p)
                p = gc.apply_updates(p, u)
            return (p, s), None

        (big_p, _), _ = jax.lax.scan(big_step, (params, big.init(params)), length=5)
        (acc_p, acc_s), _ = jax.lax.scan(acc_step, (params, acc.init(params)), length=5)
        return big_p, acc_p, acc_s

    big_p, acc_p, acc_s = train(params)
    assert int(acc_s.gradient_step) == 5
    # The mean of four micro-batch gradients equals the whole-batch gradient up to float32
    # rounding of the two summation orders (~1e-7 relative); five steps keep it below 1e-6.
    assert_trees_close(acc_p, big_p, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Parameter averaging


def test_params_ema_is_optax_ema_fed_with_the_parameters():
    params = mixed_params(bf16=False)
    traj, state = scan_run(
        gc.chain(gc.adam(0.05), gc.params_ema(0.9)),
        params,
        stream(params, STEPS),
        gc.apply_updates,
        trajectory=True,
    )

    @jax.jit
    def references(traj):
        def step(carry, p):
            ema_state, incremental = carry
            _, ema_state = optax.ema(0.9, debias=False).update(p, ema_state)
            return (ema_state, optax.incremental_update(p, incremental, 1 - 0.9)), None

        start = optax.EmaState(count=jnp.zeros([], jnp.int32), ema=params)
        (ema_state, incremental), _ = jax.lax.scan(step, (start, params), traj)
        return ema_state.ema, incremental

    ema, incremental = references(traj)
    assert_trees_close(gc.tree_get(state, "params_ema"), ema, what="params_ema")
    assert_trees_close(gc.tree_get(state, "params_ema"), incremental, what="params_ema")


def test_params_ema_of_bfloat16_params_is_kept_in_float32_with_the_option():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    # By default the average has the parameters' dtype (the one policy for every transform).
    assert gc.params_ema(0.999).init(params).params_ema["w"].dtype == jnp.bfloat16
    tx = gc.with_float32_state(gc.params_ema(0.999))
    state = tx.init(params)
    assert state.params_ema["w"].dtype == jnp.float32
    _, state = tx.update({"w": jnp.full(4, -1.0, jnp.bfloat16)}, state, params)
    np.testing.assert_allclose(state.params_ema["w"], 0.999, rtol=1e-6)  # moves, unlike bf16


def test_params_ema_asks_for_values_when_given_only_shapes():
    abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    with pytest.raises(
        TypeError, match=r"for an abstract state use jax.eval_shape\(tx.init, params\)"
    ):
        gc.params_ema(0.9).init(abstract)
    state = jax.eval_shape(gc.params_ema(0.9).init, {"w": jnp.ones(3)})
    assert state.params_ema["w"].shape == (3,)


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_matches_optax_lookahead(reset_state):
    params = mixed_params(bf16=False)
    grads = stream(params, STEPS)
    fast = gc.adam(0.05)
    ours = gc.lookahead(fast, sync_period=5, slow_step_size=0.5, reset_state=reset_state)
    ref = optax.lookahead(fast, sync_period=5, slow_step_size=0.5, reset_state=reset_state)
    a, state = scan_run(ours, gc.LookaheadParams.init_synced(params), grads, gc.apply_updates)
    b, _ = scan_run(ref, optax.LookaheadParams.init_synced(params), grads, optax.apply_updates)
    assert_trees_close(a.fast, b.fast, what="fast")
    assert_trees_close(a.slow, b.slow, what="slow")
    assert int(state.steps_since_sync) == STEPS % 5


def test_lookahead_without_lookahead_params_is_a_clear_error():
    tx = gc.lookahead(gc.sgd(0.1), sync_period=2, slow_step_size=0.5)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"needs the parameters as gc.LookaheadParams"):
        tx.update(params, tx.init(params), params)


# ---------------------------------------------------------------------------------------------
# Construction


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: gc.apply_if_finite(gc.sgd(0.1), -1),
            r"max_consecutive_errors must be an int >= 0, got -1",
        ),
        (lambda: gc.MultiSteps(gc.sgd(0.1), 0), r"every_k_schedule must be an int >= 1"),
        (lambda: gc.lookahead(gc.sgd(0.1), 0, 0.5), r"sync_period must be an int >= 1, got 0"),
        (lambda: gc.lookahead(gc.sgd(0.1), 2, 1.5), r"slow_step_size must be in \[0, 1\]"),
        (lambda: gc.params_ema(1.5), r"decay must be in \[0, 1\]"),
        (lambda: gc.partition({}, {}), r"transforms must be a non-empty mapping"),
        (lambda: gc.path_mask(exclude="bias("), r"exclude is not a valid regular expression"),
        (lambda: gc.path_mask(min_ndim=-1), r"min_ndim must be None or an int >= 0"),
    ],
)
def test_invalid_arguments_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_combinators_are_data():
    assert gc.masked(gc.adam(0.1), MASK) == gc.masked(gc.adam(0.1), MASK)
    assert gc.MultiSteps(gc.adam(0.1), 4) != gc.MultiSteps(gc.adam(0.1), 2)
    assert gc.MultiSteps(gc.adam(0.1), 4).every_k_schedule == 4
    assert repr(gc.apply_if_finite(gc.sgd(0.1), 3)).startswith(
        "apply_if_finite(inner=sgd(learning_rate=0.1"
    )
    assert "path_mask(exclude='bias')" in repr(gc.masked(gc.sgd(0.1), gc.path_mask(exclude="bias")))
