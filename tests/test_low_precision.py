"""Low precision: with ``gc.with_float32_state``, bfloat16 and float16 parameters keep float32
state and get finite, correct updates.

Design (ALGORITHMS.md §14): by default a transformation keeps optax's dtypes and arithmetic
(the parameter's: bfloat16 moments for bfloat16 parameters, tests/test_dtype_policy.py).
gradchain's low-precision policy is the option ``gc.with_float32_state(tx)``: the moments of
bfloat16/float16 parameters are stored in float32 and all arithmetic, eps included, runs in
float32. So ``eps = 1e-8``, which float16 cannot hold (its smallest subnormal is 6e-8), is
neither warned about nor clamped: it is applied in float32, where it is exact enough; only the
update is rounded to float16 at the end. The guarantees below hold with the option; without it,
as in optax, they do not (a float16 Adam step of a zero gradient is 0/0 there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import TRANSFORMS

import gradchain as gc


def _params(entry, dtype):
    shapes = {"a": (2, 3), "b": (3, 2)} if entry.matrices else {"a": (2, 3), "b": (3,)}
    return {
        k: jnp.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(dtype) for k, s in shapes.items()
    }


@pytest.mark.parametrize("entry", TRANSFORMS, ids=[e.id for e in TRANSFORMS])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bfloat16", "float16"])
def test_low_precision_params_get_no_low_precision_state_with_float32_state(entry, dtype):
    tx = gc.with_float32_state(entry.build())
    params = entry.params_arg(_params(entry, dtype))
    state = tx.init(params)
    grads = _params(entry, dtype)
    _, state = tx.update(entry.updates_arg(grads), state, params, **entry.extra_args(params))
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        path = jax.tree_util.keystr(path)
        if any(f".{name}" in path for name in entry.param_copies):
            continue  # a copy of the parameters is exact in their own dtype
        assert leaf.dtype not in (jnp.bfloat16, jnp.float16), path


def _adam_run(dtype, grads, eps=1e-8, float32_state=True):
    tx = gc.adam(1e-3, eps=eps)
    tx = gc.with_float32_state(tx) if float32_state else tx
    params = {"w": jnp.zeros(grads[0]["w"].shape, dtype)}
    state = tx.init(params)
    step = jax.jit(
        lambda p, s, g: (lambda u, s: (gc.apply_updates(p, u), s, u))(*tx.update(g, s, p))
    )
    updates = []
    for g in grads:
        params, state, u = step(params, state, jax.tree.map(lambda x: x.astype(dtype), g))
        updates.append(u["w"])
    return params, updates


def test_float16_adam_with_eps_1e8_matches_float32_where_the_squares_underflow_in_float16():
    """Gradients of 1e-4: their squares (1e-8) and eps (1e-8) are zero in float16, so a float16
    moment would give 0/0. In float32 arithmetic the update is about lr * sign(g)."""
    rng = np.random.default_rng(0)
    grads = [
        {
            "w": jnp.asarray(
                1e-4 * rng.choice([-1.0, 1.0], 8) * rng.uniform(0.5, 1.5, 8), jnp.float32
            )
        }
        for _ in range(20)
    ]
    p16, u16 = _adam_run(jnp.float16, grads)
    p32, u32 = _adam_run(jnp.float32, grads)
    for a, b in zip(u16, u32):
        assert bool(jnp.all(jnp.isfinite(a)))
        # float16 rounds the update (1e-3 scale) to 2^-11 relative: 1e-3 tolerance is 2 ulps.
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(p16["w"], np.float32), np.asarray(p32["w"]), rtol=1e-2, atol=2e-5
    )


def test_float16_adam_zero_gradient_gives_a_zero_update_not_nan():
    _, updates = _adam_run(jnp.float16, [{"w": jnp.zeros(4)}] * 3)
    for u in updates:
        np.testing.assert_array_equal(np.asarray(u, np.float32), 0.0)


def test_without_the_option_float16_adam_is_optax_and_gives_nan_for_a_zero_gradient():
    """The default is optax's arithmetic: eps = 1e-8 is 0 in float16, so 0 / (0 + 0) is NaN,
    in optax as here. This is why the option exists."""
    _, ours = _adam_run(jnp.float16, [{"w": jnp.zeros(4)}] * 2, float32_state=False)
    tx = optax.adam(1e-3)
    params = {"w": jnp.zeros(4, jnp.float16)}
    theirs, _ = tx.update(params, tx.init(params), params)
    assert bool(jnp.all(jnp.isnan(ours[0]))) and bool(jnp.all(jnp.isnan(theirs["w"])))


def test_float16_eps_is_kept_as_given_in_float32_state():
    tx = gc.with_live_hyperparams(gc.adam(1e-3, eps=1e-8))
    state = tx.init({"w": jnp.zeros(3, jnp.float16)})
    eps = gc.tree_get(state, "eps")
    assert eps.dtype == jnp.float32 and float(eps) == np.float32(1e-8)


# A 1,000-step bfloat16 training run ------------------------------------------------------------


def _regression(dtype):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(k1, (64, 8))
    w_true = jax.random.normal(k2, (8, 4))
    y = jnp.tanh(x @ w_true)
    params = {
        "w1": (0.3 * jax.random.normal(k3, (8, 16))).astype(dtype),
        "b1": jnp.zeros((1, 16), dtype),
        "w2": jnp.zeros((16, 4), dtype),
    }

    def loss(p):
        h = jnp.tanh(x @ p["w1"].astype(jnp.float32) + p["b1"].astype(jnp.float32))
        return jnp.mean((h @ p["w2"].astype(jnp.float32) - y) ** 2)

    return params, loss


@pytest.mark.parametrize(
    "build",
    # Adafactor's step is relative to the parameter's RMS: at 3e-3 it is below half a bfloat16
    # ulp of the weights and rounds away (bfloat16 parameters without stochastic rounding lose
    # such steps, whatever the optimizer); 3e-2 is above it.
    [
        lambda: gc.adamw(3e-3, weight_decay=1e-4),
        lambda: gc.adafactor(3e-2),
        lambda: gc.muon(3e-3, adam_learning_rate=3e-3),
    ],
    ids=["adamw", "adafactor", "muon"],
)
def test_a_1000_step_bfloat16_run_with_float32_state_stays_finite_and_learns(build):
    tx = gc.with_float32_state(build())
    params, loss = _regression(jnp.bfloat16)

    def step(carry, _):
        p, s = carry
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return (gc.apply_updates(p, u), s), value

    (params, state), losses = jax.jit(lambda p, s: jax.lax.scan(step, (p, s), None, length=1000))(
        params, tx.init(params)
    )
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((params, state)))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    # The last 100 steps average at least 5x below the first loss (bf16 params still learn).
    assert losses[-100:].mean() < losses[0] / 5, (losses[0], losses[-100:].mean())
