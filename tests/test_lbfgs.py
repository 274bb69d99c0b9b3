"""L-BFGS and the line searches: convergence to known minima, the iterates of optax's, the Wolfe
conditions themselves, and the jitted loop with ``value_and_grad_from_state``.

Tolerances against optax: gradchain evaluates the same expressions in the same order (trial
step sizes, interpolations, inner products of the two-loop recursion), so XLA compiles the same
arithmetic and the runs measured bit for bit equal. The checks allow a few ulps per step
(``rtol`` 1e-6 in float32, 1e-13 in float64) for a different fusion choice, and require the
same number of loss evaluations at every step: one different decision of a line search would
change the iterate by far more than that, so a tolerance this tight still tests the decisions.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize

import gradchain as gc

DTYPES = {"float32": (jnp.float32, 1e-6), "float64": (jnp.float64, 1e-13)}


def precision(name):
    return jax.enable_x64(True) if name == "float64" else contextlib.nullcontext()


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logistic_data_numpy():
    """200 points in 5 dimensions with labels drawn from a logistic model (fixed seed)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    w = np.array([1.5, -2.0, 0.5, 0.0, 1.0])
    y = (rng.random(200) < 1.0 / (1.0 + np.exp(-(x @ w - 0.3)))).astype(np.float64)
    return x, y


def logistic_data(dtype):
    return tuple(jnp.asarray(a, dtype) for a in logistic_data_numpy())


def logistic_loss(params, x, y):
    """Mean logistic loss plus an L2 penalty of 0.01 on the weights: strictly convex."""
    logits = x @ params["w"] + params["b"]
    data = jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)
    return data + 0.005 * jnp.sum(params["w"] ** 2)


def logistic_minimum():
    """The minimiser by scipy's BFGS in float64 (an independent implementation)."""
    x, y = logistic_data_numpy()

    def f(theta):
        logits = x @ theta[:5] + theta[5]
        loss = np.mean(np.logaddexp(0.0, logits) - y * logits) + 0.005 * theta[:5] @ theta[:5]
        p = 1.0 / (1.0 + np.exp(-logits))
        grad = np.concatenate([x.T @ (p - y) / len(y) + 0.01 * theta[:5], [np.mean(p - y)]])
        return loss, grad

    result = scipy.optimize.minimize(f, np.zeros(6), jac=True, method="BFGS", tol=1e-12)
    return result.x[:5], result.x[5], result.fun


def run(opt, fn, params, steps, value_and_grad_from_state, **fn_kwargs):
    """``steps`` jitted L-BFGS-style steps reusing the line search's value and gradient; the
    iterates and each step's number of line-search evaluations."""
    value_and_grad = value_and_grad_from_state(fn)

    @jax.jit
    def step(params, state):
        value, grad = value_and_grad(params, state=state, **fn_kwargs)
        updates, state = opt.update(
            grad, state, params, value=value, grad=grad, value_fn=fn, **fn_kwargs
        )
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    iterates, evaluations = [], []
    for _ in range(steps):
        params, state = step(params, state)
        iterates.append(params)
        evaluations.append(int(optax.tree_utils.tree_get(state, "num_linesearch_steps", -1)))
    return iterates, evaluations, state


def run_gc(opt, fn, params, steps, **fn_kwargs):
    return run(opt, fn, params, steps, gc.value_and_grad_from_state, **fn_kwargs)


def run_optax(opt, fn, params, steps, **fn_kwargs):
    return run(opt, fn, params, steps, optax.value_and_grad_from_state, **fn_kwargs)


def assert_same_iterates(ours, theirs, rtol):
    for k, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.dtype == y.dtype
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=rtol, atol=rtol, err_msg=f"step {k}"
            )


# Convergence to the known minima --------------------------------------------------------------


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_lbfgs_reaches_the_rosenbrock_minimum(dtype_name):
    dtype, _ = DTYPES[dtype_name]
    with precision(dtype_name):
        start = jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3], dtype)
        iterates, _, _ = run_gc(gc.lbfgs(), rosenbrock, start, 80)
        final = iterates[-1]
        assert final.dtype == dtype
        tol = 1e-3 if dtype == jnp.float32 else 1e-8
        np.testing.assert_allclose(np.asarray(final), np.ones(5), atol=tol)
        assert float(rosenbrock(final)) < tol**2


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_lbfgs_reaches_the_logistic_regression_minimum(dtype_name):
    dtype, _ = DTYPES[dtype_name]
    w_star, b_star, f_star = logistic_minimum()
    with precision(dtype_name):
        x, y = logistic_data(dtype)
        start = {"w": jnp.zeros(5, dtype), "b": jnp.zeros((), dtype)}
        iterates, _, _ = run_gc(gc.lbfgs(), logistic_loss, start, 30, x=x, y=y)
        final = iterates[-1]
        tol = 1e-4 if dtype == jnp.float32 else 1e-9
        np.testing.assert_allclose(np.asarray(final["w"]), w_star, atol=tol)
        np.testing.assert_allclose(float(final["b"]), b_star, atol=tol)
        assert abs(float(logistic_loss(final, x, y)) - f_star) < tol


# The iterates of optax's --------------------------------------------------------------------


# Both problems in both precisions with the defaults; the other options once each.
LBFGS_CASES = {
    "rosenbrock-default-float32": ("rosenbrock", {}, "float32"),
    "rosenbrock-default-float64": ("rosenbrock", {}, "float64"),
    "logistic-default-float32": ("logistic", {}, "float32"),
    "logistic-default-float64": ("logistic", {}, "float64"),
    "rosenbrock-memory3_unscaled-float32": (
        "rosenbrock",
        {"memory_size": 3, "scale_init_precond": False},
        "float32",
    ),
    "logistic-learning_rate-float64": ("logistic", {"learning_rate": 0.5}, "float64"),
}


@pytest.mark.parametrize("case", LBFGS_CASES)
def test_lbfgs_iterates_equal_optax_over_25_jitted_steps(case):
    problem, config, dtype_name = LBFGS_CASES[case]
    dtype, rtol = DTYPES[dtype_name]
    with precision(dtype_name):
        if problem == "rosenbrock":
            fn, start, kwargs = rosenbrock, jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3], dtype), {}
        else:
            x, y = logistic_data(dtype)
            fn, kwargs = logistic_loss, {"x": x, "y": y}
            start = {"w": jnp.zeros(5, dtype), "b": jnp.zeros((), dtype)}
        ours, ours_evals, _ = run_gc(gc.lbfgs(**config), fn, start, 25, **kwargs)
        theirs, their_evals, _ = run_optax(optax.lbfgs(**config), fn, start, 25, **kwargs)
        assert ours_evals == their_evals
        assert_same_iterates(ours, theirs, rtol)


@pytest.mark.parametrize("dtype_name", DTYPES)
def test_lbfgs_without_line_search_equals_optax(dtype_name):
    dtype, rtol = DTYPES[dtype_name]
    with precision(dtype_name):
        start = jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3], dtype)
        grad = jax.jit(jax.grad(rosenbrock))

        def trajectory(opt):
            params, state, out = start, opt.init(start), []
            step = jax.jit(opt.update)
            for _ in range(25):
                updates, state = step(grad(params), state, params)
                params = optax.apply_updates(params, updates)
                out.append(params)
            return out

        ours = trajectory(gc.lbfgs(1e-3, memory_size=4, linesearch=None))
        theirs = trajectory(optax.lbfgs(1e-3, memory_size=4, linesearch=None))
        assert_same_iterates(ours, theirs, rtol)


# Each line search on its own, after sgd ------------------------------------------------------

LINESEARCHES = {
    "backtracking": lambda lib: lib.scale_by_backtracking_linesearch(50),
    "backtracking_store_grad_tolerances": lambda lib: lib.scale_by_backtracking_linesearch(
        10,
        slope_rtol=0.3,
        decrease_factor=0.5,
        increase_factor=2.0,
        atol=1e-3,
        rtol=1e-3,
        max_learning_rate=0.5,
        store_grad=True,
    ),
    "zoom_keep": lambda lib: lib.scale_by_zoom_linesearch(15),
    "zoom_one_capped_armijo": lambda lib: lib.scale_by_zoom_linesearch(
        10,
        max_learning_rate=0.01,
        initial_guess_strategy="one",
        curv_rtol=0.5,
        approx_dec_rtol=None,
        increase_factor=1.5,
    ),
}


@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("name", LINESEARCHES)
def test_line_search_after_sgd_equals_optax_over_20_jitted_steps(dtype_name, name):
    dtype, rtol = DTYPES[dtype_name]
    with precision(dtype_name):
        start = jnp.array([-1.2, 1.0, -0.5, 0.8, 1.3], dtype)
        make = LINESEARCHES[name]
        stores_grad = name != "backtracking"
        ours_tx = gc.chain(gc.sgd(1.0), make(gc))
        theirs_tx = optax.chain(optax.sgd(1.0), make(optax))
        if stores_grad:
            ours, ours_evals, state = run_gc(ours_tx, rosenbrock, start, 20)
            theirs, their_evals, _ = run_optax(theirs_tx, rosenbrock, start, 20)
        else:
            ours, ours_evals, state = run(ours_tx, rosenbrock, start, 20, _fresh_value_and_grad)
            theirs, their_evals, _ = run(theirs_tx, rosenbrock, start, 20, _fresh_value_and_grad)
        assert ours_evals == their_evals
        assert_same_iterates(ours, theirs, rtol)
        assert float(rosenbrock(ours[-1])) < float(rosenbrock(start))
        assert state[1].learning_rate.dtype == dtype


def _fresh_value_and_grad(fn):
    def value_and_grad(params, *, state, **kwargs):
        del state
        return jax.value_and_grad(fn)(params, **kwargs)

    return value_and_grad


# The conditions themselves -------------------------------------------------------------------


def test_zoom_step_meets_the_strong_wolfe_conditions():
    def fn(p):
        return jnp.sum(jnp.cosh(p) + 0.1 * p**4)

    params = jnp.array([2.0, -1.5, 0.7])
    value, grad = jax.value_and_grad(fn)(params)
    direction = -grad
    tx = gc.scale_by_zoom_linesearch(30, approx_dec_rtol=None)
    updates, state = tx.update(
        direction, tx.init(params), params, value=value, grad=grad, value_fn=fn
    )
    eta = float(state.learning_rate)
    np.testing.assert_allclose(np.asarray(updates), eta * np.asarray(direction), rtol=1e-6)
    slope0 = float(jnp.vdot(grad, direction))
    new_value, new_grad = jax.value_and_grad(fn)(params + updates)
    assert float(new_value) <= float(value) + 1e-4 * eta * slope0
    assert abs(float(jnp.vdot(new_grad, direction))) <= 0.9 * abs(slope0)
    assert float(state.info.decrease_error) == 0.0 and float(state.info.curvature_error) == 0.0
    # The state holds the loss and gradient at the accepted point, for the next step.
    np.testing.assert_allclose(float(state.value), float(new_value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(state.grad), np.asarray(new_grad), rtol=1e-5)


def test_backtracking_step_meets_armijo_and_shrinks_by_the_decrease_factor():
    def fn(p):
        return jnp.sum(p**2)

    params = jnp.array([1.0, 2.0, 3.0])
    value, grad = jax.value_and_grad(fn)(params)
    tx = gc.scale_by_backtracking_linesearch(20, decrease_factor=0.5, max_learning_rate=1.0)
    # Starting from eta = 1 (the cap), the direction -g overshoots until eta = 0.5 ** 1 = 0.5
    # lands at 0, then eta = 0.5 satisfies Armijo: one reduction, two evaluations.
    updates, state = tx.update(-grad, tx.init(params), params, value=value, grad=grad, value_fn=fn)
    assert float(state.learning_rate) == 0.5
    assert int(state.info.num_linesearch_steps) == 2
    assert float(state.info.decrease_error) == 0.0
    np.testing.assert_allclose(np.asarray(params + updates), 0.0, atol=1e-7)
    assert state.grad is None


def test_a_nan_loss_everywhere_gives_no_step():
    tx = gc.scale_by_backtracking_linesearch(5)
    params = jnp.ones(3)
    updates, state = tx.update(
        -params,
        tx.init(params),
        params,
        value=1.0,
        grad=params,
        value_fn=lambda p: jnp.nan * jnp.sum(p),
    )
    assert float(state.learning_rate) == 0.0
    np.testing.assert_array_equal(np.asarray(updates), 0.0)


# The jitted loop's extra arguments ----------------------------------------------------------


def test_value_and_grad_from_state_reuses_the_line_search_evaluation():
    def fn(x):
        return jnp.sum(x**2)

    opt = gc.lbfgs()
    params = jnp.array([1.0, 2.0, 3.0])
    state = opt.init(params)
    value, grad = gc.value_and_grad_from_state(fn)(params, state=state)
    assert float(value) == 14.0  # a fresh state holds an infinite value: computed
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fn)
    params = gc.apply_updates(params, updates)
    # A function that would give 1.0 is not called: the value is the search's.
    reused, reused_grad = jax.jit(gc.value_and_grad_from_state(lambda x: jnp.sum(x) * 0 + 1.0))(
        params, state=state
    )
    np.testing.assert_allclose(float(reused), float(fn(params)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(reused_grad), np.asarray(2 * params), atol=1e-6)


def test_value_and_grad_from_state_needs_exactly_one_stored_value():
    params = jnp.ones(3)
    value_and_grad = gc.value_and_grad_from_state(jnp.sum)
    with pytest.raises(ValueError, match="Value or gradient not found"):
        value_and_grad(params, state=gc.adam(0.1).init(params))
    without_grad = gc.chain(gc.sgd(1.0), gc.scale_by_backtracking_linesearch(5))
    with pytest.raises(ValueError, match="store_grad=True"):
        value_and_grad(params, state=without_grad.init(params))
    two = gc.chain(
        gc.scale_by_zoom_linesearch(5), gc.scale_by_backtracking_linesearch(5, store_grad=True)
    )
    with pytest.raises(KeyError):
        value_and_grad(params, state=two.init(params))


def test_extra_arguments_reach_value_fn_and_unknown_ones_raise():
    x, y = logistic_data(jnp.float32)
    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}
    opt = gc.lbfgs()
    state = opt.init(params)
    value, grad = jax.value_and_grad(logistic_loss)(params, x, y)
    opt.update(grad, state, params, value=value, grad=grad, value_fn=logistic_loss, x=x, y=y)
    with pytest.raises(TypeError, match=r"not consumed by `value_fn`: \['z'\]"):
        opt.update(
            grad, state, params, value=value, grad=grad, value_fn=logistic_loss, x=x, y=y, z=1
        )


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.scale_by_lbfgs(0), "memory_size must be >= 1"),
        (lambda: gc.scale_by_zoom_linesearch(0), "max_linesearch_steps must be >= 1"),
        (
            lambda: gc.scale_by_zoom_linesearch(5, initial_guess_strategy="two"),
            "initial_guess_strategy must be 'one' or 'keep'",
        ),
        (lambda: gc.scale_by_zoom_linesearch(5, curv_rtol=-1.0), "curv_rtol must be in"),
        (
            lambda: gc.scale_by_backtracking_linesearch(5, decrease_factor=1.5),
            "decrease_factor must be in",
        ),
        (lambda: gc.scale_by_backtracking_linesearch(-1), "max_backtracking_steps must be >= 0"),
    ],
)
def test_invalid_hyperparameters_raise_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_reprs_and_defaults_are_optax_s():
    tx = gc.lbfgs()
    assert tx.memory_size == 10 and tx.scale_init_precond is True
    assert tx.linesearch == gc.scale_by_zoom_linesearch(20, initial_guess_strategy="one")
    assert repr(gc.scale_by_backtracking_linesearch(15)).startswith(
        "scale_by_backtracking_linesearch(max_backtracking_steps=15, slope_rtol=0.0001"
    )
    zoom = gc.scale_by_zoom_linesearch(15)
    assert (zoom.max_learning_rate, zoom.curv_rtol, zoom.initial_guess_strategy) == (
        None,
        0.9,
        "keep",
    )
