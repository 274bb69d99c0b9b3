"""Masks and labels by path: what they select, on plain, stacked (scanned) and flax trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from training import transformer_params

import gradchain as gc

DENSE = ["attn/query", "attn/key", "attn/value", "attn/out", "mlp/up", "mlp/down"]


def dense_kernels(stacked: bool, layers: int = 2) -> set:
    """The path strings of the transformer's dense weight matrices, written out."""
    blocks = ["layers"] if stacked else [f"layers/{i}" for i in range(layers)]
    return {f"{b}/{d}/kernel" for b in blocks for d in DENSE} | {"head/kernel"}


def selected_paths(mask_tree) -> set:
    paths = gc.tree_paths(mask_tree)
    return {p for p, on in zip(jax.tree.leaves(paths), jax.tree.leaves(mask_tree)) if on}


def decayed_paths(tx, params) -> set:
    """The leaves one step of ``tx`` changes when the gradient is zero: the decayed ones."""
    ones = jax.tree.map(jnp.ones_like, params)  # zero params would not move under decay
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, ones), tx.init(ones), ones)
    changed = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
    return selected_paths(changed)


def test_path_strings_join_keys_indices_and_attributes():
    tree = {"layers": [{"w": 1.0}, {"w": 2.0}], "head": (3.0,)}
    assert jax.tree.leaves(gc.tree_paths(tree)) == ["head/0", "layers/0/w", "layers/1/w"]
    assert jax.tree.leaves(gc.tree_paths(gc.LookaheadParams(fast={"a": 1.0}, slow={"a": 2.0}))) == [
        "fast/a",
        "slow/a",
    ]


@pytest.mark.parametrize("stacked", [False, True], ids=["per_layer", "stacked"])
def test_path_regex_decay_mask_decays_exactly_the_dense_matrices(stacked):
    params = transformer_params(stacked)
    tx = gc.adamw(0.1, weight_decay=0.5, mask=gc.path_mask(exclude=r"bias|norm|embed"))
    assert decayed_paths(tx, params) == dense_kernels(stacked)


@pytest.mark.parametrize("stacked", [False, True], ids=["per_layer", "stacked"])
def test_rank_mask_with_stacked_layers_declared_selects_the_same_matrices(stacked):
    params = transformer_params(stacked)
    mask = gc.path_mask(exclude="embed", min_ndim=2, stacked="layers" if stacked else None)
    assert selected_paths(mask(params)) == dense_kernels(stacked)


def test_rank_mask_counts_the_stacked_axis_unless_it_is_declared():
    params = transformer_params(stacked=True)
    undeclared = selected_paths(gc.path_mask(exclude="embed", min_ndim=2)(params))
    assert "layers/attn/query/bias" in undeclared and "layers/mlp_norm/scale" in undeclared
    experts = {"layers": {"experts": {"kernel": jnp.ones((4, 8, 3, 2))}, "bias": jnp.ones((4, 2))}}
    by_depth = gc.path_mask(min_ndim=2, stacked={"experts": 2, "layers": 1})
    assert selected_paths(by_depth(experts)) == {"layers/experts/kernel"}
    assert selected_paths(gc.path_mask(min_ndim=2, stacked={"layers": 3})(experts)) == set()


def test_a_plain_regex_is_a_mask_for_weight_decay_too():
    params = transformer_params(stacked=True)
    tx = gc.adamw(0.1, weight_decay=0.5, mask=r"kernel")
    assert decayed_paths(tx, params) == dense_kernels(stacked=True)


def test_path_labels_take_the_first_matching_pattern():
    params = transformer_params(stacked=True)
    labels = gc.path_labels({r"embed": "embedding", r"bias|norm": "no_decay"}, default="decay")(
        params
    )
    assert labels["embed"]["embedding"] == "embedding" and labels["pos_embed"] == "embedding"
    assert labels["layers"]["attn_norm"]["scale"] == "no_decay"
    assert labels["layers"]["mlp"]["up"]["kernel"] == "decay"


def test_path_labels_without_a_default_name_the_unmatched_parameter():
    with pytest.raises(ValueError, match=r"no pattern matches the parameter 'head/kernel'"):
        gc.path_labels({"bias": "no_decay"})({"head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}})


def test_masks_read_the_same_on_a_flax_state_and_on_its_arrays():
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.norm = nnx.LayerNorm(4, rngs=rngs)

    state = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
    mask = gc.path_mask(exclude=r"bias$|norm")
    on_variables = jax.tree.leaves(mask(state))
    on_arrays = jax.tree.leaves(mask(nnx.as_pure(state)))
    assert (
        on_variables == on_arrays == [False, True, False, False]
    )  # dense/bias, dense/kernel, norm/*


def test_a_mask_whose_leaves_are_not_bools_is_rejected():
    with pytest.raises(ValueError, match="mask leaves must be concrete bools, got 1"):
        gc.masked(gc.scale(2.0), {"w": 1}).init({"w": jnp.ones(2)})


def test_path_mask_is_comparable_data():
    assert gc.path_mask(exclude="bias") == gc.path_mask(exclude="bias")
    assert gc.path_mask(min_ndim=2, stacked={"layers": 1}) == gc.path_mask(
        min_ndim=2, stacked={"layers": 1}
    )
    assert repr(gc.path_mask(exclude="bias", min_ndim=2)) == "path_mask(exclude='bias', min_ndim=2)"
    assert np.array_equal(
        jax.tree.leaves(gc.path_mask(include=["a", "b"])({"a": 1, "b": 2, "c": 3})),
        [True, True, False],
    )


def test_a_callable_pytree_of_bools_is_a_mask_tree_not_a_mask_function():
    import equinox as eqx

    layer = eqx.nn.Linear(3, 2, key=jax.random.PRNGKey(0))
    params = eqx.filter(layer, eqx.is_array)
    mask = jax.tree.map(lambda x: x.ndim == 2, params)  # an eqx.nn.Linear of bools: callable
    tx = gc.masked(gc.scale(0.0), mask)
    updates, _ = tx.update(params, tx.init(params), params)
    assert np.all(updates.weight == 0) and np.array_equal(updates.bias, params.bias)
