"""A catalogue of bad input, run over every public transformation and schedule: each mistake
fails with an error of a stated type whose message names the argument or the tree path, at
construction or, for tree mistakes, when ``update`` is traced (eagerly and under ``jax.jit``
alike), never as an error from inside JAX that the user cannot map back to their call.

Catalogue (``CATALOGUE`` below counts the cases):
 1. updates with another tree structure than the state's / params'
 2. updates with another leaf shape
 3. params with another structure than the updates
 4. missing params, for the transformations that need them (and no error for the others)
 5. missing extra arguments (reduce_on_plateau's ``value``; Sophia's loss when it lands)
 6. integer and complex parameters: TypeError naming the leaf where state is kept; computed in
    the leaf's own dtype by the stateless transformations (documented support)
 7. NaN, a string, or a schedule where a number is needed, for every float hyperparameter
 8. a non-bool for every bool argument, a negative number for every integer argument
 9. the same for every schedule's arguments
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import pytest
from registry import SCHEDULES, TRANSFORMS

import gradchain as gc
from gradchain.base import Chain, GradientTransformation

IDS = [e.id for e in TRANSFORMS]
by_entry = pytest.mark.parametrize("entry", TRANSFORMS, ids=IDS)
eager_and_jit = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def _trees(entry):
    if entry.matrices:
        return {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 2))}, (3, 2), (2, 3)
    return {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}, (3,), (3,)


def _update(entry, tx, updates, state, params, jit, **extra):
    extra = {**entry.extra_args(params), **extra}
    updates = entry.updates_arg(updates)
    if jit:
        return jax.jit(lambda u, s, p: tx.update(u, s, p, **extra))(updates, state, params)
    return tx.update(updates, state, params, **extra)


def _state_growth(entry):
    """How the state grows when a 2x2 parameter is added: ``(tree nodes, float elements)``."""
    tx = entry.build()
    params, _, _ = _trees(entry)

    def measure(p):
        state = tx.init(entry.params_arg(p))
        leaves = jax.tree.leaves(state)
        floats = sum(x.size for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
        return jax.tree.structure(state).num_nodes, floats

    (n0, f0), (n1, f1) = measure(params), measure({**params, "x": jnp.ones((2, 2))})
    return n1 - n0, f1 - f0


def _keeps_tree_state(entry) -> bool:
    """Whether the state holds a node per parameter (and so can tell a wrong tree)."""
    return _state_growth(entry)[0] > 0


def _keeps_float_state(entry) -> bool:
    """Whether the state holds float numbers per parameter (moments, copies of the params):
    those transformations can tell a wrong shape, and need float parameters."""
    if entry.floats_only is not None:
        return entry.floats_only
    return _state_growth(entry)[1] >= 4  # at least one float per element of the 2x2 parameter


# 1-3 -----------------------------------------------------------------------------------------


@by_entry
@eager_and_jit
def test_updates_of_another_structure_name_the_first_differing_path(entry, jit):
    params, b_shape, _ = _trees(entry)
    tx = entry.build()
    state = tx.init(entry.params_arg(params))
    updates = {"a": params["a"], "c": jnp.ones(b_shape)}
    if not (_keeps_tree_state(entry) or entry.needs_params):
        # Nothing to compare with: each leaf is transformed on its own.
        out, _ = _update(entry, tx, updates, state, None, jit)
        assert jax.tree.structure(out) == jax.tree.structure(updates)
        return
    with pytest.raises(ValueError, match=r"\['b'\]|\['c'\]"):
        _update(entry, tx, updates, state, entry.params_arg(params), jit)


@by_entry
@eager_and_jit
def test_updates_of_another_shape_name_the_path(entry, jit):
    params, _, _ = _trees(entry)
    tx = entry.build()
    state = tx.init(entry.params_arg(params))
    updates = {**params, "a": jnp.ones((3, 2))}
    if not (_keeps_float_state(entry) or entry.needs_params):
        out, _ = _update(entry, tx, updates, state, None, jit)
        assert jax.tree.leaves(out)[0].shape == (3, 2)
        return
    with pytest.raises(ValueError, match=r"\['a'\]"):
        _update(entry, tx, updates, state, entry.params_arg(params), jit)


@pytest.mark.parametrize(
    "entry",
    [e for e in TRANSFORMS if e.needs_params],
    ids=[e.id for e in TRANSFORMS if e.needs_params],
)
@eager_and_jit
def test_params_of_another_structure_name_the_first_differing_path(entry, jit):
    params, b_shape, _ = _trees(entry)
    tx = entry.build()
    state = tx.init(entry.params_arg(params))
    other = entry.params_arg({"a": params["a"], "c": jnp.ones(b_shape)})
    with pytest.raises(ValueError, match=r"\['b'\]|\['c'\]"):
        _update(entry, tx, params, state, other, jit)


# 4-5 -----------------------------------------------------------------------------------------


@by_entry
def test_missing_params_raise_naming_the_transformation_exactly_where_needed(entry):
    params, _, _ = _trees(entry)
    tx = entry.build()
    state = tx.init(entry.params_arg(params))
    if entry.needs_params:
        with pytest.raises(ValueError, match=r"needs the current parameters"):
            tx.update(entry.updates_arg(params), state, None, **entry.extra_args(params))
    else:
        tx.update(entry.updates_arg(params), state, None, **entry.extra_args(params))


EXTRA = [(e, k) for e in TRANSFORMS for k in e.extra]


@pytest.mark.parametrize("entry, key", EXTRA, ids=[f"{e.id}-{k}" for e, k in EXTRA])
@pytest.mark.parametrize("in_chain", [False, True], ids=["alone", "in_chain"])
def test_missing_extra_arguments_raise_naming_them(entry, key, in_chain):
    params, _, _ = _trees(entry)
    tx = entry.build()
    if in_chain:
        tx = gc.chain(gc.scale(1.0), tx)
    state = tx.init(entry.params_arg(params))
    extra = {k: v for k, v in entry.extra_args(params).items() if k != key}
    with pytest.raises(ValueError, match=rf"\b{key}="):
        tx.update(params, state, entry.params_arg(params), **extra)


@pytest.mark.parametrize(
    "build", [gc.scale_by_polyak, gc.reduce_on_plateau, gc.contrib.reduce_on_plateau]
)
def test_a_missing_loss_is_the_type_error_optax_raises_and_a_value_error(build):
    # optax's update functions take value= as a required keyword, so optax code (and optax's
    # own tests) expects TypeError without it; gradchain's contract is ValueError. Both hold.
    tx = build()
    params = {"w": jnp.ones(3)}
    for kind in (TypeError, ValueError):
        with pytest.raises(kind, match=r"needs the loss"):
            tx.update(params, tx.init(params), params)


def test_reduce_on_plateau_value_must_be_a_scalar():
    tx = gc.reduce_on_plateau()
    params = {"w": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"value must be a scalar loss, got shape \(3,\)"):
        tx.update(params, tx.init(params), params, value=jnp.ones(3))


# 6 -------------------------------------------------------------------------------------------


FLOAT_STATE = [e for e in TRANSFORMS if _keeps_float_state(e)]
NO_FLOAT_STATE = [e for e in TRANSFORMS if not _keeps_float_state(e)]


@pytest.mark.parametrize("entry", FLOAT_STATE, ids=[e.id for e in FLOAT_STATE])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64], ids=["int32", "complex64"])
def test_integer_and_complex_params_are_rejected_where_float_state_is_kept(entry, dtype):
    """Complex parameters are accepted exactly where the transformation says it follows optax's
    complex convention (``complex_params``; tests/test_complex.py checks the numbers)."""
    params, _, _ = _trees(entry)
    bad = entry.params_arg({**params, "n": jnp.zeros((2, 2), dtype)})
    tx = entry.build()
    owner = getattr(tx.update, "__self__", tx)  # to_optax wraps a gradchain transformation
    if dtype == jnp.complex64 and getattr(owner, "complex_params", False):
        state = tx.init(bad)
        assert jax.tree.leaves(state)
        return
    with pytest.raises(TypeError, match=rf"parameter \['n'\].* has dtype {jnp.dtype(dtype)}"):
        tx.init(bad)


@pytest.mark.parametrize("entry", NO_FLOAT_STATE, ids=[e.id for e in NO_FLOAT_STATE])
def test_integer_leaves_keep_their_dtype_where_no_float_state_is_kept(entry):
    """Documented support: a transformation without per-parameter float state maps each leaf in
    its own dtype (jnp semantics). Complex leaves are not supported there either (jnp decides:
    ``clip`` rejects them)."""
    params, _, _ = _trees(entry)
    bad = entry.params_arg({**params, "n": jnp.zeros((2, 2), jnp.int32)})
    tx = entry.build()
    grads = {**params, "n": jnp.ones((2, 2), jnp.int32)}
    out, _ = tx.update(entry.updates_arg(grads), tx.init(bad), bad, **entry.extra_args(bad))
    out = out.fast if entry.wrap_params else out
    assert out["n"].dtype == jnp.int32


# 7-8: hyperparameters of every transformation --------------------------------------------------


def _rebuild(tx, **changes):
    """``tx`` built again with some arguments changed: ``dataclasses.replace`` for a
    transformation class, the named optimizer's function for a named chain."""
    if isinstance(tx, Chain):
        factory = getattr(gc, tx.name)
        return factory(**{**tx.config, **changes})
    return dataclasses.replace(tx, **changes)


def _arguments(tx):
    """``(name, value)`` of every argument ``tx`` was built with."""
    if isinstance(tx, Chain):
        return list(tx.config.items())
    if isinstance(tx, GradientTransformation) and dataclasses.is_dataclass(tx):
        return [(f.name, getattr(tx, f.name)) for f in dataclasses.fields(tx) if f.init]
    return []


def _is_float(v) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _bad_values(name, value):
    if name.endswith("mask") or name in ("random_seed", "key", "seed"):
        return []  # a mask may be a bool, a string (a path pattern); any int is a seed
    if isinstance(value, bool):
        return [("yes", ValueError, rf"\b{name}\b.*bool")]
    if isinstance(value, int):
        return [(-1, ValueError, rf"\b{name}\b")]
    if _is_float(value):
        return [
            (float("nan"), ValueError, rf"\b{name} must not be NaN"),
            ("big", ValueError, rf"\b{name} must be a number"),
        ]
    return []


HYPERPARAMETER_CASES = [
    (e, name, bad, err, msg)
    for e in TRANSFORMS
    for name, value in _arguments(e.build())
    for bad, err, msg in _bad_values(name, value)
]


@pytest.mark.parametrize(
    "entry, name, bad, error, message",
    HYPERPARAMETER_CASES,
    ids=[f"{e.id}-{n}={b!r}" for e, n, b, _, _ in HYPERPARAMETER_CASES],
)
def test_invalid_hyperparameters_raise_at_construction_naming_the_argument(
    entry, name, bad, error, message
):
    with pytest.raises(error, match=message):
        _rebuild(entry.build(), **{name: bad})


# 9: schedules ----------------------------------------------------------------------------------


def _schedule_arguments(schedule):
    return [(f.name, getattr(schedule, f.name)) for f in dataclasses.fields(schedule) if f.init]


# Negative integers optax gives a meaning to, which gradchain keeps: a transition of no length is
# the constant init_value, a negative begin is 0
# (test_schedules.py::test_non_positive_transition_is_constant_as_in_optax).
OPTAX_MEANINGFUL = {
    (schedule, arg)
    for schedule in ("linear_schedule", "polynomial_schedule")
    for arg in ("transition_steps", "transition_begin")
}

SCHEDULE_CASES = [
    (name, arg, bad, err, msg)
    for name, build in SCHEDULES.items()
    for arg, value in _schedule_arguments(build())
    if (name, arg) not in OPTAX_MEANINGFUL
    for bad, err, msg in _bad_values(arg, value)
] + [
    (name, "convention", "tensorflow", ValueError, r"convention must be one of")
    for name, build in SCHEDULES.items()
    if "convention" in dict(_schedule_arguments(build()))
]


@pytest.mark.parametrize(
    "name, arg, bad, error, message",
    SCHEDULE_CASES,
    ids=[f"{n}-{a}={b!r}" for n, a, b, _, _ in SCHEDULE_CASES],
)
def test_invalid_schedule_arguments_raise_at_construction_naming_the_argument(
    name, arg, bad, error, message
):
    with pytest.raises(error, match=message):
        dataclasses.replace(SCHEDULES[name](), **{arg: bad})


def test_a_schedule_called_with_a_float_array_of_bools_says_it_needs_an_integer_step():
    with pytest.raises(TypeError, match="a schedule takes an integer step count"):
        gc.linear_schedule(1.0, 0.0, 10)(jnp.array(True))


# The number of cases of each kind, for the report (pytest -k catalogue -s prints them).
CATALOGUE = {
    "structure": len(TRANSFORMS) * 2,
    "shape": len(TRANSFORMS) * 2,
    "params structure": 2 * sum(e.needs_params for e in TRANSFORMS),
    "missing params": len(TRANSFORMS),
    "missing extra args": 2 * len(EXTRA) + 1,
    "integer/complex leaves": 2 * len(FLOAT_STATE) + len(NO_FLOAT_STATE),
    "hyperparameters": len(HYPERPARAMETER_CASES),
    "schedule arguments": len(SCHEDULE_CASES) + 1,
}
