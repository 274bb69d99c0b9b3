"""Sophia and its two Hessian-diagonal estimators."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from crosscheck import assert_trees_close, mixed_params
from family_a_support import Quadratic, committed, numpy_run, run_on_loss

import gradchain as gc

STEPS = 25  # refreshes at steps 1, 11 and 21 with the default interval of 10
MASK = {"matrix": True, "vector": False}


def small_params():
    """A matrix and a vector: Sophia's jvp-of-grad estimator costs compile time per leaf."""
    params = mixed_params(bf16=False)
    return committed({"matrix": params["matrix"], "vector": params["vector"]})


def cosh_loss(params):
    """A smooth convex loss whose Hessian diagonal varies with the parameters."""
    return sum(jnp.sum(jnp.cosh(x - 0.5)) for x in jax.tree.leaves(params))


OBJ_FN = {"obj_fn": lambda loss: loss}

FREQUENT_REFRESH = dict(
    b1=0.9, b2=0.9, gamma=0.5, update_interval=3, weight_decay=0.1, weight_decay_mask=MASK
)

OPTAX_CASES = {
    "default": (lambda: gc.sophia(0.01), lambda: optax.contrib.sophia(0.01)),
    "frequent_refresh_decay_mask": (
        lambda: gc.sophia(0.01, **FREQUENT_REFRESH),
        lambda: optax.contrib.sophia(0.01, **FREQUENT_REFRESH),
    ),
    "no_clipping_seeded": (
        lambda: gc.sophia(
            0.001,
            gamma=2.0,
            clip_threshold=None,
            update_interval=1,
            hessian_diagonal_fn=gc.hutchinson_estimator_diag_hessian(jax.random.PRNGKey(7)),
        ),
        lambda: optax.contrib.sophia(
            0.001,
            gamma=2.0,
            clip_threshold=None,
            update_interval=1,
            hessian_diagonal_fn=optax.contrib.hutchinson_estimator_diag_hessian(
                jax.random.PRNGKey(7)
            ),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax_with_the_hutchinson_estimator(name):
    ours, ref = OPTAX_CASES[name]
    params = small_params()
    got, _ = run_on_loss(ours(), params, cosh_loss, STEPS, gc.apply_updates, OBJ_FN)
    want, _ = run_on_loss(ref(), params, cosh_loss, STEPS, optax.apply_updates, OBJ_FN)
    assert_trees_close(got[-1], want[-1])


def test_hutchinson_draws_the_same_estimate_as_optax_from_the_same_key():
    params = small_params()
    key = jax.random.PRNGKey(3)
    ours = gc.hutchinson_estimator_diag_hessian(key)
    theirs = optax.contrib.hutchinson_estimator_diag_hessian(key)
    h, state = ours.update(params, ours.init(params), params, obj_fn=cosh_loss)
    want, their_state = theirs.update(params, theirs.init(params), params, obj_fn=cosh_loss)
    assert_trees_close(h, want, rtol=0, atol=0)
    np.testing.assert_array_equal(gc.tree_get(state, "key"), their_state.key)


def numpy_sophia(
    problem,
    lr,
    b1,
    b2,
    gamma,
    clip,
    k,
    mu_bias_correction,
    estimate_before_step,
    eps=1e-8,
    record=None,
):
    """ALGORITHMS.md §6.1/§6.3 on a diagonal quadratic, whose Hessian diagonal ``a`` every
    Rademacher Hutchinson estimate gives exactly (z * (a z) = a z^2 = a)."""
    st = {}

    def step(p, g, t):
        refresh = (t - 1) % k == 0
        out, kept, size = {}, 0, 0
        for key in p:
            m, h = st.get(key, (0.0, 0.0))
            m = b1 * m + (1 - b1) * g[key]
            m_hat = m / (1 - b1**t) if mu_bias_correction else m
            if estimate_before_step and refresh:
                h = b2 * h + (1 - b2) * problem.a[key]
            u = m_hat / np.maximum(gamma * h, eps)
            kept, size = kept + np.sum(np.abs(u) < clip), size + u.size
            if not estimate_before_step and refresh:
                h = b2 * h + (1 - b2) * problem.a[key]
            st[key] = (m, h)
            out[key] = p[key] - lr * np.clip(u, -clip, clip)
        if record is not None:
            record.append(kept / size)
        return out

    return step


@pytest.mark.parametrize("mu_bias_correction", [True, False])
@pytest.mark.parametrize("estimate_before_step", [False, True])
def test_bias_correction_and_hessian_timing_follow_the_formulas(
    mu_bias_correction, estimate_before_step
):
    # (True, False) is optax's convention; (False, True) the paper's (ALGORITHMS.md §15 row 15).
    hp = dict(lr=0.1, b1=0.9, b2=0.8, gamma=0.7, clip=1.0, k=3)
    problem = Quadratic(seed=1)
    win_rates = []
    want = numpy_run(
        numpy_sophia(
            problem,
            **hp,
            mu_bias_correction=mu_bias_correction,
            estimate_before_step=estimate_before_step,
            record=win_rates,
        ),
        problem,
        20,
    )
    with jax.enable_x64(True):
        tx = gc.sophia(
            hp["lr"],
            b1=hp["b1"],
            b2=hp["b2"],
            gamma=hp["gamma"],
            update_interval=hp["k"],
            weight_decay=0.0,
            mu_bias_correction=mu_bias_correction,
            estimate_before_step=estimate_before_step,
        )
        tx = gc.with_live_hyperparams(tx)  # keeps win_rate, a logging field
        got, state = run_on_loss(tx, problem.params(), problem.loss, 20, gc.apply_updates, OBJ_FN)
    assert_trees_close(got[-1], want[-1], rtol=1e-10, atol=1e-12)
    assert float(gc.tree_get(state, "win_rate")) == pytest.approx(win_rates[-1])
    assert 0 < win_rates[-1] < 1
    if (mu_bias_correction, estimate_before_step) != (True, False):
        optax_way = numpy_run(
            numpy_sophia(problem, **hp, mu_bias_correction=True, estimate_before_step=False),
            problem,
            20,
        )
        assert not np.allclose(optax_way[-1]["w"], want[-1]["w"], rtol=1e-6)


def test_first_step_is_a_clipped_sign_step_plus_decay():
    # Appendix B: the Hessian EMA is 0 at step 1, so u_1 = -eta (c sign(g_1) + lambda p).
    params = small_params()
    tx = gc.with_live_hyperparams(gc.sophia(0.1, clip_threshold=0.5, weight_decay=0.2))
    grads = jax.grad(cosh_loss)(params)
    u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, obj_fn=cosh_loss))(
        grads, tx.init(params), params
    )
    for k in params:
        np.testing.assert_allclose(
            u[k], -0.1 * (0.5 * np.sign(grads[k]) + 0.2 * np.asarray(params[k])), rtol=1e-6
        )
    assert float(gc.tree_get(state, "win_rate")) == 0.0


def test_the_hessian_is_refreshed_every_update_interval_steps():
    # The estimator's key advances exactly when it runs: steps 1, 4, 7 for an interval of 3.
    params = committed({"w": jnp.linspace(-1.0, 1.0, 4)})
    tx = gc.scale_by_sophia(update_interval=3)
    state = tx.init(params)
    step = jax.jit(lambda s, p: tx.update(jax.grad(cosh_loss)(p), s, p, obj_fn=cosh_loss)[1])
    keys = [np.asarray(gc.tree_get(state, "key"))]
    for _ in range(8):
        state = step(state, params)
        keys.append(np.asarray(gc.tree_get(state, "key")))
    refreshed = [t for t in range(1, 9) if not np.array_equal(keys[t], keys[t - 1])]
    assert refreshed == [1, 4, 7]


def test_gauss_newton_bartlett_is_batch_size_times_the_squared_sampled_gradient():
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    est = gc.gauss_newton_bartlett_estimator_diag_hessian(batch_size=8)
    h, _ = est.update(
        params, est.init(params), params, sampled_grad_fn=lambda p, key: {"w": 0.1 * p["w"] + 1.0}
    )
    np.testing.assert_allclose(
        h["w"], 8 * (0.1 * np.asarray([1.0, -2.0, 0.5]) + 1.0) ** 2, rtol=1e-6
    )


def test_gauss_newton_bartlett_samples_with_a_fresh_key_each_call():
    params = {"w": jnp.zeros(3)}
    est = gc.gauss_newton_bartlett_estimator_diag_hessian(batch_size=1)
    fn = lambda p, key: {"w": jax.random.normal(key, (3,))}
    state = est.init(params)
    first, state = est.update(params, state, params, sampled_grad_fn=fn)
    second, _ = est.update(params, state, params, sampled_grad_fn=fn)
    assert not np.allclose(first["w"], second["w"])


def test_sophia_g_runs_with_optax_and_gradchain_alike():
    # optax's sophia accepts any estimator: driving ours through both gives the same steps.
    params = small_params()

    def sampled_grad_fn(p, key):
        noise = jax.tree.map(lambda x: 0.1 * jax.random.normal(key, x.shape), p)
        return jax.tree.map(lambda g, n: g + n, jax.grad(cosh_loss)(p), noise)

    extra = {"sampled_grad_fn": lambda loss: sampled_grad_fn}
    est = gc.gauss_newton_bartlett_estimator_diag_hessian(4, random_seed=5)
    got, state = run_on_loss(
        gc.sophia(0.01, update_interval=2, hessian_diagonal_fn=est),
        params,
        cosh_loss,
        20,
        gc.apply_updates,
        extra,
    )
    # to_optax: optax passes extra update arguments only to its own ExtraArgs transformations.
    want, _ = run_on_loss(
        optax.contrib.sophia(0.01, update_interval=2, hessian_diagonal_fn=gc.to_optax(est)),
        params,
        cosh_loss,
        20,
        optax.apply_updates,
        extra,
    )
    assert_trees_close(got[-1], want[-1])
    assert all(bool(jnp.all(n >= 0)) for n in jax.tree.leaves(gc.tree_get(state, "nu")))


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise):
    a = np.asarray([[2.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 0.5]])

    def loss(p):
        return 0.5 * p["w"] @ jnp.asarray(a, jnp.float32) @ p["w"]

    params = {"w": jnp.asarray([0.3, -0.2, 1.0])}
    n = 4000
    est = gc.hutchinson_estimator_diag_hessian(noise=noise)
    states = dataclasses.replace(est.init(params), key=jax.random.split(jax.random.PRNGKey(0), n))
    h = jax.vmap(lambda s: est.update(params, s, params, obj_fn=loss)[0]["w"])(states)
    off = (a**2).sum(1) - np.diag(a) ** 2
    var = off + (2 * np.diag(a) ** 2 if noise == "gaussian" else 0)
    assert np.all(np.abs(np.mean(h, 0) - np.diag(a)) < 5 * np.sqrt(var / n) + 1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {},
            r"hutchinson_estimator_diag_hessian needs obj_fn: call update\(grads, state, params, obj_fn=",
        ),
        ({"obj_fn": 3.0}, "obj_fn must be callable"),
        ({"obj_fn": lambda p: p["w"]}, r"obj_fn\(params\) must return a scalar loss"),
    ],
)
def test_sophia_without_a_usable_loss_function_is_a_clear_error(extra, message):
    tx = gc.sophia(1e-3)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match=message):
        tx.update(params, state, params, **extra)
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))(params, state, params)


def test_gauss_newton_bartlett_without_its_function_is_a_clear_error():
    tx = gc.sophia(1e-3, hessian_diagonal_fn=gc.gauss_newton_bartlett_estimator_diag_hessian(16))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="needs sampled_grad_fn"):
        tx.update(params, state, params, obj_fn=cosh_loss)
    with pytest.raises(ValueError, match=r"differ in shape at \['w'\]"):
        tx.update(params, state, params, sampled_grad_fn=lambda p, key: {"w": jnp.ones(2)})


def test_sophia_without_params_is_a_clear_error():
    tx = gc.sophia(1e-3)
    with pytest.raises(ValueError, match="scale_by_sophia needs the current parameters"):
        tx.update({"w": jnp.ones(2)}, tx.init({"w": jnp.ones(2)}), obj_fn=cosh_loss)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.sophia(0.1, b1=1.0), r"b1 must be in \[0, 1\)"),
        (lambda: gc.sophia(0.1, b2=-0.1), r"b2 must be in \[0, 1\)"),
        (lambda: gc.sophia(0.1, eps=0.0), r"eps must be in \(0, inf\)"),
        (lambda: gc.sophia(0.1, gamma=-1.0), r"gamma must be in \[0, inf\)"),
        (lambda: gc.sophia(0.1, clip_threshold=0.0), r"clip_threshold must be in \(0, inf\)"),
        (lambda: gc.sophia(0.1, update_interval=0), "update_interval must be >= 1"),
        (lambda: gc.sophia(0.1, update_interval=2.5), "update_interval must be an int"),
        (
            lambda: gc.sophia(0.1, verbose=True),
            "print_win_rate_every_n_steps steps, which must then be >= 1",
        ),
        (
            lambda: gc.sophia(0.1, hessian_diagonal_fn=lambda p: p),
            "hessian_diagonal_fn must be a gradient transformation",
        ),
        (lambda: gc.sophia(-0.1), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.gauss_newton_bartlett_estimator_diag_hessian(0), "batch_size must be >= 1"),
        (lambda: gc.hutchinson_estimator_diag_hessian(noise="uniform"), "noise must be one of"),
        (
            lambda: gc.hutchinson_estimator_diag_hessian("seed"),
            "random_seed must be None, an int or a PRNG key",
        ),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()
