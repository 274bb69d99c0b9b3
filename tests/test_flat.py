"""flatten: the same optimizer over one flat buffer per dtype, with its state readable by name."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc

STEPS = 20


def _schedule(count):
    # Warmup then cosine decay, written out so this file does not depend on gradchain.schedules.
    count = jnp.asarray(count, jnp.float32)
    warm = 1e-2 * count / 5
    cosine = 1e-2 * 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip(count - 5, 0, 15) / 15))
    return jnp.where(count < 5, warm, cosine)


def _matrices_only(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


CHAINS = {
    "adamw": lambda: gc.adamw(1e-2, weight_decay=0.1),
    "clip+adamw+schedule": lambda: gc.chain(
        gc.clip_by_global_norm(1.0), gc.adamw(_schedule, weight_decay=0.1)
    ),
    "adamw masked": lambda: gc.adamw(1e-2, weight_decay=0.1, mask=_matrices_only),
    "nadamw bf16 moments": lambda: gc.adamw(1e-2, mu_dtype=jnp.bfloat16, nesterov=True),
    "sgd+nesterov": lambda: gc.sgd(0.05, momentum=0.9, nesterov=True),
    "clip+sgd": lambda: gc.chain(gc.clip_by_global_norm(0.5), gc.sgd(0.05, momentum=0.9)),
    "lion": lambda: gc.lion(1e-3, weight_decay=0.1),
    "amsgrad": lambda: gc.amsgrad(1e-2),
    "adamaxw": lambda: gc.adamaxw(1e-2),
    "radam": lambda: gc.radam(1e-2),
    "nadam": lambda: gc.nadam(1e-2),
    "adagrad": lambda: gc.adagrad(1e-2),
    "signum": lambda: gc.signum(1e-3),
    "sign_sgd": lambda: gc.sign_sgd(1e-3),
    "adabelief": lambda: gc.adabelief(1e-2, nesterov=True),
    "yogi": lambda: gc.yogi(1e-2),
    "adadelta": lambda: gc.chain(gc.scale_by_adadelta(), gc.scale_by_learning_rate(0.5)),
    "adan": lambda: gc.adan(1e-2),
    "rprop": lambda: gc.rprop(1e-3, delay_step=False),
    "optimistic_adam_v2": lambda: gc.optimistic_adam_v2(1e-2),
    "ademamix+warmups": lambda: gc.ademamix(1e-2, b3=0.99, alpha_warmup=5, b3_warmup=8),
    "simplified_ademamix": lambda: gc.simplified_ademamix(1e-3, alpha=2.0),
    "adopt+nesterov": lambda: gc.adopt(1e-2, b2=0.99, nesterov=True),
    "normalize+sgd+apply_every": lambda: gc.chain(
        gc.normalize_by_update_norm(), gc.sgd(0.05, momentum=0.9), gc.apply_every(2)
    ),
}


@pytest.mark.parametrize("name", CHAINS)
def test_flatten_gives_the_numbers_of_the_unflattened_chain(name):
    params = mixed_params()
    grads = gradient_stream(params, STEPS, scale=3.0)
    expected, expected_state = run(CHAINS[name](), params, grads, gc.apply_updates)
    actual, actual_state = run(gc.flatten(CHAINS[name]()), params, grads, gc.apply_updates)
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert_trees_close(a, e, what=f"params after step {step + 1}")
    # The moments, viewed per leaf, are those of the unflattened chain.
    assert_trees_close(
        gc.flatten(CHAINS[name]()).layout(params).view(actual_state).inner,
        expected_state,
        what="state",
    )


def test_large_leaves_keep_their_own_arrays_and_the_numbers():
    params = mixed_params()
    grads = gradient_stream(params, STEPS, scale=3.0)
    tx = CHAINS["clip+adamw+schedule"]
    expected, _ = run(tx(), params, grads, gc.apply_updates)
    actual, state = run(gc.flatten(tx(), min_size=15), params, grads, gc.apply_updates)
    assert_trees_close(actual[-1], expected[-1])
    # Leaves of 15 elements or more are their own buffers, named by path, shape kept; the
    # scalar and the vector share the float32 buffer.
    assert {k: v.shape for k, v in gc.tree_get(state, "mu").items()} == {
        "bf16": (4, 6),
        "float32": (1 + 7,),
        "matrix": (5, 3),
        "tensor": (2, 3, 4),
    }
    viewed = gc.tree_get(gc.flatten(tx(), min_size=15).layout(params).view(state), "mu")
    assert jax.tree.map(jnp.shape, viewed) == jax.tree.map(jnp.shape, params)


def test_flattened_clip_and_adamw_match_optax():
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, STEPS, scale=3.0)
    tx = gc.flatten(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(_schedule, weight_decay=0.1)))
    reference = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(_schedule, weight_decay=0.1)
    )
    actual, _ = run(tx, params, grads, gc.apply_updates)
    expected, _ = run(reference, params, grads, optax.apply_updates)
    assert_trees_close(actual[-1], expected[-1])


def test_flat_state_is_read_by_name_as_buffers_or_as_the_params_tree():
    params = mixed_params()
    tx = gc.flatten(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-2)))
    tx = gc.with_live_hyperparams(tx)  # for the learning rate below
    state = tx.init(params)
    _, state = tx.update(gradient_stream(params, 1)[0], state, params)
    mu = gc.tree_get(state, "mu")
    # One buffer per parameter dtype; moments of bfloat16 parameters are bfloat16, as optax's.
    assert {k: (v.shape, v.dtype) for k, v in mu.items()} == {
        "bfloat16": ((24,), jnp.bfloat16),
        "float32": ((1 + 7 + 15 + 24,), jnp.float32),
    }
    assert float(gc.tree_get(state, "learning_rate")) == pytest.approx(1e-2)
    assert int(state.inner.adamw.scale_by_adam.count) == 1
    viewed = tx.layout(params).view(state)
    per_leaf = gc.tree_get(viewed, "nu")
    assert jax.tree.structure(per_leaf) == jax.tree.structure(params)
    assert per_leaf["matrix"].shape == (5, 3) and per_leaf["bf16"].dtype == jnp.bfloat16
    # The float32 buffer holds its leaves in tree order: matrix (15), scalar, tensor (24), vector.
    np.testing.assert_array_equal(per_leaf["vector"], gc.tree_get(state, "nu")["float32"][40:47])


@pytest.mark.parametrize("min_size", [None, 15])
def test_flatten_accepts_shape_dtype_structs_at_init(min_size):
    params = mixed_params()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    tx = gc.flatten(gc.adamw(1e-3), min_size=min_size)
    from_arrays = jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(params))
    from_structs = jax.tree.map(lambda x: (x.shape, x.dtype), tx.init(abstract))
    assert from_arrays == from_structs


def test_flatten_keeps_the_dtype_of_each_update():
    params = mixed_params()
    tx = gc.flatten(gc.adamw(1e-3))
    updates, _ = tx.update(gradient_stream(params, 1)[0], tx.init(params), params)
    assert jax.tree.map(lambda u: u.dtype, updates) == jax.tree.map(lambda p: p.dtype, params)


@pytest.mark.parametrize(
    "build, message",
    [
        (
            lambda: gc.chain(optax.scale_by_adam(), gc.scale_by_learning_rate(1e-3)),
            r"scale_by_adam is not known to give the same numbers on a flat buffer",
        ),
        (lambda: optax.adafactor(1e-3), r"is not known to give the same numbers"),
        (
            lambda: gc.chain(gc.add_decayed_weights(0.1, mask=_matrices_only), gc.adam(1e-3)),
            r"add_decoupled_weight_decay has a mask but runs on the flat buffers",
        ),
    ],
)
def test_flatten_refuses_what_would_change_meaning_on_a_flat_buffer(build, message):
    with pytest.raises(ValueError, match=message):
        gc.flatten(build())


def test_register_flat_safe_admits_a_coordinate_wise_transformation():
    @gc.base.transformation("negate")
    class Negate(gc.GradientTransformation):
        def init(self, params):
            return gc.EmptyState()

        def update(self, updates, state, params=None, **extra_args):
            return jax.tree.map(jnp.negative, updates), state

    with pytest.raises(ValueError, match="negate is not known"):
        gc.flatten(gc.chain(Negate(), gc.trace(0.9)))
    gc.register_flat_safe(Negate)
    try:
        params = mixed_params()
        grads = gradient_stream(params, 3)
        tx = gc.chain(Negate(), gc.trace(0.9))
        actual, _ = run(gc.flatten(tx), params, grads, gc.apply_updates)
        expected, _ = run(tx, params, grads, gc.apply_updates)
        assert_trees_close(actual[-1], expected[-1])
    finally:
        gc.flat._FLAT_SAFE.discard(Negate)


def _kernels(tx, params):
    state = tx.init(params)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    text = jax.jit(step).lower(params, state, params).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"= \S+ fusion\(", entry))


def test_flatten_compiles_one_kernel_per_leaf_where_the_tree_needs_several():
    # Compile time grows with the number of distinct kernels; flatten leaves one per leaf (cutting
    # the updates into the parameter), the tree needs the norm, both moments and the step.
    params = {f"w{i}": jnp.ones((8 + i,)) for i in range(24)}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3))
    flat, tree = _kernels(gc.flatten(tx), params), _kernels(tx, params)
    assert flat <= len(params) + 16  # plus a fixed few: the counters, the norm, the moments
    assert tree >= 3 * len(params)


# ---------------------------------------------------------------------------------------------
# Flat parameters: flat_layout


def _by_rank(params):
    return jax.tree.map(lambda p: "matrices" if p.ndim >= 2 else "vectors", params)


def test_an_optimizer_over_flat_parameters_gives_the_numbers_of_the_tree():
    params = mixed_params()
    grads = gradient_stream(params, STEPS, scale=3.0)
    layout = gc.flat_layout(params, labels=_by_rank)
    chain = lambda mask: gc.chain(
        gc.clip_by_global_norm(1.0), gc.adamw(_schedule, weight_decay=0.1, mask=mask)
    )
    expected, _ = run(chain(_matrices_only), params, grads, gc.apply_updates)
    flat_tx = chain(layout.mask(_matrices_only))
    actual, _ = run(
        flat_tx, layout.ravel(params), [layout.ravel(g) for g in grads], gc.apply_updates
    )
    assert sorted(layout.ravel(params)) == [
        "matrices/bfloat16",
        "matrices/float32",
        "vectors/float32",
    ]
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert_trees_close(layout.unravel(a), e, what=f"params after step {step + 1}")


@pytest.mark.parametrize("min_size", [None, 15])
def test_unravel_round_trips_and_keeps_each_dtype(min_size):
    params = mixed_params()
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    layout = gc.flat_layout(abstract, min_size=min_size)
    back = layout.unravel(layout.ravel(params))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_the_gradient_through_unravel_is_one_concatenation():
    params = {f"w{i}": jnp.full((3 + i,), 0.1 * i) for i in range(6)}
    layout = gc.flat_layout(params)

    def loss(tree):
        return sum(jnp.sum(jnp.sin(x) * (i + 1)) for i, x in enumerate(jax.tree.leaves(tree)))

    flat_grad = jax.grad(lambda f: loss(layout.unravel(f)))
    np.testing.assert_allclose(
        flat_grad(layout.ravel(params))["float32"],
        layout.ravel(jax.grad(loss)(params))["float32"],
        rtol=1e-6,
    )
    primitives = {e.primitive.name for e in jax.make_jaxpr(flat_grad)(layout.ravel(params)).eqns}
    # Slicing would transpose to one zero-padded copy of the whole buffer per leaf.
    assert "concatenate" in primitives and "pad" not in primitives


def test_a_mask_that_splits_a_buffer_names_two_of_its_leaves():
    layout = gc.flat_layout(mixed_params(bf16=False))
    with pytest.raises(
        ValueError, match=r"selects matrix but not scalar, which share the flat buffer 'float32'"
    ):
        layout.mask(_matrices_only)


def test_flatten_names_a_state_it_did_not_make():
    params = mixed_params()
    with pytest.raises(ValueError, match="expected the FlatState made by this flatten's init"):
        gc.flatten(gc.adamw(1e-3)).update(params, gc.adamw(1e-3).init(params), params)
