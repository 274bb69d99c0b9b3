"""Behaviour of the issue #18 transformations beyond what the optax cross-check shows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, -2.0])
def test_scale_gradient_keeps_the_value_and_scales_the_gradient(scale):
    x = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}

    def f(x, fn):
        y = fn(x, scale)
        return jnp.sum(y["a"] ** 2) + jnp.sum(3 * y["b"])

    value, grad = jax.jit(jax.value_and_grad(lambda x: f(x, gc.scale_gradient)))(x)
    ref_value, ref_grad = jax.value_and_grad(lambda x: f(x, optax.scale_gradient))(x)
    assert value == ref_value == f(x, lambda x, s: x)
    np.testing.assert_allclose(grad["a"], scale * 2 * x["a"])
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
        np.testing.assert_array_equal(a, b)


def test_apply_every_does_not_leak_a_nan_into_zero_updates_or_the_next_window():
    tx = gc.apply_every(2)
    state = tx.init(jnp.zeros(2))
    step = jax.jit(tx.update)
    u, state = step(jnp.array([jnp.nan, 1.0]), state)
    np.testing.assert_array_equal(u, [0.0, 0.0])  # optax: [nan, 0]
    u, state = step(jnp.array([1.0, 1.0]), state)
    assert np.isnan(u[0]) and u[1] == 2.0
    u, state = step(jnp.array([1.0, 1.0]), state)
    u, state = step(jnp.array([1.0, 1.0]), state)
    np.testing.assert_array_equal(u, [2.0, 2.0])


def test_add_noise_variance_decays_as_eta_over_t_to_the_gamma():
    eta, gamma, n = 0.5, 0.55, 200_000
    tx = gc.add_noise(eta, gamma, 7)
    state = tx.init(jnp.zeros(n))
    step = jax.jit(tx.update)
    for t in (1, 2, 3):
        noise, state = step(jnp.zeros(n), state)
        # the sample variance of n normals is within 4 standard errors (sqrt(2/n) relative)
        np.testing.assert_allclose(np.var(noise), eta / t**gamma, rtol=4 * np.sqrt(2 / n))


def test_add_noise_takes_an_int_a_raw_or_a_typed_key_alike():
    noise = [
        gc.add_noise(1.0, 0.0, k).update(jnp.zeros(4), gc.add_noise(1.0, 0.0, k).init(None))[0]
        for k in (3, jax.random.PRNGKey(3), jax.random.key(3))
    ]
    np.testing.assert_array_equal(noise[0], noise[1])
    np.testing.assert_array_equal(noise[0], noise[2])
    with pytest.raises(ValueError, match="key"):
        gc.add_noise(1.0, 0.0, "three")
    with pytest.raises(ValueError, match="key or seed"), pytest.warns(DeprecationWarning):
        gc.add_noise(1.0, 0.0, 1, seed=2)


def test_keep_params_nonnegative_lands_on_zero_and_leaves_other_steps_alone():
    params = jnp.array([0.5, 0.5, 2.0])
    updates = jnp.array([-1.0, 0.25, -1.0])
    tx = gc.keep_params_nonnegative()
    out, _ = tx.update(updates, tx.init(params), params)
    np.testing.assert_array_equal(gc.apply_updates(params, out), [0.0, 0.75, 1.0])


def _torch_rprop(grads, lr, etaminus, etaplus, step_min, step_max):
    """``torch.optim.Rprop``'s loop (torch/optim/rprop.py, single-tensor path) in NumPy: the
    parameter after every step, starting from 0."""
    param = np.zeros_like(grads[0], np.float64)
    prev = np.zeros_like(param)
    step = np.full_like(param, lr)
    out = []
    for g in grads:
        g = np.asarray(g, np.float64).copy()
        sign = np.sign(g * prev)
        factor = np.where(sign > 0, etaplus, np.where(sign < 0, etaminus, 1.0))
        step = np.clip(step * factor, step_min, step_max)
        g[sign < 0] = 0
        param = param - np.sign(g) * step
        prev = g
        out.append(param)
    return out


def test_rprop_without_delay_matches_torch_rprop_and_optax_is_one_step_late():
    rng = np.random.default_rng(0)
    # A drifting sign pattern: runs of agreement and flips in every coordinate.
    grads = [np.sin(0.7 * k + np.arange(6)) + 0.3 * rng.standard_normal(6) for k in range(20)]
    grads = [jnp.asarray(g, jnp.float32) for g in grads]
    expected = _torch_rprop(grads, 0.01, 0.5, 1.2, 1e-3, 0.05)

    def trajectory(tx):
        state, p, out = tx.init(jnp.zeros(6)), jnp.zeros(6), []
        step = jax.jit(tx.update)
        for g in grads:
            u, state = step(g, state, p)
            p = p + u
            out.append(p)
        return out

    ours = trajectory(gc.rprop(0.01, 0.5, 1.2, 1e-3, 0.05, delay_step=False))
    for k, (a, b) in enumerate(zip(ours, expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"step {k + 1}")
    delayed = trajectory(gc.rprop(0.01, 0.5, 1.2, 1e-3, 0.05))
    np.testing.assert_array_equal(delayed[0], 0.0)  # optax's first update is zero


def test_optimistic_adam_is_deprecated_and_takes_no_schedule_as_in_optax():
    with pytest.warns(DeprecationWarning, match="optimistic_adam_v2"):
        gc.optimistic_adam(0.1)
    with pytest.raises(ValueError, match="learning_rate"), pytest.warns(DeprecationWarning):
        gc.optimistic_adam(lambda count: 0.1)


def test_adadelta_without_a_learning_rate_descends_with_step_one():
    """optax's ``adadelta()`` (learning_rate=None) skips the sign flip and ascends; gradchain's
    is the paper's Adadelta: ``p - u``, as ``adadelta(1.0)`` and ``torch.optim.Adadelta()``."""
    params, grads = jnp.ones(3), jnp.array([1.0, -2.0, 0.5])
    tx, one = gc.adadelta(), gc.adadelta(1.0)
    u, _ = tx.update(grads, tx.init(params), params)
    u1, _ = one.update(grads, one.init(params), params)
    np.testing.assert_array_equal(u, u1)
    assert np.all(np.sign(u) == -np.sign(grads))
    ref = optax.adadelta()
    u_optax, _ = ref.update(grads, ref.init(params), params)
    np.testing.assert_allclose(u, -u_optax, rtol=1e-6)


def test_sm3_keeps_one_accumulator_per_axis_and_handles_scalars():
    params = {"s": jnp.ones(()), "v": jnp.ones(5), "m": jnp.ones((4, 3)), "t": jnp.ones((2, 3, 4))}
    tx = gc.scale_by_sm3()
    state = tx.init(params)
    shapes = {k: [a.shape for a in accumulators] for k, accumulators in state.mu.items()}
    assert shapes == {"s": [()], "v": [(5,)], "m": [(4,), (3,)], "t": [(2,), (3,), (4,)]}
    grads = jax.tree.map(lambda p: 2 * p, params)
    u, state = jax.jit(tx.update)(grads, state)
    # First step, b2 = 1: nu = g^2, so u = (1 - b1) g / sqrt(g^2 + eps) = 0.1 sign(g).
    for leaf in jax.tree.leaves(u):
        np.testing.assert_allclose(leaf, 0.1, rtol=1e-6)


def _example_grads(batch=6):
    k = jax.random.split(jax.random.PRNGKey(4), 3)
    return {
        "w": jax.random.normal(k[0], (batch, 4, 3)),
        "b": 0.1 * jax.random.normal(k[1], (batch, 3)),
        "s": 3.0 * jax.random.normal(k[2], (batch,)),
    }


@pytest.mark.parametrize("clip", [0.0, 0.5, 2.0, 100.0])
def test_per_example_global_norm_clip_matches_optax(clip):
    grads = _example_grads()
    ours = jax.jit(gc.per_example_global_norm_clip, static_argnums=1)(grads, clip)
    ref = optax.per_example_global_norm_clip(grads, clip)
    assert int(ours[1]) == int(ref[1])
    for a, b in zip(jax.tree.leaves(ours[0]), jax.tree.leaves(ref[0])):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("uniform", [True, False])
def test_per_example_layer_norm_clip_matches_optax_and_bounds_the_global_norm(uniform):
    grads, clip = _example_grads(), 1.0
    ours = gc.per_example_layer_norm_clip(grads, clip, uniform)
    ref = optax.per_example_layer_norm_clip(grads, clip, uniform)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # Each example's clipped gradient has global norm at most C, so the sum of 6 at most 6 C.
    assert float(gc.global_norm(ours[0])) <= 6 * clip * (1 + 1e-6)


def test_per_example_clipping_names_a_missing_batch_axis():
    with pytest.raises(ValueError, match="batch dimension"):
        gc.per_example_global_norm_clip({"a": jnp.ones(())}, 1.0)
    with pytest.raises(ValueError, match="l2_norm_clip"):
        gc.per_example_global_norm_clip({"a": jnp.ones(3)}, -1.0)


def test_adaptive_grad_clip_takes_axis_for_other_layouts_and_names_the_leaf_otherwise():
    params = {"k": jnp.ones((2, 2, 2, 2, 2, 3))}
    grads = {"k": jnp.full((2, 2, 2, 2, 2, 3), 10.0)}
    with pytest.raises(ValueError, match=r"\['k'\].*axis="):
        gc.adaptive_grad_clip(0.1).update(grads, gc.adaptive_grad_clip(0.1).init(params), params)
    tx = gc.adaptive_grad_clip(0.1, axis=(0, 1, 2, 3, 4))
    ours, _ = tx.update(grads, tx.init(params), params)
    ref, _ = optax.adaptive_grad_clip(0.1, axis=(0, 1, 2, 3, 4)).update(grads, None, params)
    np.testing.assert_allclose(ours["k"], ref["k"], rtol=1e-6)


def test_adan_proximal_is_the_papers_weight_decay_on_optax_adan_direction():
    """Paper (Xie et al. 2022, Alg. 1): p_t = (p_{t-1} - lr * u_t) / (1 + lr * wd), with u_t
    Adan's direction, here from ``optax.scale_by_adan``, over 10 steps."""
    lr, wd = 0.05, 0.5
    params = jnp.linspace(-1.0, 1.0, 5)
    grads = [jnp.cos(params * (k + 1)) for k in range(10)]
    tx = gc.adan(lr, weight_decay=wd, proximal=True)
    ref = optax.scale_by_adan(eps_root=1e-8)
    state, ref_state = tx.init(params), ref.init(params)
    p, q = params, np.asarray(params, np.float64)
    for g in grads:
        u, state = jax.jit(tx.update)(g, state, p)
        p = gc.apply_updates(p, u)
        d, ref_state = ref.update(g, ref_state)
        q = (q - lr * np.asarray(d, np.float64)) / (1 + lr * wd)
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
