"""gradchain.projections: optax's own projections tests rerouted to gradchain, plus cross-checks.

``optax/projections/_projections_test.py`` runs with its ``proj`` rebound to
:mod:`gradchain.projections` (its reference computations keep using ``optax.tree``).
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_rebind import bind_optax_testcases, load, optax_settings  # noqa: F401

import gradchain.projections as gp

_PATH = "projections/_projections_test.py"
_MODULE = load(_PATH, proj=gp)
bind_optax_testcases(globals(), {_PATH: _MODULE})


def test_the_rerouted_optax_tests_call_gradchain():
    assert _MODULE.proj is gp
    assert gp.projection_simplex.__module__ == "gradchain.projections.euclidean"


def test_every_optax_projection_is_in_gradchain_with_optax_signature():
    names = [n for n in dir(optax.projections) if not n.startswith("_")]
    assert sorted(names) == sorted(gp.__all__)
    for name in names:
        ours = inspect.signature(getattr(gp, name)).parameters
        theirs = inspect.signature(getattr(optax.projections, name)).parameters
        assert [(p.name, p.default) for p in ours.values()] == [
            (p.name, p.default) for p in theirs.values()
        ], name


_TREE = {"a": jnp.array([0.3, -1.2, 2.0]), "b": jnp.array([[0.5, -0.1], [1.5, 0.0]])}
_DIRECTION = {"a": jnp.array([1.0, 0.5, -2.0]), "b": jnp.array([[0.0, 1.0], [-1.0, 0.25]])}

_CASES = {
    "non_negative": lambda P, t: P.projection_non_negative(t),
    "box": lambda P, t: P.projection_box(
        t, jax.tree.map(lambda x: -0.5 * jnp.ones_like(x), t), {"a": 0.7, "b": 0.2}
    ),
    "hypercube": lambda P, t: {"a": P.projection_hypercube(t["a"], 0.8)},
    "simplex": lambda P, t: P.projection_simplex(t, 2.0),
    "l1_sphere": lambda P, t: P.projection_l1_sphere(t, 1.5),
    "l1_ball": lambda P, t: P.projection_l1_ball(t, 1.5),
    "l2_sphere": lambda P, t: P.projection_l2_sphere(t, 0.5),
    "l2_ball": lambda P, t: P.projection_l2_ball(t, 0.5),
    "linf_ball": lambda P, t: P.projection_linf_ball(t, 0.4),
    "vector": lambda P, t: P.projection_vector(t, _DIRECTION),
    "hyperplane": lambda P, t: P.projection_hyperplane(t, _DIRECTION, 0.3),
    "halfspace": lambda P, t: P.projection_halfspace(t, _DIRECTION, -1.0),
}


@pytest.mark.parametrize("case", sorted(_CASES))
def test_projection_and_its_jacobian_match_optax_under_jit(case):
    fn = _CASES[case]
    ours = jax.jit(lambda t: fn(gp, t))(_TREE)
    theirs = fn(optax.projections, _TREE)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), ours, theirs)

    def first_entry_grad(P):
        return jax.grad(lambda t: jnp.sum(fn(P, t)["a"] * jnp.array([1.0, 2.0, 3.0])))(_TREE)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
        first_entry_grad(gp),
        first_entry_grad(optax.projections),
    )


def test_simplex_projection_lands_on_the_simplex_and_is_idempotent():
    x = jax.random.normal(jax.random.key(0), (50,))
    p = gp.projection_simplex(x, 3.0)
    assert jnp.all(p >= 0)
    np.testing.assert_allclose(jnp.sum(p), 3.0, rtol=1e-6)
    np.testing.assert_allclose(gp.projection_simplex(p, 3.0), p, atol=1e-6)
