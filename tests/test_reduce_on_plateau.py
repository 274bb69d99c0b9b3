"""reduce_on_plateau: optax's rule and state by default, gradchain 0.1's rule as an option.

optax's ``contrib/_reduce_on_plateau_test.py`` runs with its ``_reduce_on_plateau`` rebound to
:mod:`gradchain.contrib` (it builds ``ReduceLROnPlateauState`` itself and unpacks the state by
position, so gradchain's state must be optax's, field for field).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_rebind import bind_optax_testcases, load, optax_settings  # noqa: F401

import gradchain as gc

_PATH = "contrib/_reduce_on_plateau_test.py"
_MODULE = load(_PATH, _reduce_on_plateau=gc.contrib)
bind_optax_testcases(globals(), {_PATH: _MODULE})


def test_the_rerouted_optax_tests_call_gradchain():
    assert _MODULE._reduce_on_plateau is gc.contrib
    assert gc.reduce_on_plateau is gc.contrib.reduce_on_plateau
    assert type(gc.reduce_on_plateau().init(jnp.ones(2))) is gc.ReduceLROnPlateauState


def test_state_has_optax_fields_in_optax_order():
    assert gc.ReduceLROnPlateauState._fields == optax.contrib.ReduceLROnPlateauState._fields
    optax_state = optax.contrib.reduce_on_plateau().init({"w": jnp.ones(2)})
    tx = gc.reduce_on_plateau(patience=1)
    step = jax.jit(lambda s, v: tx.update({"w": jnp.ones(2)}, s, value=v))
    _, new = step(optax_state, 1.0)
    assert isinstance(new, gc.ReduceLROnPlateauState)
    _, new = step(new, 1.0)
    assert new.scale == jnp.float32(0.1)


def _scales(tx, losses, accumulate: bool = False):
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    step = jax.jit(lambda s, v: tx.update(params, s, params, value=v))
    out = []
    for loss in losses:
        _, state = step(state, loss)
        out.append(float(optax.tree_utils.tree_get(state, "scale")))
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(factor=0.5, patience=2, accumulation_size=10),
        dict(factor=0.1, patience=3, cooldown=2, rtol=1e-3, atol=1e-3, min_scale=0.01),
    ],
)
def test_optax_rule_gives_optax_scales_on_a_noisy_decreasing_loss(kwargs):
    rng = np.random.default_rng(0)
    losses = (2 * np.exp(-np.arange(600) / 80) + 0.3 * rng.random(600)).astype(np.float32)
    ours = _scales(gc.reduce_on_plateau(**kwargs), losses)
    theirs = _scales(optax.contrib.reduce_on_plateau(**kwargs), losses)
    assert ours == theirs
    assert min(ours) < 1.0


def test_gradchain_rule_keeps_live_hyperparameters():
    tx = gc.with_live_hyperparams(gc.reduce_on_plateau(factor=0.5, patience=1, rule="gradchain"))
    state = tx.init({"w": jnp.ones(2)})
    state = gc.tree_set(state, factor=0.25)
    for loss in (1.0, 1.0):
        _, state = tx.update({"w": jnp.ones(2)}, state, value=loss)
    assert float(gc.tree_get(state, "scale")) == 0.25


def test_unknown_rule_raises_naming_it():
    with pytest.raises(ValueError, match="rule must be one of"):
        gc.reduce_on_plateau(rule="keras")


def test_bfloat16_params_get_a_float32_scale_where_optax_keeps_bfloat16():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    ours = gc.reduce_on_plateau().init(params)
    theirs = optax.contrib.reduce_on_plateau().init(params)
    assert theirs.scale.dtype == jnp.bfloat16 and ours.scale.dtype == jnp.float32
    assert ours.best_value.dtype == jnp.float32
    updates, _ = gc.reduce_on_plateau().update(params, ours, value=1.0)
    assert updates["w"].dtype == jnp.bfloat16


def test_missing_value_is_a_value_error_naming_it_where_optax_raises_type_error():
    params = {"w": jnp.ones(2)}
    with pytest.raises(TypeError):
        tx = optax.contrib.reduce_on_plateau()
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match=r"value=loss"):
        tx = gc.reduce_on_plateau()
        tx.update(params, tx.init(params))
