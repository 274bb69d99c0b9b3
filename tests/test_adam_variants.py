"""NAdam, RAdam, AMSGrad, Adamax and Adagrad: optax by default, PyTorch's conventions by keyword."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run, run_both
from family_a_support import Quadratic, committed, numpy_run, run_on_loss

import gradchain as gc

STEPS = 20

OPTAX_CASES = {
    "nadam": (lambda: gc.nadam(0.01), lambda: optax.nadam(0.01)),
    "nadamw": (
        lambda: gc.nadamw(0.01, weight_decay=0.1),
        lambda: optax.nadamw(0.01, weight_decay=0.1),
    ),
    "radam": (lambda: gc.radam(0.01), lambda: optax.radam(0.01)),
    "radam_nesterov": (
        lambda: gc.radam(0.01, nesterov=True),
        lambda: optax.radam(0.01, nesterov=True),
    ),
    "amsgrad": (lambda: gc.amsgrad(0.01), lambda: optax.amsgrad(0.01)),
    "amsgrad_paper": (
        lambda: gc.amsgrad(0.01, bias_correction_mu=False, bias_correction_nu=False),
        lambda: optax.amsgrad(0.01, bias_correction_mu=False, bias_correction_nu=False),
    ),
    "adamax": (lambda: gc.adamax(0.01), lambda: optax.adamax(0.01)),
    "adamaxw": (
        lambda: gc.adamaxw(0.01, weight_decay=0.1),
        lambda: optax.adamaxw(0.01, weight_decay=0.1),
    ),
    "adagrad": (lambda: gc.adagrad(0.1), lambda: optax.adagrad(0.1)),
}


@pytest.mark.parametrize("name", sorted(OPTAX_CASES))
def test_matches_optax_over_jitted_steps(name):
    ours, ref = OPTAX_CASES[name]
    got, want = run_both(ours(), ref(), committed(mixed_params(bf16=False)), STEPS)
    assert_trees_close(got[-1], want[-1])
    assert_trees_close(got[STEPS // 2], want[STEPS // 2])


# ---------------------------------------------------------------------------------------------
# PyTorch's conventions, transcribed from ALGORITHMS.md into numpy (float64)


def torch_amsgrad(lr, b1=0.9, b2=0.999, eps=1e-8):
    """ALGORITHMS.md §3.3: the maximum of the raw v, debiased afterwards."""
    st = {}

    def step(p, g, t):
        out = {}
        for k in p:
            m, v, vmax = st.get(k, (0.0, 0.0, 0.0))
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            vmax = np.maximum(vmax, v)
            st[k] = (m, v, vmax)
            denom = np.sqrt(vmax) / np.sqrt(1 - b2**t) + eps
            out[k] = p[k] - lr / (1 - b1**t) * m / denom
        return out

    return step


def torch_nadam(lr, b1=0.9, b2=0.999, eps=1e-8, psi=4e-3):
    """ALGORITHMS.md §3.4: torch.optim.NAdam with its momentum schedule."""
    st = {"prod": 1.0}

    def step(p, g, t):
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
        st["prod"] *= mu_t
        prod = st["prod"]
        out = {}
        for k in p:
            m, v = st.get(k, (0.0, 0.0))
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            st[k] = (m, v)
            denom = np.sqrt(v / (1 - b2**t)) + eps
            out[k] = (
                p[k]
                - lr * (1 - mu_t) / (1 - prod) * g[k] / denom
                - lr * mu_next / (1 - prod * mu_next) * m / denom
            )
        return out

    return step


def torch_radam(lr, b1=0.9, b2=0.999, eps=1e-8):
    """ALGORITHMS.md §3.6: rectified iff rho_t > 5, eps added before bias correction."""
    st = {}
    rho_inf = 2 / (1 - b2) - 1

    def step(p, g, t):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        out = {}
        for k in p:
            m, v = st.get(k, (0.0, 0.0))
            m = b1 * m + (1 - b1) * g[k]
            v = b2 * v + (1 - b2) * g[k] ** 2
            st[k] = (m, v)
            m_hat = m / (1 - b1**t)
            if rho > 5:
                r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                out[k] = p[k] - lr * m_hat * r * np.sqrt(1 - b2**t) / (np.sqrt(v) + eps)
            else:
                out[k] = p[k] - lr * m_hat
        return out

    return step


def torch_adagrad(lr, eps=1e-10):
    """ALGORITHMS.md §2: s += g^2; p -= lr g / (sqrt(s) + eps), accumulator from 0."""
    st = {}

    def step(p, g, t):
        out = {}
        for k in p:
            s = st.get(k, 0.0) + g[k] ** 2
            st[k] = s
            out[k] = p[k] - lr * g[k] / (np.sqrt(s) + eps)
        return out

    return step


# (gradchain with the reference keyword, the numpy reference, gradchain's default)
REFERENCE_CASES = {
    "amsgrad_debias_after_max": (
        lambda: gc.amsgrad(0.05, debias_after_max=True),
        lambda: torch_amsgrad(0.05),
        lambda: gc.amsgrad(0.05),
    ),
    "nadam_momentum_decay": (
        lambda: gc.nadam(0.05, momentum_decay=4e-3),
        lambda: torch_nadam(0.05),
        lambda: gc.nadam(0.05),
    ),
    "nadamw_momentum_decay_without_decay": (
        lambda: gc.nadamw(0.05, weight_decay=0.0, momentum_decay=4e-3),
        lambda: torch_nadam(0.05),
        lambda: gc.nadamw(0.05, weight_decay=0.0),
    ),
    "radam_torch": (
        lambda: gc.radam(0.05, eps=1e-3, strict_threshold=True, eps_before_bias_correction=True),
        lambda: torch_radam(0.05, eps=1e-3),
        lambda: gc.radam(0.05, eps=1e-3),
    ),
    "adagrad_eps_outside_sqrt": (
        lambda: gc.adagrad(0.1, 0.0, 1e-3, eps_in_sqrt=False),
        lambda: torch_adagrad(0.1, eps=1e-3),
        lambda: gc.adagrad(0.1, 0.0, 1e-3),
    ),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CASES))
def test_reference_keyword_follows_the_reference_formula(name):
    ours, reference, default = REFERENCE_CASES[name]
    problem = Quadratic()
    want = numpy_run(reference(), problem, STEPS)
    with jax.enable_x64(True):
        got, _ = run_on_loss(ours(), problem.params(), problem.loss, STEPS, gc.apply_updates)
        optax_way, _ = run_on_loss(
            default(), problem.params(), problem.loss, STEPS, gc.apply_updates
        )
    assert_trees_close(got[-1], want[-1], rtol=1e-10, atol=1e-12)
    # The keyword matters: the default (optax's convention) is measurably elsewhere.
    gap = max(float(np.max(np.abs(np.asarray(optax_way[-1][k]) - want[-1][k]))) for k in want[-1])
    assert gap > 1e-6


def test_nadam_with_infinite_momentum_decay_is_optax_nadam():
    # mu_t = b1 (1 - 0.5 * 0.96^(t psi)) -> b1 as psi -> inf (ALGORITHMS.md §3.4)
    with jax.enable_x64(True):
        params = committed(mixed_params(bf16=False))
        got, want = run_both(gc.nadam(0.01, momentum_decay=1e6), optax.nadam(0.01), params, STEPS)
    assert_trees_close(got[-1], want[-1])


def _first_update(build, grads):
    """The first update of ``build()`` on numpy ``grads``, computed in float64."""
    with jax.enable_x64(True):
        tx = build()
        grads = jax.tree.map(jnp.asarray, grads)
        params = jax.tree.map(jnp.zeros_like, grads)
        return jax.jit(tx.update)(grads, tx.init(params), params)[0]


def test_nadam_first_step_is_the_appendix_b_multiple_of_the_sign():
    g = {"w": np.asarray([3.0, -0.5, 2e-3, -40.0])}
    u = _first_update(lambda: gc.nadam(0.1, eps=0.0), g)
    # -eta (1 + 2 b1)/(1 + b1) sign(g) = -1.47368 eta sign(g) for b1 = 0.9
    np.testing.assert_allclose(u["w"], -0.1 * 2.8 / 1.9 * np.sign(g["w"]), rtol=1e-12)


@pytest.mark.parametrize("strict", [False, True])
def test_radam_takes_momentum_steps_until_rho_reaches_the_threshold(strict):
    # b2 = 0.999: rho_1..rho_6 = 1.0, 2.0, 3.0, 4.0, 4.996, 5.994, so steps 1-5 are
    # un-normalised momentum steps -eta m_hat_t under both >= 5 and > 5 (Appendix B).
    b1 = 0.9
    g_seq = [np.asarray([0.5, -2.0, 1e-3]) * (t + 1) for t in range(6)]
    with jax.enable_x64(True):
        tx = gc.radam(1.0, b1=b1, strict_threshold=strict)
        state = tx.init({"w": jnp.zeros(3)})
        update = jax.jit(tx.update)
        m = 0.0
        for t, g in enumerate(g_seq, start=1):
            u, state = update({"w": jnp.asarray(g)}, state, {"w": jnp.zeros(3)})
            m = b1 * m + (1 - b1) * g
            momentum_step = -m / (1 - b1**t)
            if t <= 5:
                np.testing.assert_allclose(u["w"], momentum_step, rtol=1e-12)
            else:
                assert not np.allclose(u["w"], momentum_step, rtol=1e-3)
    u = _first_update(lambda: gc.radam(0.1), {"w": g_seq[0]})
    np.testing.assert_allclose(u["w"], -0.1 * g_seq[0], rtol=1e-12)


@pytest.mark.parametrize("strict, rectified", [(False, True), (True, False)])
def test_radam_strict_threshold_excludes_rho_equal_to_the_threshold(strict, rectified):
    # b2 = 0 gives rho_inf = rho_t = 1 exactly and r_t = 1: at threshold 1 the two
    # conventions differ only in whether rho_t = threshold is rectified.
    g = {"w": np.asarray([0.5, -2.0, 4.0])}
    u = _first_update(
        lambda: gc.radam(1.0, b2=0.0, eps=0.0, threshold=1.0, strict_threshold=strict), g
    )
    expected = -np.sign(g["w"]) if rectified else -np.asarray(g["w"])
    np.testing.assert_allclose(u["w"], expected, rtol=1e-12)


def test_adamax_infinity_moment_keeps_eps_inside_the_maximum():
    # nu_1 = max(|g| + eps, 0): with g = 0 the update is 0 / eps = 0, never 0/0.
    u = _first_update(lambda: gc.adamax(1.0, eps=1e-3), {"w": np.asarray([0.0, 1.0])})
    np.testing.assert_allclose(u["w"], [0.0, -1.0 / 1.001], rtol=1e-12)


def test_reference_states_are_read_by_name():
    params = committed({"w": jnp.ones(3)})
    grads = gradient_stream(params, 3)
    _, state = run(gc.amsgrad(0.1, debias_after_max=True), params, grads, gc.apply_updates)
    nu_max = gc.tree_get(state, "nu_max")["w"]
    np.testing.assert_array_equal(nu_max, np.maximum(nu_max, gc.tree_get(state, "nu")["w"]))
    _, state = run(
        gc.with_live_hyperparams(gc.nadam(0.1, momentum_decay=4e-3)),
        params,
        grads,
        gc.apply_updates,
    )
    mus = [0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3)) for t in (1, 2, 3)]
    np.testing.assert_allclose(gc.tree_get(state, "mu_product"), np.prod(mus), rtol=1e-6)
    assert float(gc.tree_get(state, "momentum_decay")) == pytest.approx(4e-3)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.amsgrad(0.1, b2=1.0), r"b2 must be in \[0, 1\)"),
        (
            lambda: gc.amsgrad(0.1, bias_correction_nu=False, debias_after_max=True),
            "debias_after_max=True .* needs bias_correction_nu=True",
        ),
        (lambda: gc.amsgrad(0.1, bias_correction_mu="yes"), "bias_correction_mu must be a bool"),
        (lambda: gc.nadam(0.1, momentum_decay=-1e-3), r"momentum_decay must be in \[0, inf\)"),
        (lambda: gc.nadamw(-0.1), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.radam(0.1, threshold=-1.0), r"threshold must be in \[0, inf\)"),
        (lambda: gc.radam(0.1, eps=-1e-8), r"eps must be in \[0, inf\)"),
        (lambda: gc.adamax(0.1, b1=1.5), r"b1 must be in \[0, 1\)"),
        (lambda: gc.adamaxw(0.1, weight_decay=-1.0), r"weight_decay must be in \[0, inf\)"),
        (
            lambda: gc.adagrad(0.1, initial_accumulator_value=-0.1),
            r"initial_accumulator_value must be in \[0, inf\)",
        ),
        (lambda: gc.adagrad(0.1, eps_in_sqrt=1), "eps_in_sqrt must be a bool"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()
