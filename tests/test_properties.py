"""Properties every public transformation keeps on any parameter tree (hypothesis).

Each property runs over every entry of ``registry.TRANSFORMS`` on generated trees: nested
dicts, lists and tuples, ``None`` leaves, empty containers, scalars, zero-size arrays, and
float32, bfloat16, float16 and float64 leaves (float64 under ``jax.enable_x64``), mixed in one
tree. ``GRADCHAIN_HYPOTHESIS_EXAMPLES`` sets the number of examples per property and
transformation (default 8); the generation is derandomized, so a run is reproducible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from registry import NOT_TRANSFORMS, SCHEDULES, TRANSFORMS, random_tree

import gradchain as gc

EXAMPLES = int(os.environ.get("GRADCHAIN_HYPOTHESIS_EXAMPLES", "8"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# One fixed seed for every property: the runs are reproducible, and the finite-updates and
# jit-agreement properties draw the same examples, so the eager run is computed once.
SEED = seed(20240611)

SHAPES = [(), (1,), (3,), (0,), (2, 3), (3, 0), (2, 1, 2)]
MATRIX_SHAPES = [(2, 3), (3, 2), (1, 1), (0, 3)]
LOW_DTYPES = ["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class Spec:
    """A leaf to make: its shape and dtype name (a plain object, so a pytree leaf)."""

    shape: tuple
    dtype: str


@st.composite
def trees(draw, entry):
    """``(x64, tree of Spec or None, seed)``: float64 leaves only when ``x64``."""
    x64 = draw(st.booleans())
    dtypes = LOW_DTYPES + (["float64"] if x64 else [])
    shapes = MATRIX_SHAPES if entry.matrices else SHAPES
    shapes = [s for s in shapes if entry.max_ndim is None or len(s) <= entry.max_ndim]
    matrices = entry.matrices
    spec = st.builds(Spec, st.sampled_from(shapes), st.sampled_from(dtypes))
    leaf = st.one_of(st.none(), spec) if not matrices else st.one_of(spec, spec, st.none())
    keys = st.sampled_from(["a", "b", "w", "kernel", "bias"])
    tree = draw(
        st.recursive(
            leaf,
            lambda children: st.one_of(
                st.dictionaries(keys, children, max_size=3),
                st.lists(children, max_size=3),
                st.lists(children, max_size=3).map(tuple),
            ),
            max_leaves=6,
        ).filter(lambda t: t is not None)  # a bare None is "no params" in update's signature
    )
    return x64, tree, draw(st.integers(0, 2**16))


def x64_context(x64: bool):
    return jax.enable_x64(True) if x64 else contextlib.nullcontext()


def materialise(tree, seed):
    """Shapes, params and two different gradients (a repeated gradient has zero variance,
    where centered RMSProp divides rounding noise by sqrt(eps))."""
    specs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(s.dtype)), tree)
    grads = (random_tree(specs, seed + 1), random_tree(specs, seed + 2))
    return specs, random_tree(specs, seed), grads


def two_steps(entry, tx, params, grads):
    p = entry.params_arg(params)
    state = tx.init(p)
    u1, state = tx.update(entry.updates_arg(grads[0]), state, p, **entry.extra_args(p))
    u2, state = tx.update(entry.updates_arg(grads[1]), state, p, **entry.extra_args(p))
    return (u1, u2), state


_EAGER = {}


def eager_two_steps(entry, x64, tree, seed_):
    """``(params, grads, init state, two_steps result)`` computed eagerly, memoised."""
    key = (entry.id, x64, repr(tree), seed_)
    if key not in _EAGER:
        _, params, grads = materialise(tree, seed_)
        tx = entry.build()
        _EAGER[key] = (
            params,
            grads,
            tx.init(entry.params_arg(params)),
            two_steps(entry, tx, params, grads),
        )
    return _EAGER[key]


def by_entry(f):
    return pytest.mark.parametrize("entry", TRANSFORMS, ids=[e.id for e in TRANSFORMS])(f)


def leaves_with_path(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


# ---------------------------------------------------------------------------------------------


def _is_transformation_factory(obj) -> bool:
    if isinstance(obj, type):
        return issubclass(obj, gc.GradientTransformation) or issubclass(obj, gc.Schedule)
    annotation = getattr(obj, "__annotations__", {}).get("return", "")
    return str(annotation) in {
        "Chain",
        "Masked",
        "Partition",
        "Identity",
        "AddDecoupledWeightDecay",
    }


def test_registry_covers_every_public_name():
    public = set(gc.__all__)
    covered = {e.name for e in TRANSFORMS} | set(SCHEDULES) | set(NOT_TRANSFORMS)
    assert public - covered == set(), "public names with no registry entry (tests/registry.py)"
    assert covered - public == set(), "registry names that are not public"
    assert not ({e.name for e in TRANSFORMS} & set(NOT_TRANSFORMS))
    factories = {n for n in public if _is_transformation_factory(getattr(gc, n))}
    # The protocol classes (optax's two-function constructors, the schedule base) are no factory.
    protocols = {"GradientTransformation", "GradientTransformationExtraArgs", "Schedule"}
    assert factories - protocols <= ({e.name for e in TRANSFORMS} | set(SCHEDULES))


@by_entry
@SETTINGS
@SEED
@given(example=st.data())
def test_updates_and_state_keep_structure_shapes_and_dtypes(entry, example):
    x64, tree, seed_ = example.draw(trees(entry))
    with x64_context(x64):
        _specs, params, grads = materialise(tree, seed_)
        tx = entry.build()
        state0 = jax.eval_shape(tx.init, entry.params_arg(params))
        (u1, u2), state = jax.eval_shape(lambda p, g: two_steps(entry, tx, p, g), params, grads)
        expected = entry.params_arg(grads[0])
        for u in (u1, u2):
            assert jax.tree.structure(u) == jax.tree.structure(expected)
            for (path, a), b in zip(leaves_with_path(u), jax.tree.leaves(expected)):
                assert (a.shape, a.dtype) == (b.shape, b.dtype), jax.tree_util.keystr(path)
        assert jax.tree.structure(state) == jax.tree.structure(state0)
        for (path, a), b in zip(leaves_with_path(state), jax.tree.leaves(state0)):
            assert (a.shape, a.dtype) == (b.shape, b.dtype), jax.tree_util.keystr(path)


@by_entry
@SETTINGS
@SEED
@given(example=st.data())
def test_finite_gradients_give_finite_updates(entry, example):
    x64, tree, seed_ = example.draw(trees(entry))
    with x64_context(x64):
        *_, ((u1, u2), _) = eager_two_steps(entry, x64, tree, seed_)
        for path, u in leaves_with_path((u1, u2)):
            assert bool(jnp.all(jnp.isfinite(u))), jax.tree_util.keystr(path)


@by_entry
@SETTINGS
@SEED
@given(example=st.data())
def test_init_from_shapes_equals_init_from_arrays(entry, example):
    x64, tree, seed_ = example.draw(trees(entry))
    with x64_context(x64):
        specs, params, _ = materialise(tree, seed_)
        tx = entry.build()
        if not entry.abstract_init and jax.tree.leaves(specs):
            with pytest.raises(TypeError, match="shapes alone do not have"):
                tx.init(entry.params_arg(specs))
            return
        concrete = tx.init(entry.params_arg(params))
        abstract = tx.init(entry.params_arg(specs))
        assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
        for (path, a), b in zip(leaves_with_path(abstract), jax.tree.leaves(concrete)):
            assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
            np.testing.assert_array_equal(
                np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path)
            )


def _tolerance(dtypes):
    """For the lowest precision in the example: XLA fuses a bfloat16 ``p + u`` and rounds once
    where eager rounds after each operation, and a float32 state fed by that sum inherits the
    bfloat16 ulp."""
    dtypes = {jnp.dtype(d) for d in dtypes}
    if dtypes & {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}:
        return 2e-2
    return 1e-5 if jnp.dtype(jnp.float32) in dtypes else 1e-12


@by_entry
@SETTINGS
@SEED
@given(example=st.data())
def test_jit_and_eager_agree(entry, example):
    x64, tree, seed_ = example.draw(trees(entry))
    with x64_context(x64):
        params, grads, *eager = eager_two_steps(entry, x64, tree, seed_)
        tx = entry.build()
        jitted = (
            jax.jit(tx.init)(entry.params_arg(params)),
            jax.jit(lambda p, g: two_steps(entry, tx, p, g))(params, grads),
        )
        eager = tuple(eager)
        assert jax.tree.structure(jitted) == jax.tree.structure(eager)
        for (path, a), b in zip(leaves_with_path(jitted), jax.tree.leaves(eager)):
            a, b = np.asarray(a), np.asarray(b)
            assert a.dtype == b.dtype, jax.tree_util.keystr(path)
            if not np.issubdtype(a.dtype, np.inexact) and a.dtype.name not in ("bfloat16",):
                np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
                continue
            tol = _tolerance([x.dtype for x in jax.tree.leaves(params)] + [a.dtype])
            np.testing.assert_allclose(
                a.astype(np.float64),
                b.astype(np.float64),
                rtol=tol,
                atol=tol,
                err_msg=jax.tree_util.keystr(path),
            )
