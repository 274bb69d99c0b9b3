"""Prodigy and D-Adaptation AdamW: optax by default, the reference packages by keyword."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from crosscheck import assert_trees_close
from family_a_support import Quadratic, committed, numpy_run, run_on_loss

import gradchain as gc

STEPS = 30


def schedule(count):
    return 1.0 - 0.02 * count


OPTAX_CASES = {
    "prodigy": (lambda: gc.prodigy(), lambda: optax.contrib.prodigy(), "estim_lr"),
    "prodigy_decay_schedule_coef": (
        lambda: gc.prodigy(schedule, betas=(0.8, 0.99), weight_decay=0.1, estim_lr_coef=2.0),
        lambda: optax.contrib.prodigy(
            schedule, betas=(0.8, 0.99), weight_decay=0.1, estim_lr_coef=2.0
        ),
        "estim_lr",
    ),
    "prodigy_safeguard_warmup": (
        lambda: gc.prodigy(betas=(0.9, 0.99), weight_decay=0.1, safeguard_warmup=True),
        lambda: optax.contrib.prodigy(betas=(0.9, 0.99), weight_decay=0.1, safeguard_warmup=True),
        "estim_lr",
    ),
    "dadapt_adamw": (lambda: gc.dadapt_adamw(), lambda: optax.contrib.dadapt_adamw(), "estim_lr"),
    "dadapt_adamw_decay_schedule": (
        lambda: gc.dadapt_adamw(schedule, betas=(0.8, 0.99), weight_decay=0.1),
        lambda: optax.contrib.dadapt_adamw(schedule, betas=(0.8, 0.99), weight_decay=0.1),
        "estim_lr",
    ),
}


def assert_estimate_grew(state, factor=2):
    """The estimate left its initial 1e-6, so a comparison exercised its update."""
    assert float(gc.tree_get(state, "estim_lr")) > factor * 1e-6


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax_and_the_step_size_estimate_is_readable(name):
    ours, ref, field = OPTAX_CASES[name]
    problem = Quadratic(dtype=np.float32)
    got, state = run_on_loss(ours(), problem.params(), problem.loss, STEPS, gc.apply_updates)
    want, ref_state = run_on_loss(ref(), problem.params(), problem.loss, STEPS, optax.apply_updates)
    assert_trees_close(got[-1], want[-1])
    np.testing.assert_allclose(gc.tree_get(state, "estim_lr"), getattr(ref_state, field), rtol=1e-6)
    # optax's state, field for field: one transformation, not a chain.
    assert type(state).__name__ == type(ref_state).__name__
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    ref_paths = jax.tree_util.tree_flatten_with_path(ref_state)[0]
    assert paths == [jax.tree_util.keystr(p) for p, _ in ref_paths]
    assert_estimate_grew(state)


def prodigyopt(
    lr=1.0,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    wd=0.0,
    d0=1e-6,
    coef=1.0,
    use_bias_correction=False,
    safeguard_warmup=False,
):
    """ALGORITHMS.md §7.1: prodigyopt 1.1.2's Prodigy with decoupled decay, growth_rate = inf."""
    b3 = np.sqrt(b2)
    st = {"d": d0, "d_max": d0, "r": 0.0, "k": 0}

    def step(p, g, t):
        d, k = st["d"], st["k"]
        bc = np.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0
        dlr = d * lr * bc
        st.setdefault("p0", {key: v.copy() for key, v in p.items()})
        st["r"] = b3 * st["r"] + (d / d0) * dlr * sum(
            np.sum(g[key] * (st["p0"][key] - p[key])) for key in p
        )
        for key in p:
            m, v, s = st.get(key, (0.0, 0.0, 0.0))
            m = b1 * m + (1 - b1) * d * g[key]
            v = b2 * v + (1 - b2) * d**2 * g[key] ** 2
            s = b3 * s + (d / d0) * (d if safeguard_warmup else dlr) * g[key]
            st[key] = (m, v, s)
        s_l1 = sum(np.sum(np.abs(st[key][2])) for key in p)
        d_hat = coef * st["r"] / s_l1
        if d == d0:
            d = max(d, d_hat)
        st["d_max"] = max(st["d_max"], d_hat)
        st["d"] = d = min(st["d_max"], d * np.inf)
        st["k"] = k + 1
        return {
            key: p[key] - wd * dlr * p[key] - dlr * st[key][0] / (np.sqrt(st[key][1]) + d * eps)
            for key in p
        }

    return step


def dadaptation_adam(
    lr=1.0, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, d0=1e-6, use_bias_correction=False, decouple=False
):
    """ALGORITHMS.md §7.3: dadaptation 3.2's DAdaptAdam, growth_rate = inf."""
    sb2 = np.sqrt(b2)
    st = {"d": d0, "nw": 0.0, "k": 0}

    def step(p, g, t):
        d, k = st["d"], st["k"]
        bc = np.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if use_bias_correction else 1.0
        dlr = d * lr * bc
        if not decouple:
            g = {key: g[key] + wd * p[key] for key in p}
        num_acc = 0.0
        for key in p:
            m, v, s = st.get(key, (0.0, 0.0, 0.0))
            num_acc += dlr * np.sum(g[key] * s / (np.sqrt(v) + eps))
            m = b1 * m + (1 - b1) * dlr * g[key]
            v = b2 * v + (1 - b2) * g[key] ** 2
            s = sb2 * s + (1 - sb2) * dlr * g[key]
            st[key] = (m, v, s)
        st["nw"] = sb2 * st["nw"] + (1 - sb2) * num_acc
        s_l1 = sum(np.sum(np.abs(st[key][2])) for key in p)
        st["d"] = max(d, st["nw"] / ((1 - sb2) * s_l1))
        st["k"] = k + 1
        decay = wd * dlr if decouple else 0.0
        return {
            key: p[key] - decay * p[key] - st[key][0] / (np.sqrt(st[key][1]) + eps) for key in p
        }

    return step


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("safeguard_warmup", [False, True])
def test_prodigy_follows_the_reference_algorithm(bias_correction, safeguard_warmup):
    # bias_correction=True is optax's (always on); False is prodigyopt's default (§15 row 17).
    problem = Quadratic(seed=2)
    want = numpy_run(
        prodigyopt(
            0.5,
            b2=0.99,
            wd=0.05,
            use_bias_correction=bias_correction,
            safeguard_warmup=safeguard_warmup,
        ),
        problem,
        STEPS,
    )
    with jax.enable_x64(True):
        tx = gc.prodigy(
            0.5,
            betas=(0.9, 0.99),
            weight_decay=0.05,
            safeguard_warmup=safeguard_warmup,
            bias_correction=bias_correction,
        )
        got, state = run_on_loss(tx, problem.params(), problem.loss, STEPS, gc.apply_updates)
    assert_trees_close(got[-1], want[-1], rtol=1e-9, atol=1e-12)
    assert_estimate_grew(state)
    other = numpy_run(
        prodigyopt(
            0.5,
            b2=0.99,
            wd=0.05,
            use_bias_correction=not bias_correction,
            safeguard_warmup=safeguard_warmup,
        ),
        problem,
        STEPS,
    )
    assert not np.allclose(other[-1]["w"], want[-1]["w"], rtol=1e-6)


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("decouple", [True, False])
def test_dadapt_adamw_follows_the_reference_algorithm(bias_correction, decouple):
    # (True, True) is optax's dadapt_adamw; (False, False) dadaptation.DAdaptAdam's defaults.
    problem = Quadratic(seed=3)
    want = numpy_run(
        dadaptation_adam(0.5, wd=0.2, use_bias_correction=bias_correction, decouple=decouple),
        problem,
        STEPS,
    )
    with jax.enable_x64(True):
        tx = gc.dadapt_adamw(
            0.5, weight_decay=0.2, bias_correction=bias_correction, decouple=decouple
        )
        got, state = run_on_loss(tx, problem.params(), problem.loss, STEPS, gc.apply_updates)
    assert_trees_close(got[-1], want[-1], rtol=1e-9, atol=1e-12)
    assert_estimate_grew(state)
    other = numpy_run(
        dadaptation_adam(0.5, wd=0.2, use_bias_correction=bias_correction, decouple=not decouple),
        problem,
        STEPS,
    )
    assert not np.allclose(other[-1]["w"], want[-1]["w"], rtol=1e-6)


@pytest.mark.parametrize("build", [gc.prodigy, gc.dadapt_adamw], ids=["prodigy", "dadapt_adamw"])
def test_zero_gradients_keep_the_estimate_instead_of_dividing_zero_by_zero(build):
    tx = build(weight_decay=0.0)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    u, state = jax.jit(tx.update)({"w": jnp.zeros(3)}, state, params)
    np.testing.assert_array_equal(u["w"], 0.0)
    assert float(gc.tree_get(state, "estim_lr")) == pytest.approx(1e-6)


def test_prodigy_keeps_a_copy_of_the_initial_parameters():
    params = committed({"w": jnp.asarray([1.0, 2.0])})
    tx = gc.prodigy()
    np.testing.assert_array_equal(gc.tree_get(tx.init(params), "params0")["w"], params["w"])
    abstract = jax.eval_shape(tx.init, params)
    assert gc.tree_get(abstract, "params0")["w"].shape == (2,)
    with pytest.raises(TypeError, match=r"starts its state at the parameters. values"):
        tx.init({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})


def test_the_estimate_can_be_changed_between_steps_by_name():
    problem = Quadratic(dtype=np.float32)
    tx = gc.prodigy()
    state = tx.init(problem.params())
    state = gc.tree_set(state, estim_lr=jnp.asarray(0.5, jnp.float32))
    u, state = jax.jit(tx.update)(jax.grad(problem.loss)(problem.params()), state, problem.params())
    assert float(gc.tree_get(state, "estim_lr")) >= 0.5
    # Step 1 with d = 0.5: dlr = d sqrt(1-b2)/(1-b1), m = (1-b1) d g, v = (1-b2) d^2 g^2, so
    # u = -dlr m / sqrt(v) = -d sign(g) (up to eps and float32's 1 - b2, ALGORITHMS.md §14).
    g = problem.grad_np(problem.p0)["b"]
    np.testing.assert_allclose(u["b"], -0.5 * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.prodigy(-1.0), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.prodigy(betas=(0.9,)), r"betas must be a pair"),
        (lambda: gc.prodigy(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\)"),
        (lambda: gc.prodigy(beta3=1.0), r"beta3 must be in \[0, 1\)"),
        (lambda: gc.prodigy(estim_lr0=0.0), r"estim_lr0 must be in \(0, inf\)"),
        (lambda: gc.prodigy(estim_lr_coef=0.0), r"estim_lr_coef must be in \(0, inf\)"),
        (lambda: gc.prodigy(weight_decay=-0.1), r"weight_decay must be in \[0, inf\)"),
        (lambda: gc.prodigy(safeguard_warmup=1), "safeguard_warmup must be a bool"),
        (lambda: gc.dadapt_adamw(betas=(1.5, 0.9)), r"betas\[0\] must be in \[0, 1\)"),
        (lambda: gc.dadapt_adamw(eps=-1.0), r"eps must be in \[0, inf\)"),
        (lambda: gc.dadapt_adamw(decouple="yes"), "decouple must be a bool"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()
