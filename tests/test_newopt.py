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
