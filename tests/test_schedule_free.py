"""Schedule-Free: optax's numbers with its off-by-one on request, the reference's by default."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc

STEPS = 20

# optax keeps weight_sum and max_lr in the lowest parameter dtype, so a bfloat16 leaf would put
# the averaging weights of every leaf in bfloat16; the cross-checks use float32 params only.
PARAMS = mixed_params(bf16=False)
GRADS = gradient_stream(PARAMS, STEPS)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (
            lambda: gc.schedule_free_adamw(0.01, weight_decay=0.01),
            lambda: optax.contrib.schedule_free_adamw(0.01, weight_decay=0.01),
        ),
        (
            lambda: gc.schedule_free_adamw(
                0.01, 5, b1=0.8, weight_decay=0.01, optax_off_by_one=True
            ),
            lambda: optax.contrib.schedule_free_adamw(0.01, 5, b1=0.8, weight_decay=0.01),
        ),
        (
            lambda: gc.schedule_free_sgd(0.1, 5, weight_decay=0.01, optax_off_by_one=True),
            lambda: optax.contrib.schedule_free_sgd(0.1, 5, weight_decay=0.01),
        ),
        (
            lambda: gc.schedule_free(gc.sgd(0.1), 0.1, b1=0.95, weight_lr_power=1.0),
            lambda: optax.contrib.schedule_free(optax.sgd(0.1), 0.1, b1=0.95, weight_lr_power=1.0),
        ),
    ],
    ids=[
        "adamw",
        "adamw-warmup-optax-off-by-one",
        "sgd-warmup-optax-off-by-one",
        "wrapper-over-sgd",
    ],
)
def test_matches_optax_over_jitted_steps(ours, theirs):
    got, state = run(ours(), PARAMS, GRADS, gc.apply_updates)
    want, their_state = run(theirs(), PARAMS, GRADS, optax.apply_updates)
    for k in range(STEPS):
        assert_trees_close(got[k], want[k], what=f"params after step {k + 1}")
    assert_trees_close(
        gc.schedule_free_eval_params(state, got[-1]),
        optax.contrib.schedule_free_eval_params(their_state, want[-1]),
        what="eval params",
    )


def warmup_4(count):
    """The reference's warmup as a gradchain schedule: update k uses 0.05 * min(1, (k+1)/4)."""
    return 0.05 * jnp.minimum(1.0, (count + 1) / 4)


def reference_schedule_free(
    params, grads, *, lr, warmup, b1, weight_decay, r=0.0, power=2.0, adam=True, b2=0.999, eps=1e-8
):
    """``schedulefree`` 1.4.1 as ALGORITHMS.md §8.1 writes it, in float64: the y/z form, one
    step counter k for the warmup of both the step and the weights. Returns (y, x) per step."""
    y = {k: np.asarray(v, np.float64) for k, v in params.items()}
    z = {k: v.copy() for k, v in y.items()}
    v_sq = {k: np.zeros_like(v) for k, v in y.items()}
    lr_max, weight_sum, out = -1.0, 0.0, []
    for k, g in enumerate(grads):
        gamma = lr * ((k + 1) / warmup if k < warmup else 1.0)
        lr_max = max(lr_max, gamma)
        w = (k + 1) ** r * lr_max**power
        weight_sum += w
        c = w / weight_sum
        for name in y:
            gk = np.asarray(g[name], np.float64)
            if adam:
                v_sq[name] = b2 * v_sq[name] + (1 - b2) * gk**2
                gk = gk / (np.sqrt(v_sq[name] / (1 - b2 ** (k + 1))) + eps)
            gk = gk + weight_decay * y[name]
            y[name] = (1 - c) * y[name] + c * z[name] + gamma * (b1 * (1 - c) - 1) * gk
            z[name] = z[name] - gamma * gk
        x = {n: y[n] + (1 - 1 / b1) * (z[n] - y[n]) for n in y}
        out.append(({n: a.copy() for n, a in y.items()}, x))
    return out


@pytest.mark.parametrize(
    "build, kwargs",
    [
        (
            lambda: gc.schedule_free_adamw(0.01, 5, b1=0.9, weight_decay=0.01),
            dict(lr=0.01, warmup=5, b1=0.9, weight_decay=0.01),
        ),
        (
            lambda: gc.schedule_free_sgd(0.05, 8, b1=0.8, weight_decay=0.01),
            dict(lr=0.05, warmup=8, b1=0.8, weight_decay=0.01, adam=False),
        ),
        (
            lambda: gc.schedule_free(gc.sgd(warmup_4), warmup_4, 0.9, r=0.5),
            dict(lr=0.05, warmup=4, b1=0.9, weight_decay=0.0, r=0.5, adam=False),
        ),
    ],
    ids=["adamw", "sgd", "wrapper-with-r"],
)
def test_default_follows_the_reference_formulas_with_warmup(build, kwargs):
    got, state = run(build(), PARAMS, GRADS, gc.apply_updates)
    expected = reference_schedule_free(PARAMS, GRADS, **kwargs)
    # float32 against float64: ~20 steps of O(lr) updates on O(1) values, each rounded to 2^-24
    # relative, plus the float32 bias correction 1 - b2^t (§14): 1e-5 bounds the drift.
    for k in range(STEPS):
        assert_trees_close(
            got[k], expected[k][0], what=f"y after step {k + 1}", rtol=1e-5, atol=1e-5
        )
    assert_trees_close(
        gc.schedule_free_eval_params(state, got[-1]),
        expected[-1][1],
        what="x",
        rtol=1e-5,
        atol=1e-5,
    )


def test_default_takes_a_base_step_at_the_first_warmup_update_and_optax_mode_does_not():
    grads = GRADS[:1]
    _, ours = run(gc.schedule_free_sgd(0.1, warmup_steps=4), PARAMS, grads, gc.apply_updates)
    _, optaxlike = run(
        gc.schedule_free_sgd(0.1, warmup_steps=4, optax_off_by_one=True),
        PARAMS,
        grads,
        gc.apply_updates,
    )
    z_ours, z_optax = gc.tree_get(ours, "z"), gc.tree_get(optaxlike, "z")
    # reference: gamma_0 = 0.1 * 1/4; optax: its base scale_by_learning_rate sees schedule(0) = 0.
    assert_trees_close(z_ours, jax.tree.map(lambda p, g: p - 0.025 * g, PARAMS, grads[0]), what="z")
    assert_trees_close(z_optax, PARAMS, what="z")


@pytest.mark.parametrize("optax_off_by_one", [False, True])
def test_after_the_first_update_x_y_and_z_coincide(optax_off_by_one):
    # Appendix B: the first update has c = 1 (its weight is positive), so x = y = z afterwards.
    tx = gc.schedule_free_adamw(0.01, warmup_steps=3, optax_off_by_one=optax_off_by_one)
    (y,), state = run(tx, PARAMS, GRADS[:1], gc.apply_updates)
    assert_trees_close(y, gc.tree_get(state, "z"), what="y vs z")
    assert_trees_close(gc.schedule_free_eval_params(state, y), y, what="x vs y")


def _in_hyperparams(path, _) -> bool:
    return any(getattr(k, "name", None) == "hyperparams" for k in path)


def test_changing_b1_between_steps_keeps_x_on_its_average():
    # x_{k+1} = (1 - c_k) x_k + c_k z_{k+1} does not involve b1; y = b1 x + (1 - b1) z does. With
    # a constant lr and power 2, c_k = 1/(k+1); b1 is 0.9 for 5 updates, then 0.5 by tree_set.
    tx = gc.with_live_hyperparams(gc.schedule_free_sgd(0.1))
    step = jax.jit(tx.update)
    y, state = PARAMS, tx.init(PARAMS)
    x = z = {k: np.asarray(v, np.float64) for k, v in PARAMS.items()}
    for k, g in enumerate(GRADS[:10]):
        if k == 5:
            # Only the live hyperparameter: the state's own b1 (optax's field) is the one that
            # built y, with which x is recovered.
            state = gc.tree_utils.tree_set(state, _in_hyperparams, b1=0.5)
        b1 = 0.9 if k < 5 else 0.5
        updates, state = step(g, state, y)
        y = gc.apply_updates(y, updates)
        z = {n: z[n] - 0.1 * np.asarray(g[n], np.float64) for n in z}
        x = {n: (1 - 1 / (k + 1)) * x[n] + z[n] / (k + 1) for n in x}
    assert_trees_close(gc.schedule_free_eval_params(state, y), x, what="x")
    assert_trees_close(y, {n: b1 * x[n] + (1 - b1) * z[n] for n in x}, what="y")


def test_eval_params_are_found_inside_a_chain():
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.schedule_free_sgd(0.1))
    traj, state = run(tx, PARAMS, GRADS[:3], gc.apply_updates)
    inner = state[1]
    expected = jax.tree.map(lambda y, z: (y - 0.1 * z) / 0.9, traj[-1], inner.z)
    assert_trees_close(gc.schedule_free_eval_params(state, traj[-1]), expected, what="x")


def test_eval_params_without_a_schedule_free_state_is_a_clear_error():
    with pytest.raises(ValueError, match="exactly one schedule_free transformation, found 0"):
        gc.schedule_free_eval_params(gc.adam(0.1).init(PARAMS), PARAMS)


@pytest.mark.parametrize(
    "wrap, z_dtype",
    [(lambda tx: tx, jnp.bfloat16), (gc.with_float32_state, jnp.float32)],
    ids=["default-as-optax", "with_float32_state"],
)
def test_bfloat16_params_keep_their_dtype_and_z_follows_the_state_policy(wrap, z_dtype):
    # optax keeps z in the parameter's dtype (state_dtype=None); the option keeps it in float32.
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    tx = wrap(gc.schedule_free_adamw(0.01))
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.ones((3, 2), jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert gc.tree_get(state, "z")["w"].dtype == z_dtype


def test_state_memory_is_z_plus_the_base_state():
    params = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)}
    n = 64 * 32

    def bytes_per_param(tx):
        shapes = jax.eval_shape(tx.init, params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / n

    # z alone (4 bytes) plus O(1) scalars; AdamW adds its second moment nu, no first moment.
    assert bytes_per_param(gc.schedule_free_sgd(1.0)) == pytest.approx(4.0, abs=0.05)
    assert bytes_per_param(gc.schedule_free_adamw()) == pytest.approx(8.0, abs=0.05)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.schedule_free_sgd(b1=0.0), r"b1 must be in \(0, 1\], got 0.0"),
        (lambda: gc.schedule_free_adamw(b1=1.5), r"b1 must be in \(0, 1\]"),
        (lambda: gc.schedule_free_adamw(-0.1), r"learning_rate must be in \[0, inf\)"),
        (
            lambda: gc.schedule_free_adamw(weight_lr_power=-1.0),
            r"weight_lr_power must be in \[0, inf\)",
        ),
        (
            lambda: gc.schedule_free_adamw(warmup_steps=0),
            r"warmup_steps must be None or a positive int",
        ),
        (lambda: gc.schedule_free_adamw(b2=1.0), r"b2 must be in \[0, 1\)"),
        (lambda: gc.schedule_free(gc.sgd(0.1), 0.1, r=-1.0), r"r must be in \[0, inf\)"),
        (
            lambda: gc.schedule_free(gc.adam(0.1), 0.1),
            r"base_optimizer has momentum \(scale_by_adam",
        ),
        (
            lambda: gc.schedule_free(gc.sgd(0.1, momentum=0.9), 0.1),
            r"base_optimizer has momentum \(trace",
        ),
        (lambda: gc.schedule_free("sgd", 0.1), r"base_optimizer must be a gradient transformation"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_repr_and_hyperparameters_read_back():
    tx = gc.schedule_free_adamw(0.01, warmup_steps=10)
    assert tx.warmup_steps == 10 and tx.b1 == 0.9 and tx.optax_off_by_one is False
    assert "schedule_free_adamw(learning_rate=0.01, warmup_steps=10" in repr(tx)
    assert tx == gc.schedule_free_adamw(0.01, warmup_steps=10)
