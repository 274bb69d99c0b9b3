"""Which axes Adafactor factors: the stated tie-break, optax's choice, and the HF/PyTorch rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

SHAPES = [
    (4, 4),
    (3, 5),
    (5, 3),
    (4, 4, 4),
    (5, 3, 5),
    (3, 5, 5),
    (5, 5, 3),
    (2, 6, 6, 2),
    (6, 2, 6),
    (2, 3, 4),
    (7, 1),
    (7,),
    (),
]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_factors_are_optaxs_with_the_reduced_axis_kept_and_optaxs_placeholders(shape):
    ours = gc.scale_by_factored_rms(min_dim_size_to_factor=1).init({"p": jnp.zeros(shape)})
    ref = optax.scale_by_factored_rms(min_dim_size_to_factor=1).init({"p": jnp.zeros(shape)})
    axes = gc.factored_axes(shape, "largest", 1)
    if axes is not None:
        d1, d0 = axes
        # optax factors this leaf too: (1,) is its placeholder, and ours.
        assert ref.v["p"].shape == ours.v["p"].shape == (1,)
        assert ours.v_row["p"].shape[d0] == ours.v_col["p"].shape[d1] == 1
        assert np.squeeze(ours.v_row["p"], d0).shape == ref.v_row["p"].shape
        assert np.squeeze(ours.v_col["p"], d1).shape == ref.v_col["p"].shape
    else:
        assert ours.v_row["p"].shape == ours.v_col["p"].shape == ref.v_row["p"].shape == (1,)
        assert ours.v["p"].shape == ref.v["p"].shape == shape


@pytest.mark.parametrize("params_shape, updates_shape", [((3, 2), (2, 3)), ((2, 3, 4), (2, 4, 3))])
def test_a_state_made_for_a_transposed_parameter_is_refused_naming_the_path(
    params_shape, updates_shape
):
    # Without the kept axes the factors of these shapes would have equal shapes.
    tx = gc.scale_by_factored_rms(min_dim_size_to_factor=1)
    state = tx.init({"w": jnp.zeros(params_shape)})
    with pytest.raises(ValueError, match=r"updates at \['w'\] have shape .*made for another"):
        tx.update({"w": jnp.ones(updates_shape)}, state)


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((4, 4), (0, 1)),  # a square matrix: v_row holds one number per row
        ((4, 4, 4), (1, 2)),
        ((5, 3, 5), (0, 2)),  # equal largest axes: the later one is d0
        ((3, 5, 5), (1, 2)),
        ((5, 5, 3), (0, 1)),
        ((6, 2, 6), (0, 2)),
        ((2, 6, 6, 2), (1, 2)),
    ],
    ids=str,
)
def test_equal_axes_tie_break_is_the_documented_one(shape, axes):
    assert gc.factored_axes(shape, "largest", 1) == axes


def test_square_matrix_row_statistic_averages_over_the_last_axis():
    g = jnp.arange(1.0, 17.0).reshape(4, 4)
    tx = gc.scale_by_factored_rms(min_dim_size_to_factor=1)
    _, state = tx.update({"w": g}, tx.init({"w": g}))  # beta_hat_1 = 0: the state is the means
    g2 = np.asarray(g) ** 2
    np.testing.assert_allclose(state.v_row["w"], np.mean(g2, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(state.v_col["w"], np.mean(g2, axis=0, keepdims=True), rtol=1e-6)


@pytest.mark.parametrize(
    "shape, threshold, expected",
    [((127, 300), 128, None), ((128, 300), 128, (0, 1)), ((300, 128, 2), 128, (1, 0))],
    ids=str,
)
def test_only_leaves_whose_second_largest_axis_reaches_the_threshold_are_factored(
    shape, threshold, expected
):
    assert gc.factored_axes(shape, "largest", threshold) == expected


@pytest.mark.parametrize(
    "shape, axes",
    [((2, 3), (0, 1)), ((3, 2), (0, 1)), ((4, 2, 3), (1, 2)), ((1, 5), (0, 1))],
    ids=str,
)
def test_last_rule_factors_the_last_two_axes_whatever_their_sizes(shape, axes):
    assert gc.factored_axes(shape, "last", 1) == axes


def hf_factored_rms(grads, decay_exponent=0.8, eps1=1e-30):
    """HF transformers' Adafactor second moment (ALGORITHMS.md §4.3), in float64 numpy: row and
    column statistics over the last two axes, beta_hat_t = 1 - t^-0.8."""
    row = col = None
    out = []
    for t, g in enumerate(grads, start=1):
        beta = 1 - t**-decay_exponent
        g2 = g**2 + eps1
        new_row, new_col = g2.mean(axis=-1), g2.mean(axis=-2)
        row = new_row if row is None else beta * row + (1 - beta) * new_row
        col = new_col if col is None else beta * col + (1 - beta) * new_col
        r = row / row.mean(axis=-1, keepdims=True)
        out.append(g / np.sqrt(r[..., :, None] * col[..., None, :]))
    return out


def test_last_axes_rule_reproduces_hf_on_a_3d_tensor():
    keys = jax.random.split(jax.random.PRNGKey(0), 6)
    grads = [np.asarray(jax.random.normal(k, (4, 2, 3)), np.float64) for k in keys]
    tx = gc.scale_by_factored_rms(min_dim_size_to_factor=1, factored_axes="last")
    state = tx.init({"w": jnp.zeros((4, 2, 3))})
    update = jax.jit(tx.update)
    for g, expected in zip(grads, hf_factored_rms(grads)):
        u, state = update({"w": jnp.asarray(g, jnp.float32)}, state)
        np.testing.assert_allclose(u["w"], expected, rtol=2e-5)
    # The optax rule factors axes 0 and 2 of this tensor instead, which is another estimate.
    optax_rule = gc.scale_by_factored_rms(min_dim_size_to_factor=1)
    g1 = {"w": jnp.asarray(grads[1], jnp.float32)}
    u0, _ = optax_rule.update(g1, optax_rule.init(g1))
    assert not np.allclose(u0["w"], hf_factored_rms(grads[1:2])[0], rtol=1e-3)


def test_step_offset_restarts_the_decay_schedule():
    params = {"w": jnp.zeros((4, 5))}
    grads = {"w": jax.random.normal(jax.random.PRNGKey(1), (4, 5))}
    fresh = gc.scale_by_factored_rms(min_dim_size_to_factor=1)
    resumed = gc.scale_by_factored_rms(step_offset=7, min_dim_size_to_factor=1)
    state = gc.tree_set(resumed.init(params), count=jnp.asarray(7, jnp.int32))
    u_fresh, _ = fresh.update(grads, fresh.init(params))
    u_resumed, _ = resumed.update(grads, state)
    np.testing.assert_allclose(u_resumed["w"], u_fresh["w"], rtol=1e-6)
