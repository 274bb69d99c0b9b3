"""Schedules: optax cross-checks, PyTorch golden values, WSD, the int32 limit, argument checks,
live hyperparameters and reduce_on_plateau."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc

TOP = 2**31 - 1


def along(*schedules, n):
    """Each schedule at steps 0..n-1, evaluated inside one ``jax.jit`` with a traced int32 step."""
    steps = jnp.arange(n, dtype=jnp.int32)
    each = lambda c: tuple(jnp.asarray(s(c), jnp.float32) for s in schedules)
    out = jax.jit(lambda cs: jax.lax.map(each, cs))(steps)
    out = [np.asarray(v, np.float64) for v in out]
    return out[0] if len(out) == 1 else out


# ---------------------------------------------------------------------------------------------
# Against optax, over the whole range and past the end

WSD_PEAK, WSD_END = 3.0, 0.3


def optax_wsd(decay_fn):
    """WSD as ALGORITHMS.md §13.4 builds it from optax pieces: W=4, N=30, K=10."""
    return optax.join_schedules(
        [optax.linear_schedule(0.1, WSD_PEAK, 4), optax.constant_schedule(WSD_PEAK), decay_fn],
        [4, 20],
    )


SGDR_CYCLES = [
    dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10, end_value=0.1),
    dict(init_value=0.5, peak_value=0.8, warmup_steps=0, decay_steps=15, exponent=2.0),
]

OPTAX_PAIRS = {
    "constant": (gc.constant_schedule(0.3), optax.constant_schedule(0.3), 5),
    "polynomial": (
        gc.polynomial_schedule(1.0, 0.01, 2, 30, 5),
        optax.polynomial_schedule(1.0, 0.01, 2, 30, 5),
        45,
    ),
    "linear": (gc.linear_schedule(0.25, 1.0, 4), optax.linear_schedule(0.25, 1.0, 4), 10),
    "linear_begin": (
        gc.linear_schedule(1.0, 0.1, 20, transition_begin=7),
        optax.linear_schedule(1.0, 0.1, 20, transition_begin=7),
        35,
    ),
    "exponential": (
        gc.exponential_decay(2.0, 7, 0.8, transition_begin=3),
        optax.exponential_decay(2.0, 7, 0.8, transition_begin=3),
        60,
    ),
    "exponential_staircase": (
        gc.exponential_decay(1.0, 4, 0.5, staircase=True),
        optax.exponential_decay(1.0, 4, 0.5, staircase=True),
        30,
    ),
    "exponential_floor": (
        gc.exponential_decay(1.0, 5, 0.5, end_value=0.1),
        optax.exponential_decay(1.0, 5, 0.5, end_value=0.1),
        40,
    ),
    "exponential_ceiling": (
        gc.exponential_decay(1.0, 5, 1.5, end_value=3.0),
        optax.exponential_decay(1.0, 5, 1.5, end_value=3.0),
        25,
    ),
    "piecewise_constant": (
        gc.piecewise_constant_schedule(1.0, {8: 0.5, 4: 0.5, 20: 0.1}),
        optax.piecewise_constant_schedule(1.0, {8: 0.5, 4: 0.5, 20: 0.1}),
        25,
    ),
    "cosine": (
        gc.cosine_decay_schedule(1.0, 10, alpha=0.1),
        optax.cosine_decay_schedule(1.0, 10, 0.1),
        25,
    ),
    "cosine_exponent": (
        gc.cosine_decay_schedule(2.0, 25, exponent=2.0),
        optax.cosine_decay_schedule(2.0, 25, exponent=2.0),
        40,
    ),
    "warmup_cosine": (
        gc.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1),
        optax.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1),
        30,
    ),
    "warmup_cosine_exponent": (
        gc.warmup_cosine_decay_schedule(0.0, 3e-4, 10, 50, 1e-5, exponent=1.5),
        optax.warmup_cosine_decay_schedule(0.0, 3e-4, 10, 50, 1e-5, exponent=1.5),
        60,
    ),
    "warmup_cosine_no_warmup": (
        gc.warmup_cosine_decay_schedule(0.1, 1.0, 0, 15),
        optax.warmup_cosine_decay_schedule(0.1, 1.0, 0, 15),
        20,
    ),
    "warmup_constant": (
        gc.warmup_constant_schedule(0.0, 1.0, 8),
        optax.warmup_constant_schedule(0.0, 1.0, 8),
        12,
    ),
    "warmup_exponential": (
        gc.warmup_exponential_decay_schedule(0.0, 1.0, 5, 3, 0.7, 2, True, 0.2),
        optax.warmup_exponential_decay_schedule(0.0, 1.0, 5, 3, 0.7, 2, True, 0.2),
        40,
    ),
    "warmup_linear_decay": (
        gc.warmup_linear_decay_schedule(0.0, 1.0, 5, 20, 0.1),
        optax.join_schedules(
            [optax.linear_schedule(0.0, 1.0, 5), optax.linear_schedule(1.0, 0.1, 15)], [5]
        ),
        30,
    ),
    "interpolate_linear": (
        gc.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01}),
        optax.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01}),
        12,
    ),
    "interpolate_cosine": (
        gc.piecewise_interpolate_schedule("cosine", 0.5, {0: 2.0, 6: 0.1, 15: 4.0}),
        optax.piecewise_interpolate_schedule("cosine", 0.5, {0: 2.0, 6: 0.1, 15: 4.0}),
        20,
    ),
    "linear_onecycle": (
        gc.linear_onecycle_schedule(40, 1.0),
        optax.linear_onecycle_schedule(40, 1.0),
        50,
    ),
    "cosine_onecycle": (
        gc.cosine_onecycle_schedule(20, 1.0),
        optax.cosine_onecycle_schedule(20, 1.0),
        25,
    ),
    "cosine_onecycle_args": (
        gc.cosine_onecycle_schedule(50, 0.3, 0.25, 10.0, 100.0),
        optax.cosine_onecycle_schedule(50, 0.3, 0.25, 10.0, 100.0),
        60,
    ),
    "sgdr": (gc.sgdr_schedule(SGDR_CYCLES), optax.sgdr_schedule(SGDR_CYCLES), 35),
    "warm_restarts": (
        gc.cosine_warm_restarts_schedule(1.0, 3, T_mult=2, eta_min=0.01),
        optax.sgdr_schedule(
            [
                dict(
                    init_value=1.0,
                    peak_value=1.0,
                    warmup_steps=0,
                    decay_steps=3 * 2**i,
                    end_value=0.01,
                )
                for i in range(5)
            ]
        ),
        93,
    ),
    "warm_restarts_constant_period": (
        gc.cosine_warm_restarts_schedule(2.0, 4, eta_min=0.5),
        optax.sgdr_schedule(
            [dict(init_value=2.0, peak_value=2.0, warmup_steps=0, decay_steps=4, end_value=0.5)]
            * 10
        ),
        40,
    ),
    "join": (
        gc.join_schedules([gc.constant_schedule(1.0), gc.linear_schedule(1.0, 0.0, 10)], [5]),
        optax.join_schedules(
            [optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, 10)], [5]
        ),
        20,
    ),
    "join_optax_children": (
        gc.join_schedules(
            [
                optax.linear_schedule(0.0, 1.0, 3),
                optax.cosine_decay_schedule(1.0, 6),
                gc.constant_schedule(0.2),
            ],
            [3, 9],
        ),
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, 1.0, 3),
                optax.cosine_decay_schedule(1.0, 6),
                optax.constant_schedule(0.2),
            ],
            [3, 9],
        ),
        15,
    ),
    "wsd_linear": (
        gc.warmup_stable_decay_schedule(0.1, WSD_PEAK, 4, 30, 10, WSD_END),
        optax_wsd(optax.linear_schedule(WSD_PEAK, WSD_END, 10)),
        40,
    ),
    "wsd_cosine": (
        gc.warmup_stable_decay_schedule(0.1, WSD_PEAK, 4, 30, 10, WSD_END, "cosine"),
        optax_wsd(optax.cosine_decay_schedule(WSD_PEAK, 10, alpha=WSD_END / WSD_PEAK)),
        40,
    ),
    "wsd_1sqrt": (
        gc.warmup_stable_decay_schedule(0.1, WSD_PEAK, 4, 30, 10, WSD_END, "1-sqrt"),
        optax_wsd(
            lambda k: WSD_END + (WSD_PEAK - WSD_END) * (1 - jnp.sqrt(jnp.minimum(k, 10) / 10))
        ),
        40,
    ),
    "inverse_sqrt": (
        gc.warmup_inverse_sqrt_schedule(0.0, 2.0, 8, timescale=5),
        optax.join_schedules(
            [optax.linear_schedule(0.0, 2.0, 8), lambda k: 2.0 * jnp.sqrt(5 / (k + 5))], [8]
        ),
        40,
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_PAIRS))
def test_schedule_matches_optax_over_its_range_and_past_its_end(case):
    ours, theirs, n = OPTAX_PAIRS[case]
    actual, expected = along(ours, theirs, n=n)
    # Both sides round a handful of float32 operations; the forms differ in places (optax's
    # warmup cosine goes through alpha = end/peak, its one-cycle knot values are cumulative
    # products), which moves a value by a few ulps of the schedule's largest value.
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=2e-7 * np.abs(expected).max())


# ---------------------------------------------------------------------------------------------
# PyTorch golden values (ALGORITHMS.md §13.2; five significant digits)

WARMUP_COSINE_TORCH = [
    0.001,
    0.2008,
    0.4006,
    0.6004,
    0.8002,
    1.0,
    0.99017,
    0.9611,
    0.91406,
    0.85111,
    0.775,
    0.68906,
    0.59704,
    0.50296,
    0.41094,
    0.325,
    0.24889,
    0.18594,
    0.1389,
    0.10983,
    0.1,
]


def close5(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=5e-5, atol=5e-6)


def test_warmup_cosine_matches_pytorch_sequential_lr():
    schedule = gc.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1)
    close5(along(schedule, n=21), WARMUP_COSINE_TORCH)


def test_warmup_cosine_past_its_end_holds_by_default_and_rises_again_with_pytorch():
    optax_like = gc.warmup_cosine_decay_schedule(0.001, 1.0, 5, 20, end_value=0.1)
    torch_like = gc.warmup_cosine_decay_schedule(
        0.001, 1.0, 5, 20, end_value=0.1, convention="pytorch"
    )
    close5(along(torch_like, n=21), WARMUP_COSINE_TORCH)
    close5(along(optax_like, n=23)[21:], [0.1, 0.1])
    close5(along(torch_like, n=23)[21:], [0.10983, 0.1389])


def test_cosine_decay_matches_cosine_annealing_lr_and_pytorch_keeps_oscillating():
    torch_like = gc.cosine_decay_schedule(1.0, 10, alpha=0.1, convention="pytorch")
    optax_like = gc.cosine_decay_schedule(1.0, 10, alpha=0.1)
    np.testing.assert_array_equal(along(torch_like, n=11), along(optax_like, n=11))
    values = along(torch_like, n=31)
    close5(values[[10, 20, 30]], [0.1, 1.0, 0.1])
    assert along(optax_like, n=31)[20] == pytest.approx(0.1)


@pytest.mark.parametrize(
    "schedule",
    [
        gc.exponential_decay(1.0, 4, 0.5, staircase=True),
        gc.piecewise_constant_schedule(1.0, {4: 0.5, 8: 0.5}),
    ],
    ids=["exponential_decay", "piecewise_constant"],
)
def test_step_lr(schedule):
    np.testing.assert_array_equal(along(schedule, n=12), [1] * 4 + [0.5] * 4 + [0.25] * 4)


def test_polynomial_lr():
    expected = [(1 - i / 10) ** 2 for i in range(11)] + [0.0]
    close5(along(gc.polynomial_schedule(1.0, 0.0, 2, 10), n=12), expected)
    close5(expected[:3], [1, 0.81, 0.64])


def test_linear_lr():
    close5(along(gc.linear_schedule(0.25, 1.0, 4), n=6), [0.25, 0.4375, 0.625, 0.8125, 1, 1])


def test_cosine_annealing_warm_restarts():
    schedule = gc.cosine_warm_restarts_schedule(1.0, T_0=3, T_mult=2, eta_min=0.01)
    close5(
        along(schedule, n=10), [1, 0.7525, 0.2575, 1, 0.93368, 0.7525, 0.505, 0.2575, 0.07632, 1]
    )


def torch_onecycle(step, total, max_lr, pct, div, final_div, anneal, three_phase):
    """torch.optim.lr_scheduler.OneCycleLR's get_lr (2.14) restated in plain Python."""
    initial, low = max_lr / div, max_lr / div / final_div
    if three_phase:
        phases = [
            (pct * total - 1, initial, max_lr),
            (2 * pct * total - 2, max_lr, initial),
            (total - 1, initial, low),
        ]
    else:
        phases = [(pct * total - 1, initial, max_lr), (total - 1, max_lr, low)]
    start = 0.0
    for i, (end, a, b) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            p = (step - start) / (end - start)
            if anneal == "cos":
                return b + (a - b) / 2 * (math.cos(math.pi * p) + 1)
            return (b - a) * p + a
        start = end
    raise AssertionError


def test_cosine_onecycle_pytorch_matches_onecycle_lr():
    schedule = gc.cosine_onecycle_schedule(20, 1.0, convention="pytorch")
    values = along(schedule, n=20)
    close5(values[:6], [0.04, 0.13167, 0.37167, 0.66833, 0.90833, 1.0])
    close5(values[[6, 18, 19]], [0.98746, 0.01254, 4e-6])
    reference = [torch_onecycle(s, 20, 1.0, 0.3, 25.0, 1e4, "cos", False) for s in range(20)]
    np.testing.assert_allclose(values, reference, rtol=2e-6, atol=1e-7)


def test_cosine_onecycle_default_is_optax_one_step_later():
    values = along(gc.cosine_onecycle_schedule(20, 1.0), n=21)
    close5(values[:7], [0.04, 0.10431, 0.28, 0.52, 0.76, 0.93569, 1.0])
    close5(values[[19, 20]], [0.01254, 4e-6])


def test_linear_onecycle_pytorch_matches_three_phase_onecycle_lr():
    schedule = gc.linear_onecycle_schedule(
        50,
        2.0,
        pct_start=0.2,
        pct_final=0.4,
        div_factor=10.0,
        final_div_factor=100.0,
        convention="pytorch",
    )
    reference = [torch_onecycle(s, 50, 2.0, 0.2, 10.0, 100.0, "linear", True) for s in range(50)]
    np.testing.assert_allclose(along(schedule, n=50), reference, rtol=2e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Hugging Face and the reference code of WSD and inverse sqrt (ALGORITHMS.md §13.2b-13.4)


def test_warmup_linear_decay_matches_hugging_face_linear_schedule_with_warmup():
    w, n = 6, 25
    hf = [s / max(1, w) if s < w else max(0.0, (n - s) / max(1, n - w)) for s in range(35)]
    close5(along(gc.warmup_linear_decay_schedule(0.0, 1.0, w, n), n=35), hf)


@pytest.mark.parametrize("timescale", [None, 3])
def test_inverse_sqrt_matches_hugging_face(timescale):
    w = 8
    tau = timescale or w
    hf = [s / w if s < w else 1 / math.sqrt((s + tau - w) / tau) for s in range(60)]
    np.testing.assert_allclose(
        along(gc.warmup_inverse_sqrt_schedule(0.0, 1.0, w, timescale), n=60), hf, rtol=2e-6
    )


def test_inverse_sqrt_gives_the_transformer_schedule():
    d_model, w = 512, 40
    vaswani = [d_model**-0.5 * min((c + 1) ** -0.5, (c + 1) * w**-1.5) for c in range(200)]
    peak = (d_model * w) ** -0.5
    schedule = gc.warmup_inverse_sqrt_schedule(peak / w, peak, w - 1, timescale=w)
    np.testing.assert_allclose(along(schedule, n=200), vaswani, rtol=3e-6)


def hagele_wsd(s, n, n_warmup, init_div, fract_decay, f, decay_type):
    """``wsd_schedule`` of epfml/schedules-and-scaling (ALGORITHMS.md §13.4), a multiplier."""
    n_decay = int(fract_decay * n)
    n_hold = n - n_decay
    if s < n_warmup:
        return s / n_warmup + (1 - s / n_warmup) / init_div
    if s < n_hold:
        return 1.0
    if s < n:
        x = (s - n_hold) / n_decay
        shapes = {
            "linear": 1 - x,
            "1-sqrt": 1 - math.sqrt(x),
            "cosine": 0.5 * (1 + math.cos(math.pi * x)),
        }
        return f + (1 - f) * shapes[decay_type]
    return f


@pytest.mark.parametrize("cooldown_type", ["linear", "cosine", "1-sqrt"])
def test_wsd_matches_the_reference_code(cooldown_type):
    n, warmup, div, fract, f, lr = 100, 10, 100.0, 0.2, 0.05, 3e-3
    schedule = gc.warmup_stable_decay_schedule(
        lr / div, lr, warmup, n, int(fract * n), f * lr, cooldown_type
    )
    reference = [lr * hagele_wsd(s, n, warmup, div, fract, f, cooldown_type) for s in range(110)]
    np.testing.assert_allclose(along(schedule, n=110), reference, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("cooldown_type", ["linear", "cosine", "1-sqrt"])
def test_wsd_plateau_is_exactly_flat_and_the_cooldown_ends_exactly_on_the_floor(cooldown_type):
    peak, end, w, n, k = 3e-4, 3e-6, 10, 100, 20
    values = along(gc.warmup_stable_decay_schedule(0.0, peak, w, n, k, end, cooldown_type), n=120)
    assert np.all(values[w : n - k + 1] == np.float32(peak))
    assert np.all(values[n:] == np.float32(end))
    assert values[n - 1] > values[n]
    assert np.all(np.diff(values[n - k : n + 1]) < 0)


@pytest.mark.parametrize(
    "cooldown_type, shape",
    [
        ("linear", lambda x: 1 - x),
        ("cosine", lambda x: 0.5 * (1 + math.cos(math.pi * x))),
        ("1-sqrt", lambda x: 1 - math.sqrt(x)),
    ],
)
def test_wsd_cooldown_has_the_shape_of_its_formula(cooldown_type, shape):
    peak, end, n, k = 2.0, 0.5, 40, 16
    values = along(gc.warmup_stable_decay_schedule(0.0, peak, 0, n, k, end, cooldown_type), n=n + 1)
    expected = [end + (peak - end) * shape(j / k) for j in range(k + 1)]
    np.testing.assert_allclose(values[n - k :], expected, rtol=2e-6)


# ---------------------------------------------------------------------------------------------
# The int32 limit


def _restart_value(c, t0, mult, eta_min, top):
    start, length = 0, t0
    while c >= start + length:
        start, length = start + length, length * mult
    return eta_min + (top - eta_min) * 0.5 * (1 + math.cos(math.pi * (c - start) / length))


AT_TOP = [
    (gc.constant_schedule(0.5), 0.5),
    (gc.polynomial_schedule(1.0, 0.01, 2, 1000), 0.01),
    (gc.linear_schedule(0.0, 1.0, 100, transition_begin=2**30), 1.0),
    (gc.exponential_decay(1.0, 1000, 0.5), 0.0),
    (gc.exponential_decay(1.0, 3, 0.5, staircase=True, end_value=1e-3), 1e-3),
    (gc.piecewise_constant_schedule(1.0, {10: 0.1, 2**31 - 1: 0.5, 2**31: 0.1}), 0.05),
    (gc.cosine_decay_schedule(1.0, 1000, alpha=0.1), 0.1),
    # (2^31 - 1) mod 20 = 7: a float32 step would have lost the phase.
    (
        gc.cosine_decay_schedule(1.0, 10, convention="pytorch"),
        0.5 * (1 + math.cos(math.pi * 7 / 10)),
    ),
    (gc.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000, 0.01), 0.01),
    (
        gc.warmup_cosine_decay_schedule(0.0, 1.0, 3, 13, convention="pytorch"),
        0.5 * (1 + math.cos(math.pi * ((TOP - 3) % 20) / 10)),
    ),
    (gc.warmup_constant_schedule(0.0, 2.0, 1000), 2.0),
    (gc.warmup_exponential_decay_schedule(0.0, 1.0, 10, 100, 0.9, end_value=0.05), 0.05),
    (gc.warmup_linear_decay_schedule(0.0, 1.0, 10, 2**31 - 11, 0.5), 0.5 + 0.5 * 10 / (2**31 - 21)),
    (gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 4000), math.sqrt(4000 / TOP)),
    (gc.warmup_stable_decay_schedule(0.0, 1.0, 100, 2**31 - 1, 2**30, 0.1), 0.1),
    (
        gc.warmup_stable_decay_schedule(0.0, 1.0, 100, 2**31, 2**30, 0.1, "1-sqrt"),
        0.1 + 0.9 * (1 - math.sqrt((2**30 - 1) / 2**30)),
    ),
    (gc.piecewise_interpolate_schedule("cosine", 1.0, {100: 0.1}), 0.1),
    (gc.linear_onecycle_schedule(1000, 1.0), 1.0 / 25 / 1e4),
    (gc.cosine_onecycle_schedule(1000, 1.0, convention="pytorch"), 1.0 / 25 / 1e4),
    (gc.sgdr_schedule(SGDR_CYCLES), 0.0),
    (gc.cosine_warm_restarts_schedule(1.0, 7, eta_min=0.1), _restart_value(TOP, 7, 1, 0.1, 1.0)),
    (gc.cosine_warm_restarts_schedule(1.0, 3, 2, 0.01), _restart_value(TOP, 3, 2, 0.01, 1.0)),
    (gc.join_schedules([gc.constant_schedule(1.0), gc.constant_schedule(2.0)], [2**31]), 1.0),
]


@pytest.mark.parametrize("schedule, expected", AT_TOP, ids=[s.name for s, _ in AT_TOP])
def test_schedule_at_the_int32_limit_is_finite_and_correct(schedule, expected):
    value = float(jax.jit(schedule)(jnp.int32(TOP)))
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_counter_saturated_at_the_limit_still_reads_the_schedule():
    schedule = gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 10)
    tx = gc.with_live_hyperparams(gc.sgd(schedule))
    state = gc.tree_set(tx.init({"w": jnp.ones(2)}), count=jnp.int32(TOP))
    _, state = jax.jit(tx.update)({"w": jnp.ones(2)}, state, {"w": jnp.ones(2)})
    assert int(gc.tree_get(state, "count")) == TOP
    assert float(gc.tree_get(state, "learning_rate")) == pytest.approx(
        math.sqrt(10 / TOP), rel=1e-5
    )


@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_transition_is_constant_as_in_optax(steps):
    # optax turns a polynomial or linear transition of no length into the constant init_value
    # and a negative transition_begin into 0; code written for optax relies on both.
    counts = jnp.arange(8)
    for gc_fn, ox_fn in [
        (gc.polynomial_schedule(2.0, 5.0, 2, steps), optax.polynomial_schedule(2.0, 5.0, 2, steps)),
        (gc.linear_schedule(2.0, 5.0, steps), optax.linear_schedule(2.0, 5.0, steps)),
    ]:
        np.testing.assert_array_equal(jax.vmap(gc_fn)(counts), jnp.full(8, 2.0))
        np.testing.assert_array_equal(jax.vmap(gc_fn)(counts), jax.vmap(ox_fn)(counts))
    early = gc.linear_schedule(0.0, 1.0, 4, transition_begin=-2)
    late = optax.linear_schedule(0.0, 1.0, 4, transition_begin=-2)
    np.testing.assert_allclose(jax.vmap(early)(counts), jax.vmap(late)(counts), rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.polynomial_schedule(1.0, 0.0, 0.0, 5), r"power must be in \(0, inf\)"),
        (lambda: gc.linear_schedule(0.0, 1.0, 10.5), r"transition_steps must be an integer"),
        (lambda: gc.exponential_decay(1.0, 10, 0.0), r"decay_rate must be in \(0, inf\)"),
        (lambda: gc.exponential_decay(1.0, 0, 0.5), r"transition_steps must be >= 1"),
        (lambda: gc.exponential_decay(1.0, 10, 0.5, staircase=1), r"staircase must be a bool"),
        (
            lambda: gc.piecewise_constant_schedule(1.0, {10: -0.5}),
            r"boundaries_and_scales\[10\] must be in \[0, inf\)",
        ),
        (
            lambda: gc.piecewise_constant_schedule(1.0, {-3: 0.5}),
            r"boundaries_and_scales key must be >= 0",
        ),
        (lambda: gc.cosine_decay_schedule(1.0, 0), r"decay_steps must be >= 1"),
        (
            lambda: gc.cosine_decay_schedule(1.0, 10, convention="torch"),
            r"convention must be one of 'optax', 'pytorch'",
        ),
        (
            lambda: gc.cosine_decay_schedule(1.0, 10, exponent=-1.0),
            r"exponent must be in \(0, inf\)",
        ),
        (
            lambda: gc.warmup_cosine_decay_schedule(0.0, 1.0, 100, 50),
            r"decay_steps is the total length.*decay_steps=50, warmup_steps=100",
        ),
        (
            lambda: gc.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10),
            r"must be greater than warmup_steps",
        ),
        (lambda: gc.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), r"warmup_steps must be >= 0"),
        (
            lambda: gc.warmup_linear_decay_schedule(0.0, 1.0, 20, 10),
            r"must be greater than warmup_steps",
        ),
        (lambda: gc.warmup_constant_schedule(0.0, 1.0, -2), r"warmup_steps must be >= 0"),
        (
            lambda: gc.warmup_exponential_decay_schedule(0.0, 1.0, 5, 0, 0.5),
            r"transition_steps must be >= 1",
        ),
        (
            lambda: gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 10, timescale=0),
            r"timescale must be in \(0, inf\)",
        ),
        (
            lambda: gc.warmup_stable_decay_schedule(0.0, 1.0, 60, 100, 50),
            r"warmup_steps \+ cooldown_steps must be <= total_steps",
        ),
        (
            lambda: gc.warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 0),
            r"cooldown_steps must be >= 1",
        ),
        (
            lambda: gc.warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 20, cooldown_type="sqrt"),
            r"cooldown_type must be one of 'linear', 'cosine', '1-sqrt'",
        ),
        (
            lambda: gc.piecewise_interpolate_schedule("cubic", 1.0),
            r"interpolate_type must be one of 'linear', 'cosine'",
        ),
        (lambda: gc.linear_onecycle_schedule(0, 1.0), r"transition_steps must be >= 1"),
        (
            lambda: gc.linear_onecycle_schedule(100, 1.0, pct_start=0.5, pct_final=0.4),
            r"pct_final must be >= pct_start",
        ),
        (
            lambda: gc.cosine_onecycle_schedule(100, 1.0, pct_start=1.5),
            r"pct_start must be in \[0, 1\]",
        ),
        (
            lambda: gc.cosine_onecycle_schedule(100, 1.0, div_factor=0.0),
            r"div_factor must be in \(0, inf\)",
        ),
        (
            lambda: gc.cosine_onecycle_schedule(3, 1.0, convention="pytorch"),
            r"knots .* do not increase",
        ),
        (lambda: gc.sgdr_schedule([]), r"at least one cycle"),
        (
            lambda: gc.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=5)]),
            r"cosine_kwargs\[0\]: .*decay_steps",
        ),
        (
            lambda: gc.sgdr_schedule(
                [
                    dict(init_value=0, peak_value=1, warmup_steps=0, decay_steps=5),
                    dict(init_value=0, peak_value=1, warmup_steps=9, decay_steps=5),
                ]
            ),
            r"cosine_kwargs\[1\]: decay_steps is the total length",
        ),
        (lambda: gc.cosine_warm_restarts_schedule(1.0, 0), r"T_0 must be >= 1"),
        (
            lambda: gc.cosine_warm_restarts_schedule(1.0, 5, T_mult=1.5),
            r"T_mult must be an integer",
        ),
        (
            lambda: gc.join_schedules([gc.constant_schedule(1.0)], [5]),
            r"one boundary fewer than schedules",
        ),
        (
            lambda: gc.join_schedules([gc.constant_schedule(1.0)] * 3, [5, 2]),
            r"boundaries must not decrease",
        ),
        (
            lambda: gc.join_schedules([gc.constant_schedule(1.0), 0.5], [5]),
            r"schedules\[1\] must be a schedule",
        ),
        (lambda: gc.constant_schedule(float("nan")), r"value must not be NaN"),
        (lambda: gc.constant_schedule("high"), r"value must be a number"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_integral_float_step_counts_are_accepted_as_ints():
    schedule = gc.warmup_cosine_decay_schedule(0.0, 1.0, 1e2, 1e3)
    assert schedule.warmup_steps == 100 and isinstance(schedule.decay_steps, int)
    assert schedule == gc.warmup_cosine_decay_schedule(0.0, 1.0, 100, 1000)


def test_schedules_print_their_arguments_and_compare_equal():
    schedule = gc.warmup_stable_decay_schedule(0.0, 3e-4, 100, 10_000, 2000, cooldown_type="1-sqrt")
    assert repr(schedule) == (
        "warmup_stable_decay_schedule(init_value=0.0, peak_value=0.0003, warmup_steps=100, "
        "total_steps=10000, cooldown_steps=2000, end_value=0.0, cooldown_type='1-sqrt')"
    )
    same = gc.warmup_stable_decay_schedule(0.0, 3e-4, 100, 10_000, 2000, cooldown_type="1-sqrt")
    assert schedule == same and hash(schedule) == hash(same)
    assert schedule != gc.warmup_stable_decay_schedule(0.0, 3e-4, 100, 10_000, 2000)
    piecewise = gc.piecewise_constant_schedule(1.0, {8: 0.5, 4: 0.1})
    assert (
        repr(piecewise)
        == "piecewise_constant_schedule(init_value=1.0, boundaries_and_scales={4: 0.1, 8: 0.5})"
    )
    assert hash(piecewise) == hash(gc.piecewise_constant_schedule(1.0, {4: 0.1, 8: 0.5}))
    joined = gc.join_schedules([gc.constant_schedule(1.0), gc.linear_schedule(1.0, 0.0, 5)], [3])
    assert repr(joined) == (
        "join_schedules(schedules=[constant_schedule(value=1.0), linear_schedule(init_value=1.0, "
        "end_value=0.0, transition_steps=5, transition_begin=0)], boundaries=[3])"
    )
    assert "learning_rate=warmup_stable_decay_schedule(" in repr(gc.adamw(schedule))


def test_values_and_a_call_on_an_array_give_the_curve_for_plotting():
    schedule = gc.sgdr_schedule(SGDR_CYCLES)
    curve = schedule.values(30)
    assert isinstance(curve, np.ndarray) and curve.shape == (30,)
    np.testing.assert_array_equal(curve, along(schedule, n=30))
    # Eagerly, XLA fuses the arithmetic differently from the compiled map: an ulp apart.
    np.testing.assert_allclose(np.asarray(schedule(jnp.arange(30))), curve, rtol=2e-6)
    np.testing.assert_array_equal(schedule.values([3, 17, 29]), curve[[3, 17, 29]])


def test_float_steps_give_the_values_of_integer_steps():
    schedule = gc.warmup_cosine_decay_schedule(0.0, 1.0, 4, 20, 0.1)
    np.testing.assert_allclose(
        schedule.values(np.arange(25, dtype=np.float32)), schedule.values(25), rtol=1e-6
    )


def test_a_schedule_is_a_pure_function_of_the_step():
    schedule = gc.cosine_warm_restarts_schedule(1.0, 3, 2)
    assert float(schedule(5)) == float(schedule(jnp.int32(5))) == float(jax.jit(schedule)(5))
    assert float(schedule(-4)) == float(schedule(0))


# ---------------------------------------------------------------------------------------------
# Live hyperparameters


def test_learning_rate_logged_from_the_state_is_the_schedule():
    schedule = gc.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 25, end_value=1e-4)
    params = mixed_params(bf16=False)
    tx = gc.with_live_hyperparams(gc.adamw(schedule))
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(g, s, p)
        return gc.apply_updates(p, u), s

    logged = []
    for g in gradient_stream(params, 30):
        params, state = step(params, state, g)
        logged.append(float(gc.tree_get(state, "learning_rate")))
    np.testing.assert_array_equal(logged, along(schedule, n=30).astype(np.float32))


def test_changing_the_learning_rate_between_jitted_steps_does_not_recompile():
    tx = gc.with_live_hyperparams(gc.adamw(1e-3, weight_decay=0.0))
    params = {"w": jnp.ones(4)}
    state = tx.init(params)
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(None)
        u, s = tx.update(g, s, p)
        return u, s

    g = {"w": jnp.full(4, 2.0)}
    first, state = step(params, state, g)
    state = gc.tree_set(state, learning_rate=1e-4)
    second, state = step(params, state, g)
    assert len(traces) == 1
    assert float(gc.tree_get(state, "learning_rate")) == pytest.approx(1e-4)
    # A constant gradient gives Adam's normalised step 1 at every step: only the rate changes.
    np.testing.assert_allclose(second["w"], first["w"] / 10, rtol=1e-5)


def test_momentum_cycled_against_the_learning_rate_matches_optax_inject_hyperparams():
    n = 30
    lr = gc.cosine_onecycle_schedule(n, 1e-2)
    b1 = gc.piecewise_interpolate_schedule(
        "cosine", 0.95, {int(0.3 * n): 0.85 / 0.95, n: 0.95 / 0.85}
    )
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, n)
    ours, state = run(gc.with_live_hyperparams(gc.adam(lr, b1=b1)), params, grads, gc.apply_updates)
    theirs, _ = run(
        optax.inject_hyperparams(optax.adam)(learning_rate=lr, b1=b1),
        params,
        grads,
        optax.apply_updates,
    )
    assert_trees_close(ours[-1], theirs[-1], rtol=1e-5, atol=1e-6)
    assert float(gc.tree_get(state, "b1")) == pytest.approx(float(b1(n - 1)))
    assert float(b1(int(0.3 * n))) == pytest.approx(0.85)


def test_scheduled_weight_decay_matches_optax():
    wd = gc.linear_schedule(0.0, 0.5, 10)
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, 20)
    tx = gc.with_live_hyperparams(gc.adamw(1e-2, weight_decay=wd))
    ours, state = run(tx, params, grads, gc.apply_updates)
    theirs, _ = run(optax.adamw(1e-2, weight_decay=wd), params, grads, optax.apply_updates)
    # float32: see crosscheck.tolerance; optax folds the Python-double hyperparameters.
    assert_trees_close(ours[-1], theirs[-1], rtol=1e-5, atol=1e-6)
    assert float(gc.tree_get(state, "weight_decay")) == pytest.approx(0.5)


def test_scheduled_clipping_threshold_matches_optax_inject_hyperparams():
    max_norm = gc.exponential_decay(4.0, 2, 0.5)
    params = mixed_params(bf16=False)
    grads = gradient_stream(params, 20)
    tx = gc.with_live_hyperparams(gc.chain(gc.clip_by_global_norm(max_norm), gc.sgd(0.1)))
    ref = optax.chain(
        optax.inject_hyperparams(optax.clip_by_global_norm)(max_norm=max_norm), optax.sgd(0.1)
    )
    ours, state = run(tx, params, grads, gc.apply_updates)
    theirs, _ = run(ref, params, grads, optax.apply_updates)
    assert_trees_close(ours[-1], theirs[-1])
    assert float(gc.tree_get(state, "max_norm")) == pytest.approx(float(max_norm(19)))


# ---------------------------------------------------------------------------------------------
# reduce_on_plateau

LOSSES = [
    5.0,
    4.0,
    4.0,
    4.1,
    3.9995,
    4.0,
    4.2,
    4.0,
    3.0,
    3.0,
    3.0,
    3.0,
    3.0,
    2.0,
    2.0,
    2.0,
    2.0,
    2.0,
    2.0,
    2.0,
    2.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    1.0,
]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factor=0.5, patience=2),
        dict(factor=0.5, patience=2, cooldown=3, rtol=0.0, atol=0.01),
        dict(factor=0.2, patience=1, accumulation_size=3, min_scale=0.05),
    ],
)
def test_reduce_on_plateau_matches_optax(kwargs):
    ours, theirs = gc.reduce_on_plateau(**kwargs), optax.contrib.reduce_on_plateau(**kwargs)
    params = {"w": jnp.ones(3)}
    s_ours, s_theirs = ours.init(params), theirs.init(params)
    step_ours = jax.jit(lambda g, s, v: ours.update(g, s, params, value=v))
    step_theirs = jax.jit(lambda g, s, v: theirs.update(g, s, params, value=v))
    g = {"w": jnp.array([1.0, -2.0, 3.0])}
    scales = []
    for loss in LOSSES:
        u_ours, s_ours = step_ours(g, s_ours, loss)
        u_theirs, s_theirs = step_theirs(g, s_theirs, loss)
        assert_trees_close(u_ours, u_theirs)
        assert type(s_ours).__name__ == type(s_theirs).__name__
        for field in s_theirs._fields:
            assert float(getattr(s_ours, field)) == float(getattr(s_theirs, field)), field
        scales.append(float(gc.tree_get(s_ours, "scale")))
    assert min(scales) < 1.0


def test_reduce_on_plateau_takes_the_loss_through_a_chain():
    tx = gc.chain(gc.sgd(1.0), gc.reduce_on_plateau(factor=0.5, patience=1))
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    step = jax.jit(lambda s, v: tx.update({"w": jnp.ones(2)}, s, params, value=v))
    for loss in [1.0, 1.0, 1.0]:
        updates, state = step(state, loss)
    np.testing.assert_allclose(updates["w"], -0.25)
    assert float(gc.tree_get(state, "scale")) == 0.25


def test_reduce_on_plateau_without_the_loss_is_a_clear_error():
    tx = gc.reduce_on_plateau()
    state = tx.init({"w": jnp.ones(2)})
    with pytest.raises(
        ValueError, match=r"needs the loss: call update\(updates, state, params, value=loss\)"
    ):
        tx.update({"w": jnp.ones(2)}, state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(factor=1.0), r"factor must be in \(0, 1\)"),
        (dict(factor=0.0), r"factor must be in \(0, 1\)"),
        (dict(patience=0), r"patience must be >= 1"),
        (dict(rtol=0.0, atol=0.0), r"rtol and atol are both 0"),
        (dict(rtol=1.5), r"rtol must be in \[0, 1\]"),
        (dict(accumulation_size=0), r"accumulation_size must be >= 1"),
        (dict(cooldown=-1), r"cooldown must be >= 0"),
        (dict(min_scale=-0.1), r"min_scale must be in \[0, inf\)"),
    ],
)
def test_reduce_on_plateau_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gc.reduce_on_plateau(**kwargs)
