"""Non-finite gradients: what every transformation does with a NaN, and apply_if_finite.

A NaN is put in one coordinate of one leaf of the first gradient. The registry records where it
shows in that step's updates (``Entry.nonfinite``: coordinate, leaf, tree or none) and whether it
stays in the state so that later, finite steps are non-finite too (``Entry.keeps_nan``); the
table "Non-finite gradients" of docs/guarantees.md lists the same values and is checked against them
here.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import NONFINITE, OPTIMIZERS, TRANSFORMS

import gradchain as gc

GUARANTEES = Path(__file__).resolve().parent.parent / "docs" / "guarantees.md"


def _params(entry):
    if entry.matrices:
        return {"a": jnp.ones((2, 3)), "b": jnp.full((3, 2), 0.5)}
    return {"a": jnp.ones((2, 3)), "b": jnp.full((3,), 0.5)}


def _grads(params, seed):
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([jnp.asarray(rng.standard_normal(x.shape), x.dtype) for x in leaves])


def _with_nan(grads):
    return {**grads, "a": grads["a"].at[0, 0].set(jnp.nan)}


def _unwrap(entry, updates):
    return updates.fast if entry.wrap_params else updates


def observed(entry):
    """``(where the NaN shows in the step's updates, whether later finite steps show it)``."""
    tx = entry.build()
    params = _params(entry)
    p = entry.params_arg(params)
    step = jax.jit(lambda g, s: tx.update(entry.updates_arg(g), s, p, **entry.extra_args(p)))
    updates, state = step(_with_nan(_grads(params, 0)), tx.init(p))
    bad = jax.tree.map(lambda u: ~jnp.isfinite(u), _unwrap(entry, updates))
    if not any(bool(b.any()) for b in jax.tree.leaves(bad)):
        where = "none"
    elif bool(bad["b"].any()):
        where = "tree"
    elif bool(bad["a"].all()):
        where = "leaf"
    elif int(bad["a"].sum()) in (bad["a"].shape[0], bad["a"].shape[1]) and (
        bool(bad["a"][0].all()) or bool(bad["a"][:, 0].all())
    ):
        where = "slice"
    else:
        assert int(bad["a"].sum()) == 1 and bool(bad["a"][0, 0])
        where = "coordinate"
    later = []
    for seed in (1, 2):
        updates, state = step(_grads(params, seed), state)
        later.append(
            not all(bool(jnp.isfinite(u).all()) for u in jax.tree.leaves(_unwrap(entry, updates)))
        )
    return where, any(later)


def _expected_where(entry):
    # "zeroed" and "held" are "none" this step; the registry says why.
    return "none" if entry.nonfinite in ("zeroed", "held", "none") else entry.nonfinite


@pytest.mark.parametrize("entry", TRANSFORMS, ids=[e.id for e in TRANSFORMS])
def test_a_nan_gradient_shows_where_the_registry_says(entry):
    assert entry.nonfinite in NONFINITE
    assert observed(entry) == (_expected_where(entry), entry.keeps_nan)


def documented_table():
    """``{entry id: (nonfinite, keeps_nan)}`` read from the table in docs/guarantees.md."""
    text = GUARANTEES.read_text()
    section = text.split("## Non-finite gradients", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`([^`]+)`\s*\|\s*(\w+)\s*\|\s*(yes|no)\s*\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), m.group(3) == "yes")
    return rows


def markdown_table() -> str:
    """The docs table, generated from the registry (``python -c 'import
    test_nonfinite as t; print(t.markdown_table())'`` from tests/)."""
    lines = [
        "| transformation | a NaN in this step shows in | later finite steps non-finite |",
        "|---|---|---|",
    ]
    for e in TRANSFORMS:
        lines.append(f"| `{e.id}` | {e.nonfinite} | {'yes' if e.keeps_nan else 'no'} |")
    return "\n".join(lines)


def test_the_docs_table_documents_every_transformation_as_the_registry_does():
    expected = {e.id: (e.nonfinite, e.keeps_nan) for e in TRANSFORMS}
    assert documented_table() == expected


# apply_if_finite -------------------------------------------------------------------------------


# Not the per-example optimizers (registry.PER_EXAMPLE_EXCLUDED says why).
PARAMETER_SHAPED = [e for e in OPTIMIZERS if not e.per_example]


@pytest.mark.parametrize("entry", PARAMETER_SHAPED, ids=[e.id for e in PARAMETER_SHAPED])
def test_apply_if_finite_skips_a_nan_step_leaving_updates_zero_and_state_unchanged(entry):
    params = _params(entry)
    p = entry.params_arg(params)
    protected = gc.apply_if_finite(entry.build(), max_consecutive_errors=3)
    plain = entry.build()
    step = jax.jit(lambda tx, g, s: tx.update(g, s, p, **entry.extra_args(p)), static_argnums=0)

    state = step(protected, _grads(params, 0), protected.init(p))[1]
    before = state.inner_state
    updates, state = step(protected, _with_nan(_grads(params, 1)), state)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(np.asarray(u), 0)
    for a, b in zip(jax.tree.leaves(state.inner_state), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (int(state.notfinite_count), bool(state.last_finite), int(state.total_notfinite)) == (
        1,
        False,
        1,
    )

    # The skipped step left no trace: the next finite step is the unprotected optimizer's.
    ours, state = step(protected, _grads(params, 2), state)
    plain_state = step(plain, _grads(params, 0), plain.init(p))[1]
    theirs, plain_state = step(plain, _grads(params, 2), plain_state)
    ours, theirs = (ours, state.inner_state), (theirs, plain_state)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
