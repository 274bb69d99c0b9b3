"""gradchain.tree_utils and gradchain.tree: optax's own tests rerouted to them, plus gradchain states.

The four ``optax/tree_utils/*_test.py`` files run with the module names their tests call
(``otu``, ``tu``, ``_state_utils``, ``_random``) rebound to :mod:`gradchain.tree_utils`; the
states they search are built by optax's optimizers, so these test gradchain's functions on
optax's states. The tests below add gradchain's states and the namespace surface.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax_rebind import bind_optax_testcases, load, optax_settings  # noqa: F401

import gradchain as gc
import gradchain.tree
import gradchain.tree_utils as gtu

_REBOUND = {
    "tree_utils/_casting_test.py": {"otu": gtu},
    "tree_utils/_random_test.py": {"otu": gtu},
    "tree_utils/_tree_math_test.py": {"tu": gtu},
    "tree_utils/_state_utils_test.py": {"_state_utils": gtu, "_random": gtu},
}
_MODULES = {path: load(path, **names) for path, names in _REBOUND.items()}
bind_optax_testcases(globals(), _MODULES)


def test_the_rerouted_optax_tests_call_gradchain():
    for path, names in _REBOUND.items():
        for attr in names:
            rebound = getattr(_MODULES[path], attr)
            assert rebound is gtu
            assert rebound.tree_norm.__module__ == "gradchain.core.tree", path


def test_every_optax_tree_utils_name_is_in_gradchain_with_optax_signature():
    public = [n for n in dir(optax.tree_utils) if n.startswith("tree_") or n == "NamedTupleKey"]
    assert len(public) == 36
    for name in public:
        ours, theirs = getattr(gtu, name), getattr(optax.tree_utils, name)
        if callable(theirs) and not isinstance(theirs, type):
            assert list(inspect.signature(ours).parameters) == list(
                inspect.signature(theirs).parameters
            ), name


def test_tree_namespace_has_optax_tree_short_names():
    short = {n for n in dir(optax.tree) if not n.startswith("_")}
    assert short == set(gradchain.tree.__all__)
    for name in short:
        assert getattr(gradchain.tree, name) is getattr(gtu, f"tree_{name}")


def test_deprecated_optax_names_compute_the_norms_they_stand_for():
    tree = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([[1.0]])}
    np.testing.assert_allclose(gtu.tree_l2_norm(tree), np.sqrt(26.0), rtol=1e-6)
    np.testing.assert_allclose(gtu.tree_l1_norm(tree), 8.0)
    np.testing.assert_allclose(gtu.tree_linf_norm(tree), 4.0)
    np.testing.assert_allclose(gtu.tree_scalar_mul(2.0, tree)["a"], [6.0, -8.0])


def test_root_tree_get_keeps_gradchain_semantics_and_namespace_follows_optax():
    state = gc.adam(1e-3).init({"w": jnp.ones(3)})
    # gradchain's root reader raises on a missing key; optax's returns the default None.
    with pytest.raises(KeyError):
        gc.tree_get(state, "no_such_field")
    assert gtu.tree_get(state, "no_such_field") is None
    assert gc.tree_get is not gtu.tree_get


def test_key_search_finds_fields_of_gradchain_states():
    params = {"w": jnp.arange(3.0)}
    tx = gc.chain(gc.clip_by_global_norm(1.0), gc.adam(1e-3))
    state = tx.init(params)
    mus = gtu.tree_get_all_with_path(state, "mu")
    assert len(mus) == 1
    path, mu = mus[0]
    assert isinstance(path[-1], gtu.NamedTupleKey) and path[-1].name == "mu"
    np.testing.assert_array_equal(mu["w"], np.zeros(3))
    new = gtu.tree_set(state, mu={"w": jnp.ones(3)})
    np.testing.assert_array_equal(gtu.tree_get(new, "mu")["w"], np.ones(3))
    assert jax.tree.structure(new) == jax.tree.structure(state)


def test_filtering_selects_by_state_class_name():
    state = gc.adam(1e-3).init({"w": jnp.ones(2)})
    counts = gtu.tree_get_all_with_path(state, "count")
    assert counts, "gradchain's adam keeps a step count"
    owner = counts[0][0][-1].tuple_name
    only = gtu.tree_get(
        state,
        "count",
        filtering=lambda path, _: path[-1] == gtu.NamedTupleKey(owner, "count"),
    )
    assert only is not None


def test_tree_map_params_maps_gradchain_adam_moments_and_not_the_count():
    params = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    tx = gc.adam(1e-3)
    state = tx.init(params)
    shapes = gtu.tree_map_params(
        tx, lambda p: ("param", p.shape), state, transform_non_params=lambda _: "other"
    )
    assert gtu.tree_get(shapes, "mu") == {"w": ("param", (2, 3)), "b": ("param", (3,))}
    assert gtu.tree_get(shapes, "nu") == {"w": ("param", (2, 3)), "b": ("param", (3,))}
    counts = [v for _, v in gtu.tree_get_all_with_path(shapes, "count")]
    assert counts and all(c == "other" for c in counts)


def test_tree_map_params_keeps_galores_layout_and_matches_optax():
    # GaLore's state holds a per-leaf layout derived from the parameters as static pytree data;
    # the placeholder init gives another one, which must not make the mapping fail.
    params = {"w": jnp.ones((16, 8)), "b": jnp.ones(8)}
    mapped = {}
    for lib in (gc, optax):
        tx = lib.chain(lib.sgd(1e-3, momentum=0.9), lib.contrib.galore(learning_rate=0.01, rank=4))
        state = tx.init(params)
        out = lib.tree_utils.tree_map_params(
            tx, lambda p: p + 1, state, transform_non_params=lambda v: v * 0
        )
        assert jax.tree.structure(out) == jax.tree.structure(state)
        # A leaf GaLore does not project keeps a placeholder projector: (0, 0) in optax, (1, 1)
        # in gradchain (orbax refuses zero-size arrays; docs/DIVERGENCES.md).
        mapped[lib] = sorted(
            float(x.sum()) for x in jax.tree.leaves(out) if x.size and x.shape != (1, 1)
        )
    assert mapped[gc] == mapped[optax]


@pytest.mark.parametrize("ord", [None, 1, "inf"])
def test_tree_norm_matches_optax_on_complex_and_mixed_leaves(ord):
    key = jax.random.key(0)
    tree = {
        "c": jax.random.normal(key, (4, 3), jnp.complex64),
        "r": jax.random.normal(jax.random.key(1), (5,)),
        "empty": jnp.zeros((0,)),
    }
    for squared in (False, True):
        ours = jax.jit(lambda t: gtu.tree_norm(t, ord=ord, squared=squared))(tree)
        theirs = optax.tree_utils.tree_norm(tree, ord=ord, squared=squared)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)
