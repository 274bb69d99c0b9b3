"""The algebra facts the references teach, as tests (issue 2, "Must show"; ALGORITHMS.md).

Expected values are worked out by hand or with numpy from the formulas in ALGORITHMS.md, never
with the code under test (optax appears once, to show that an input reaches a hazard).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params

import gradchain as gc


def summed_updates(tx, params, grads):
    """The sum of the updates ``tx`` returns for ``grads`` while the params stay at ``params``."""
    update = jax.jit(tx.update)
    state = tx.init(params)
    total = jax.tree.map(jnp.zeros_like, params)
    for g in grads:
        u, state = update(g, state, params)
        total = jax.tree.map(jnp.add, total, u)
    return total


def test_adam_with_l2_is_not_adamw_and_its_decay_shrinks_as_gradients_grow():
    lr, wd, steps = 0.01, 0.1, 10
    params = mixed_params(bf16=False)
    adam = gc.adam(lr)
    adam_l2 = gc.chain(gc.add_l2_penalty(wd), gc.adam(lr))
    adamw = gc.adamw(lr, weight_decay=wd)
    norm = lambda tree: float(gc.global_norm(tree))
    diff = lambda a, b: jax.tree.map(jnp.subtract, a, b)

    decay_l2, decay_w = {}, {}
    for grad_scale in (1.0, 100.0):
        grads = gradient_stream(params, steps, scale=grad_scale)
        plain = summed_updates(adam, params, grads)
        decay_l2[grad_scale] = diff(summed_updates(adam_l2, params, grads), plain)
        decay_w[grad_scale] = diff(summed_updates(adamw, params, grads), plain)

    # AdamW's decay is -lr * wd * p per step, whatever the gradients.
    expected = jax.tree.map(lambda p: -steps * lr * wd * p, params)
    for grad_scale in (1.0, 100.0):
        assert_trees_close(decay_w[grad_scale], expected, rtol=1e-4, atol=1e-7)
    # Adam + L2 differs from AdamW ...
    assert norm(diff(decay_l2[1.0], decay_w[1.0])) > 0.1 * norm(decay_w[1.0])
    # ... because its penalty is divided by sqrt(v): 100x larger gradients, ~100x less decay.
    assert norm(decay_l2[100.0]) < norm(decay_l2[1.0]) / 30


@pytest.mark.parametrize("nesterov, factor", [(False, 1.0), (True, (1 + 2 * 0.9) / (1 + 0.9))])
def test_first_adam_step_with_zero_eps_is_minus_lr_times_sign_of_gradient(nesterov, factor):
    # m_hat = g and v_hat = g^2 at t = 1; NAdam's m_hat is g (1 + b1 / (1 + b1)) (ALGORITHMS.md,
    # appendix B).
    params = mixed_params()
    grads = gradient_stream(params, 1)[0]
    tx = gc.adam(0.1, eps=0.0, nesterov=nesterov)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    expected = jax.tree.map(
        lambda g: (-0.1 * factor * np.sign(np.asarray(g, np.float32))).astype(g.dtype), grads
    )
    assert_trees_close(updates, expected)


def test_heavy_ball_momentum_velocity_after_two_steps():
    # b = 0.9 * [1, 0] + [-1, 0.1] = [-0.1, 0.1]
    tx = gc.sgd(1.0, momentum=0.9)
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    for g in ([1.0, 0.0], [-1.0, 0.1]):
        _, state = tx.update({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(gc.tree_get(state, "trace")["w"], [-0.1, 0.1], rtol=1e-6)


def test_clip_by_global_norm_leaves_exactly_max_norm_when_it_clips():
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, 1, scale=3.0)[0]
    assert float(gc.global_norm(grads)) > 10
    tx = gc.with_live_hyperparams(gc.clip_by_global_norm(2.5))  # keeps the norm for logging
    clipped, state = jax.jit(tx.update)(grads, tx.init(params))
    assert float(gc.global_norm(clipped)) == pytest.approx(2.5, rel=1e-6)
    assert float(gc.tree_get(state, "global_norm")) > 10


def test_clip_by_global_norm_leaves_small_gradients_untouched():
    params = mixed_params()
    grads = gradient_stream(params, 1, scale=0.01)[0]
    tx = gc.clip_by_global_norm(2.5)
    clipped, _ = jax.jit(tx.update)(grads, tx.init(params))
    for a, b in zip(jax.tree.leaves(clipped), jax.tree.leaves(grads)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shape", [(130, 200), (200, 130), (160, 160)])
@pytest.mark.parametrize("factored_axes", ["largest", "last"])
def test_adafactor_state_for_an_n_by_m_matrix_has_n_plus_m_numbers(shape, factored_axes):
    tx = gc.adafactor(1e-2, factored_axes=factored_axes)
    state = tx.init({"w": jnp.zeros(shape)})
    second_moment = [gc.tree_get(state, key)["w"] for key in ("v_row", "v_col", "v")]
    # the full moment of a factored leaf is not kept: optax's one-entry placeholder stands for it
    assert second_moment[2].shape == (1,)
    assert second_moment[0].size + second_moment[1].size == shape[0] + shape[1]


def test_adafactor_first_step_divides_by_the_rank_one_estimate_of_g_squared():
    # beta_hat_1 = 0, so V = r c^T / mean(r) with r, c the row and column means of g^2 + eps1
    # (ALGORITHMS.md §4.1 and appendix B).
    g = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 9)), np.float64)
    g2 = g**2 + 1e-30
    r, c = g2.mean(axis=1), g2.mean(axis=0)
    expected = g / np.sqrt(np.outer(r, c) / r.mean())
    tx = gc.factored_second_moment(min_dim_size_to_factor=1)
    u, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init({"w": jnp.zeros((6, 9))}))
    np.testing.assert_allclose(u["w"], expected, rtol=1e-5)
    np.testing.assert_allclose(state.v_row["w"], r[:, None], rtol=1e-6)  # the reduced axis kept
    np.testing.assert_allclose(state.v_col["w"], c[None, :], rtol=1e-6)


def test_centered_rms_never_takes_the_root_of_a_negative_variance():
    # At t = 1 with bias correction the centered variance nu_hat - mu_hat^2 is g^2 - g^2: zero in
    # exact arithmetic, slightly negative after rounding for some entries, where optax's
    # sqrt gives NaN. gradchain clamps the variance at 0 (documented in scale_by_stddev).
    grads = {"w": jax.random.normal(jax.random.PRNGKey(0), (1000,))}
    ref = optax.scale_by_stddev(eps_in_sqrt=False, bias_correction=True)
    ref_updates, _ = jax.jit(ref.update)(grads, ref.init(grads))
    assert np.isnan(ref_updates["w"]).any()  # the input does reach below zero
    tx = gc.scale_by_stddev(eps_in_sqrt=False, bias_correction=True)
    updates, _ = jax.jit(tx.update)(grads, tx.init(grads))
    assert np.isfinite(updates["w"]).all()
