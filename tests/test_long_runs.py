"""Long runs: step counters saturate at 2^31 - 1, and what depends on them stays finite and right.

Each state is started with its step counters (every field named ``count``) just below the int32
limit, through ``gc.tree_set``, and stepped past it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import SCHEDULES, TRANSFORMS

import gradchain as gc

TOP = 2**31 - 1


def _params(entry):
    if entry.matrices:
        return {"a": jnp.linspace(-1, 1, 6).reshape(2, 3), "b": jnp.linspace(1, 2, 6).reshape(3, 2)}
    return {"a": jnp.linspace(-1, 1, 6).reshape(2, 3), "b": jnp.linspace(1, 2, 3)}


def _counts(state):
    return [v for _, v in gc.tree_get_all_with_path(state, "count")]


COUNTING = [e for e in TRANSFORMS if _counts(e.build().init(e.params_arg(_params(e))))]


@pytest.mark.parametrize("entry", COUNTING, ids=[e.id for e in COUNTING])
def test_counters_saturate_at_the_int32_limit_with_finite_updates(entry):
    tx = entry.build()
    params = entry.params_arg(_params(entry))
    state = gc.tree_set(tx.init(params), count=jnp.asarray(TOP - 2, jnp.int32))
    step = jax.jit(lambda g, s: tx.update(g, s, params, **entry.extra_args(params)))
    for k in range(4):
        grads = jax.tree.map(lambda x: jnp.cos(x + k), _params(entry))
        updates, state = step(grads, state)
        for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
            assert bool(jnp.all(jnp.isfinite(u))), (k, jax.tree_util.keystr(path))
    for c in _counts(state):
        assert c.dtype == jnp.int32 and int(c) == TOP


def test_adam_near_the_counter_limit_has_no_bias_correction_left():
    """At t ~ 2^31 both corrections 1 - b^t are 1: one step from zero moments is
    u = (1-b1) g / (sqrt((1-b2) g^2) + eps), here computed in float64 numpy."""
    g = np.array([0.5, -2.0, 1e-3], np.float32)
    tx = gc.scale_by_adam()
    state = gc.tree_set(tx.init(jnp.zeros(3)), count=jnp.asarray(TOP - 1, jnp.int32))
    u, state = jax.jit(tx.update)(jnp.asarray(g), state)
    g64 = g.astype(np.float64)
    expected = 0.1 * g64 / (np.sqrt(0.001 * g64**2) + 1e-8)
    np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-5)
    assert int(state.count) == TOP


def test_adafactor_decay_rate_at_the_counter_limit_is_finite_and_right():
    """``1 - (t + 1)^-0.8`` as optax forms it (t is the 0-based count): float32 of the float64
    value, within one float32 ulp below 1."""
    for t in (TOP - 1, TOP):
        value = gc.adafactor_decay_rate(jnp.asarray(t, jnp.int32), 0.8)
        expected = 1 - (float(t) + 1) ** -0.8
        assert bool(jnp.isfinite(value)) and 0 < float(value) <= 1
        assert abs(float(value) - expected) <= np.finfo(np.float32).epsneg


# Schedules whose value has settled long before 2^31 - 1; the others are bounded.
SETTLED = sorted(set(SCHEDULES) - {"cosine_warm_restarts_schedule", "warmup_inverse_sqrt_schedule"})


@pytest.mark.parametrize("name", SETTLED)
def test_schedules_hold_their_final_value_at_the_counter_limit(name):
    schedule = SCHEDULES[name]()
    at_end = np.asarray(schedule(jnp.asarray([10**6, TOP - 1, TOP], jnp.int32)))
    assert np.all(np.isfinite(at_end))
    np.testing.assert_allclose(at_end[1:], at_end[0], rtol=1e-6)


def test_cosine_warm_restarts_stays_in_its_range_at_the_counter_limit():
    schedule = gc.cosine_warm_restarts_schedule(1.0, 10, T_mult=2, eta_min=0.1)
    values = np.asarray(schedule(jnp.asarray([TOP - 2, TOP - 1, TOP], jnp.int32)))
    assert np.all(np.isfinite(values)) and np.all((values >= 0.1) & (values <= 1.0))


def test_inverse_sqrt_warmup_decays_as_the_inverse_root_at_the_counter_limit():
    schedule = gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 10)
    value = float(schedule(jnp.asarray(TOP, jnp.int32)))
    np.testing.assert_allclose(value, np.sqrt(10 / TOP), rtol=1e-4)
