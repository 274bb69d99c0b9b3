"""Lion, the trust ratio, LAMB and LARS against optax and their defining invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run, run_both
from family_a_support import committed

import gradchain as gc

STEPS = 20
MASK = {"scalar": False, "vector": False, "matrix": True, "tensor": True}

LARS_MASKED = dict(
    weight_decay=0.1,
    weight_decay_mask=MASK,
    trust_ratio_mask=MASK,
    trust_coefficient=0.01,
    eps=1e-3,
    nesterov=True,
)

OPTAX_CASES = {
    "lion": (lambda: gc.lion(0.01), lambda: optax.lion(0.01)),
    "lion_masked_decay": (
        lambda: gc.lion(0.01, b1=0.8, b2=0.95, weight_decay=0.3, mask=MASK),
        lambda: optax.lion(0.01, b1=0.8, b2=0.95, weight_decay=0.3, mask=MASK),
    ),
    "lion_smooth": (
        lambda: gc.chain(
            gc.scale_by_lion(mode="smooth", smooth_beta=3.0), gc.scale_by_learning_rate(0.01)
        ),
        lambda: optax.chain(
            optax.scale_by_lion(mode="smooth", smooth_beta=3.0), optax.scale_by_learning_rate(0.01)
        ),
    ),
    "lion_refined": (
        lambda: gc.chain(gc.scale_by_lion(mode="refined"), gc.scale_by_learning_rate(0.01)),
        lambda: optax.chain(
            optax.scale_by_lion(mode="refined"), optax.scale_by_learning_rate(0.01)
        ),
    ),
    "lamb": (lambda: gc.lamb(0.01, weight_decay=0.1), lambda: optax.lamb(0.01, weight_decay=0.1)),
    "lars": (lambda: gc.lars(0.1, weight_decay=0.1), lambda: optax.lars(0.1, weight_decay=0.1)),
    "lars_nesterov_masked": (
        lambda: gc.lars(0.1, **LARS_MASKED),
        lambda: optax.lars(0.1, **LARS_MASKED),
    ),
    "trust_ratio_min_norm": (
        lambda: gc.chain(
            gc.scale_by_trust_ratio(min_norm=2.0, trust_coefficient=0.3, eps=1e-3),
            gc.scale_by_learning_rate(0.01),
        ),
        lambda: optax.chain(
            optax.scale_by_trust_ratio(min_norm=2.0, trust_coefficient=0.3, eps=1e-3),
            optax.scale_by_learning_rate(0.01),
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax_over_jitted_steps(name):
    ours, ref = OPTAX_CASES[name]
    got, want = run_both(ours(), ref(), committed(mixed_params(bf16=False)), STEPS)
    assert_trees_close(got[-1], want[-1])
    assert_trees_close(got[STEPS // 2], want[STEPS // 2])


def test_lion_moves_every_coordinate_by_exactly_the_learning_rate():
    # Appendix B: |u| = eta wherever c_t != 0 (and 0 where c_t = 0), whatever the gradient scale.
    params = committed({"w": jnp.zeros(6)})
    grads = [{"w": jnp.asarray([1e-6, -3.0, 0.0, 50.0, -1e-3, 2.0]) * s} for s in (1.0, -0.5, 4.0)]
    tx = gc.lion(0.125, weight_decay=0.0)
    traj, _ = run(tx, params, grads, gc.apply_updates)
    steps = np.diff(np.stack([np.zeros(6)] + [np.asarray(p["w"]) for p in traj]), axis=0)
    # the third coordinate's gradient, hence c_t, is always 0
    np.testing.assert_array_equal(np.abs(steps), [[0.125, 0.125, 0.0, 0.125, 0.125, 0.125]] * 3)


def test_lamb_step_norm_is_the_learning_rate_times_each_parameter_norm():
    # r = adam + lambda p is rescaled to ||p|| per leaf, so ||u_leaf|| = eta ||p_leaf||.
    params = committed(mixed_params(bf16=False))
    grads = gradient_stream(params, 1)[0]
    tx = gc.with_live_hyperparams(gc.lamb(0.01, weight_decay=0.1))  # keeps the trust ratios
    u, state = jax.jit(tx.update)(grads, tx.init(params), params)
    for k in params:
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(u[k])),
            0.01 * np.linalg.norm(np.asarray(params[k])),
            rtol=1e-5,
        )
    ratios = gc.tree_get(state, "trust_ratio")
    assert ratios.keys() == params.keys() and all(float(r) > 0 for r in ratios.values())


def test_trust_ratio_is_readable_and_one_where_a_norm_is_zero():
    params = {"zero": jnp.zeros(3), "w": jnp.asarray([3.0, 4.0]), "masked": jnp.ones(2)}
    grads = {"zero": jnp.ones(3), "w": jnp.asarray([0.0, 0.5]), "masked": jnp.ones(2)}
    tx = gc.with_live_hyperparams(
        gc.scale_by_trust_ratio(
            trust_coefficient=2.0, mask={"zero": True, "w": True, "masked": False}
        )
    )
    u, state = tx.update(grads, tx.init(params), params)
    ratios = gc.tree_get(state, "trust_ratio")
    np.testing.assert_allclose(ratios["w"], 2.0 * 5.0 / 0.5, rtol=1e-6)
    assert float(ratios["zero"]) == 1.0 and float(ratios["masked"]) == 1.0
    np.testing.assert_allclose(u["w"], [0.0, 10.0], rtol=1e-6)
    np.testing.assert_array_equal(u["zero"], grads["zero"])
    np.testing.assert_array_equal(u["masked"], grads["masked"])


def test_trust_ratio_without_params_is_a_clear_error():
    tx = gc.lamb(1e-3)
    params = {"w": jnp.ones(2)}
    with pytest.raises(ValueError, match="needs the current parameters"):
        tx.update(params, tx.init(params))


def test_low_precision_leaves_keep_their_dtype():
    params = committed(mixed_params())
    grads = gradient_stream(params, 3)
    for tx in (gc.lion(1e-3), gc.lamb(1e-3), gc.lars(1e-3)):
        traj, _state = run(tx, params, grads, gc.apply_updates)
        assert traj[-1]["bf16"].dtype == jnp.bfloat16
        assert all(
            bool(jnp.all(jnp.isfinite(x.astype(jnp.float32)))) for x in jax.tree.leaves(traj[-1])
        )
    # optax's dtype by default; gradchain's float32 momentum with the option.
    assert gc.tree_get(gc.lion(1e-3).init(params), "mu")["bf16"].dtype == jnp.bfloat16
    float32_state = gc.with_float32_state(gc.lion(1e-3)).init(params)
    assert gc.tree_get(float32_state, "mu")["bf16"].dtype == jnp.float32


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.lion(0.1, b1=1.5), r"b1 must be in \[0, 1\]"),
        (lambda: gc.lion(0.1, b2=1.0), r"b2 must be in \[0, 1\)"),
        (lambda: gc.lion(-0.1), r"learning_rate must be in \[0, inf\)"),
        (
            lambda: gc.scale_by_lion(mode="soft"),
            r"mode must be one of \('hard', 'smooth', 'refined'\)",
        ),
        (
            lambda: gc.scale_by_lion(mode="smooth", smooth_beta=0.0),
            r"smooth_beta must be in \(0, inf\)",
        ),
        (lambda: gc.scale_by_trust_ratio(min_norm=-1.0), r"min_norm must be in \[0, inf\)"),
        (
            lambda: gc.scale_by_trust_ratio(trust_coefficient=-1.0),
            r"trust_coefficient must be in \[0, inf\)",
        ),
        (lambda: gc.lamb(0.1, eps=-1.0), r"eps must be in \[0, inf\)"),
        (lambda: gc.lamb(0.1, weight_decay=-1.0), r"weight_decay must be in \[0, inf\)"),
        (lambda: gc.lars(0.1, momentum=1.5), r"momentum must be in \[0, 1\]"),
        (lambda: gc.lars(0.1, eps=-1.0), r"eps must be in \[0, inf\)"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_lion_on_a_large_leaf_steps_without_copying_the_momentum_and_equals_the_small_path(
    monkeypatch,
):
    """From ``_ORDERED_SIZE`` elements (2^20; lowered here to keep the test small) Lion writes the
    sign as int8 codes and orders the momentum's in-place write after them: the compiled donated
    step holds no copy of the momentum, and its updates, parameters and momentum equal the plain
    path's bit for bit, signed zeros and NaN included."""
    import importlib

    lion_module = importlib.import_module("gradchain.optimizers.lion")

    rng = np.random.default_rng(0)
    monkeypatch.setattr(lion_module, "_ORDERED_SIZE", 1 << 12)
    monkeypatch.setattr(gc.numerics, "ORDERED_MIN_SIZE", 1 << 12)  # after()'s own threshold
    jax.clear_caches()
    p = {"w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32)}
    special = jnp.array([0.0, -0.0, np.nan, -np.nan, 1e-40, -1e-40, np.inf, -np.inf])
    grads = [
        {"w": jnp.asarray(rng.standard_normal((64, 64)), jnp.float32).at[0, :8].set(special)}
        for _ in range(4)
    ]
    tx = gc.lion(1e-2, weight_decay=0.1)

    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s, u

    def run():
        params, state, out = p, tx.init(p), []
        for g in grads:
            params, state, u = jax.jit(step)(params, state, g)
            out.append((params, state.scale_by_lion.mu, u))
        return jax.tree.map(lambda x: np.asarray(x).view(np.uint32), out)

    def train_step(p, s, g):
        return step(p, s, g)[:2]

    compiled = jax.jit(train_step, donate_argnums=(0, 1)).lower(p, tx.init(p), grads[0]).compile()
    hlo = compiled.as_text()
    assert "s8[64,64]" in hlo and " copy(" not in hlo
    large = run()
    monkeypatch.setattr(lion_module, "_ORDERED_SIZE", 1 << 40)
    jax.clear_caches()
    for a, b in zip(jax.tree.leaves(large), jax.tree.leaves(run())):
        np.testing.assert_array_equal(a, b)
