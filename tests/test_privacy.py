"""DP-SGD (gradchain.contrib.privacy): optax's numbers and noise for the same seed, the clipping
algebra against a float64 NumPy reference, validation, and a private model that still learns."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradchain as gc

BATCH = 8


def _data(seed: int = 0, n: int = BATCH):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) > 0).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(y)


def _loss(params, x, y):
    logit = x @ params["w"] + params["b"]
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logit, y))


def _per_example_grads(params, x, y):
    # Each example's gradient, with a leading batch axis: the input DP-SGD takes.
    one = jax.grad(lambda p, xi, yi: _loss(p, xi[None], yi[None]))
    return jax.vmap(one, in_axes=(None, 0, 0))(params, x, y)


def _params(dtype):
    return {"w": jnp.linspace(-0.5, 0.5, 4).astype(dtype), "b": jnp.zeros((), dtype)}


def _trajectory(tx, params, steps: int):
    """Params after each of ``steps`` jitted steps on batches of a fixed stream; final state."""

    @jax.jit
    def step(p, s, x, y):
        g = jax.tree.map(lambda a, q: a.astype(q.dtype), _per_example_grads(p, x, y), p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    state, out = tx.init(params), []
    for k in range(steps):
        params, state = step(params, state, *_data(k))
        out.append(params)
    return out, state


CONFIGS = {
    "plain": dict(momentum=None),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dpsgd_matches_optax_over_20_jitted_steps(config, dtype):
    # l2_norm_clip 0.5 clips most examples (their gradient norms are ~0.3-1.5), and the noise
    # (std 0.5 before the division by 8) is larger than the signal: both paths are exercised.
    args = (0.1, 0.5, 1.0, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # optax's dpsgd passes seed=
        reference = optax.contrib.dpsgd(*args, **CONFIGS[config])
    ours = gc.dpsgd(*args, **CONFIGS[config])
    params = _params(jnp.dtype(dtype))
    theirs, their_state = _trajectory(reference, params, 20)
    mine, my_state = _trajectory(ours, params, 20)
    # float32: the same operations (bit-equal today; the tolerance leaves XLA the order of the
    # norm's sum). bfloat16: gradchain adds in float32 and rounds once where optax rounds after
    # each operation; the trajectories then differ by a rounding of the parameters now and
    # then, one bfloat16 ulp (2^-6 for |p| in [2, 4), the largest here) at most in practice:
    # two ulps allowed.
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == "float32" else dict(rtol=0.0, atol=2 * 2**-6)
    assert max(float(jnp.max(jnp.abs(p.astype(jnp.float32)))) for p in theirs[-1].values()) < 4
    for k, (a, b) in enumerate(zip(mine, theirs)):
        for name in a:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_allclose(
                np.asarray(a[name], np.float64),
                np.asarray(b[name], np.float64),
                **tol,
                err_msg=f"step {k + 1}, {name}",
            )
    # The noise keys: the same bits after 20 steps (optax keeps them typed, gradchain raw).
    np.testing.assert_array_equal(
        np.asarray(my_state[0].rng_key), np.asarray(jax.random.key_data(their_state[0].rng_key))
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_noise_is_optaxs_for_the_same_seed(dtype):
    # Zero gradients: the update is the noise alone, std * z / B, with z drawn in the leaf's
    # dtype from the same keys. std = 1 * 2 is exact, so float32 agrees to the bit; in bfloat16
    # optax rounds std * z before dividing, gradchain once at the end (one ulp).
    dt = jnp.dtype(dtype)
    grads = {"w": jnp.zeros((4, 3, 5), dt), "b": jnp.zeros((4, 5), dt)}
    ours = gc.differentially_private_aggregate(1.0, 2.0, key=11)
    theirs = optax.contrib.differentially_private_aggregate(1.0, 2.0, key=11)
    s_ours, s_theirs = ours.init(grads), theirs.init(grads)
    step_ours, step_theirs = jax.jit(ours.update), jax.jit(theirs.update)
    for _ in range(3):
        u_ours, s_ours = step_ours(grads, s_ours)
        u_theirs, s_theirs = step_theirs(grads, s_theirs)
        for name in grads:
            a, b = np.asarray(u_ours[name], np.float64), np.asarray(u_theirs[name], np.float64)
            assert u_ours[name].dtype == dt and float(np.std(a)) > 0.1
            if dtype == "float32":
                np.testing.assert_array_equal(a, b)
            else:
                np.testing.assert_allclose(a, b, rtol=2**-8)


@pytest.mark.parametrize("clip", [0.0, 0.3, 1.0, 1e30])
def test_clipping_and_mean_match_a_float64_reference(clip):
    """Without noise, u = (1/B) sum_b min(1, C / ||g_b||) g_b, the norm over the whole tree."""
    rng = np.random.default_rng(3)
    grads = {
        "w": rng.standard_normal((5, 2, 3)),
        "b": rng.standard_normal((5, 3)),
    }
    grads["w"][2] = 0.0  # a zero example: factor 1, no division by zero
    grads["b"][2] = 0.0
    norms = np.sqrt(sum(np.sum(g.reshape(5, -1) ** 2, axis=1) for g in grads.values()))
    with np.errstate(divide="ignore", invalid="ignore"):
        factors = np.nan_to_num(np.minimum(clip / norms, 1.0), nan=1.0)
    expected = {k: np.tensordot(factors, g, axes=1) / 5 for k, g in grads.items()}
    tx = gc.differentially_private_aggregate(clip, 0.0, key=0)
    g32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), grads)
    u, _ = jax.jit(tx.update)(g32, tx.init(g32))
    for k in grads:
        np.testing.assert_allclose(np.asarray(u[k]), expected[k], rtol=1e-6, atol=1e-7)


def test_the_noise_has_the_stated_standard_deviation():
    # One example of zero gradient: u = sigma * C * z, 10^4 draws; the std's standard error is
    # 0.7%, so 5% is a loose bound.
    tx = gc.differentially_private_aggregate(3.0, 2.0, key=5)
    grads = [jnp.zeros((1, 100, 100))]
    u, _ = tx.update(grads, tx.init(grads))
    assert abs(float(jnp.std(u[0])) - 6.0) < 0.3
    assert abs(float(jnp.mean(u[0]))) < 0.3


def test_private_logistic_regression_still_learns():
    # 512 separable examples, batches of 64, noise std equal to the clipping norm: the noisy
    # mean of 64 clipped gradients still points downhill, and 150 steps separate the classes.
    x, y = _data(seed=100, n=512)
    tx = gc.dpsgd(0.5, l2_norm_clip=1.0, noise_multiplier=1.0, seed=0, momentum=0.9)
    params = _params(jnp.float32)

    @jax.jit
    def step(p, s, k):
        idx = jax.random.choice(jax.random.PRNGKey(k), 512, (64,), replace=False)
        u, s = tx.update(_per_example_grads(p, x[idx], y[idx]), s, p)
        return optax.apply_updates(p, u), s

    state = tx.init(params)
    before = float(_loss(params, x, y))
    for k in range(150):
        params, state = step(params, state, k)
    accuracy = float(jnp.mean(((x @ params["w"] + params["b"]) > 0) == (y > 0.5)))
    assert float(_loss(params, x, y)) < 0.6 * before
    assert accuracy > 0.9


def test_seed_is_optaxs_deprecated_key():
    grads = {"w": jnp.ones((2, 3))}
    with pytest.warns(DeprecationWarning, match='"seed" is deprecated'):
        by_seed = gc.differentially_private_aggregate(1.0, 1.0, seed=4)
    by_key = gc.differentially_private_aggregate(1.0, 1.0, key=4)
    typed = gc.differentially_private_aggregate(1.0, 1.0, key=jax.random.key(4))
    outs = [tx.update(grads, tx.init(grads))[0]["w"] for tx in (by_seed, by_key, typed)]
    for out in outs[1:]:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(outs[0]))
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="key or seed"):
        gc.differentially_private_aggregate(1.0, 1.0, key=1, seed=2)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.differentially_private_aggregate(-1.0, 1.0), r"l2_norm_clip must be in"),
        (lambda: gc.differentially_private_aggregate(1.0, float("nan")), r"noise_multiplier"),
        (lambda: gc.differentially_private_aggregate(lambda t: 1.0, 1.0), r"not a schedule"),
        (lambda: gc.differentially_private_aggregate(1.0, 1.0, key="k"), r"key must be"),
        (lambda: gc.dpsgd(0.1, 1.0, 1.0, seed=None), r"seed must be an int or a PRNG key"),
        (lambda: gc.dpsgd(0.1, 1.0, 1.0, 0, momentum=1.5), r"^momentum must be in"),
        (lambda: gc.dpsgd(0.1, 1.0, 1.0, 0, nesterov="yes"), r"nesterov must be a bool"),
        (lambda: gc.dpsgd(-0.1, 1.0, 1.0, 0), r"learning_rate"),
    ],
)
def test_invalid_arguments_raise_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_aggregated_or_mismatched_gradients_are_rejected_naming_the_leaf():
    params = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(())}
    tx = gc.differentially_private_aggregate(1.0, 1.0, key=0)
    state = tx.init(params)
    per_example = {"w": jnp.ones((4, 2, 3)), "b": jnp.ones((4,))}
    tx.update(per_example, state, params)  # the right input passes
    with pytest.raises(ValueError, match=r"batch axis 0; the update at \['b'\] is a scalar"):
        tx.update(params, state)
    with pytest.raises(ValueError, match=r"one batch size.*\[3, 4\]"):
        tx.update({"w": jnp.ones((3, 2, 3)), "b": jnp.ones((4,))}, state)
    # Aggregated gradients whose leaves happen to share a leading size: only params tell.
    square = {"w": jnp.zeros((2, 2)), "b": jnp.zeros((2,))}
    with pytest.raises(ValueError, match=r"per-example gradients.*\['b'\]"):
        tx.update(square, tx.init(square), square)


def test_repr_and_layout():
    tx = gc.dpsgd(0.1, 1.0, 1.1, seed=3, momentum=0.9)
    text = repr(tx)
    assert text.startswith("dpsgd(learning_rate=0.1, l2_norm_clip=1.0, noise_multiplier=1.1")
    assert "differentially_private_aggregate(l2_norm_clip=1.0, noise_multiplier=1.1, key=3" in text
    state = tx.init(_params(jnp.float32))
    # optax's chain: (DifferentiallyPrivateAggregateState, TraceState, EmptyState), and without
    # momentum identity's EmptyState in the middle.
    assert type(state[0]) is gc.contrib.DifferentiallyPrivateAggregateState
    assert state[0].rng_key.dtype == jnp.uint32
    plain = gc.dpsgd(0.1, 1.0, 1.1, seed=3).init(_params(jnp.float32))
    assert isinstance(plain[1], gc.EmptyState) and isinstance(plain[2], gc.EmptyState)


def test_live_noise_multiplier_changes_between_jitted_steps():
    tx = gc.with_live_hyperparams(gc.differentially_private_aggregate(1.0, 1.0, key=0))
    grads = {"w": jnp.ones((4, 3))}
    step = jax.jit(tx.update)
    state = tx.init(grads)
    noisy, _ = step(grads, state)
    quiet, _ = step(grads, gc.tree_set(state, noise_multiplier=0.0))
    np.testing.assert_allclose(np.asarray(quiet["w"]), np.full(3, 1 / np.sqrt(3)), rtol=1e-6)
    assert not np.allclose(np.asarray(noisy["w"]), np.asarray(quiet["w"]))
