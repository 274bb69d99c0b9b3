"""GaLore: optax's projection by default, the paper's side on request, clear errors for leaves it
cannot project."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc

STEPS = 20
PARAMS = mixed_params()  # scalar, vector, (5, 3) matrix, (2, 3, 4) tensor, (4, 6) bfloat16
GRADS = gradient_stream(PARAMS, STEPS)


def numpy_tree(seed, shapes, steps):
    """Params and ``steps`` gradients from numpy: no compilation for new shapes."""
    rng = np.random.default_rng(seed)
    draw = lambda: {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
    return draw(), [draw() for _ in range(steps)]


def dims_tree(dims_cls):
    return {
        "scalar": None,
        "vector": None,
        "matrix": dims_cls(),
        "bf16": dims_cls(),
        "tensor": dims_cls(0, (1, 2)),
    }


@pytest.mark.parametrize(
    "kwargs, dims",
    [
        (dict(rank=2, update_proj_gap=5, weight_decay=0.01), False),
        (dict(rank=1, update_proj_gap=7, scale=0.25), True),
    ],
    ids=["2d-leaves", "3d-leaf-with-dimension-numbers"],
)
def test_matches_optax_over_jitted_steps(kwargs, dims):
    # Refreshes at steps 0, 5, 10, 15 (or 0, 7, 14): both sides take the same float32 SVD of the
    # same gradient, so the projectors agree to rounding, signs included.
    ours_kw, theirs_kw = dict(kwargs), dict(kwargs)
    if dims:
        ours_kw["weight_dimension_numbers"] = dims_tree(gc.GaLoreDimensionNumbers)
        theirs_kw["weight_dimension_numbers"] = dims_tree(optax.contrib.GaLoreDimensionNumbers)
        ours_kw["base_optimizer"] = gc.scale_by_adam(b1=0.8)
        theirs_kw["base_optimizer"] = optax.scale_by_adam(b1=0.8)
    got, state = run(gc.galore(0.01, **ours_kw), PARAMS, GRADS, gc.apply_updates)
    want, _ = run(optax.contrib.galore(0.01, **theirs_kw), PARAMS, GRADS, optax.apply_updates)
    for k in range(STEPS):
        assert_trees_close(got[k], want[k], what=f"params after step {k + 1}")
    if dims:  # the (2, 3, 4) tensor is a 2x12 matrix projected on the right, to rank 1
        assert state.scale_by_galore.projector["tensor"].shape == (12, 1)


def reference_galore(params, grads, *, rank, lr, scale, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    """galore-torch's ``proj_type="std"`` (ALGORITHMS.md §9.1) in float64: the smaller side is
    reduced (right projector Vh[:r] when m >= n, left U[:, :r] otherwise), refreshed at step 0
    only, with optax's Adam in the projected space and decoupled decay at the old params."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    proj, mom, out = {}, {}, []
    for t, g in enumerate(grads, start=1):
        for k in p:
            G = np.asarray(g[k], np.float64)
            m, n = G.shape
            if t == 1:
                u, _, vh = np.linalg.svd(G, full_matrices=False)
                proj[k] = vh[:rank] if m >= n else u[:, :rank]
            R = G @ proj[k].T if m >= n else proj[k].T @ G
            mu, nu = mom.get(k, (np.zeros_like(R), np.zeros_like(R)))
            mu, nu = b1 * mu + (1 - b1) * R, b2 * nu + (1 - b2) * R**2
            mom[k] = (mu, nu)
            N = (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
            back = N @ proj[k] if m >= n else proj[k] @ N
            p[k] = p[k] - lr * (scale * back + weight_decay * p[k])
        out.append({k: v.copy() for k, v in p.items()})
    return out


def test_smaller_side_follows_the_reference_projection():
    params, grads = numpy_tree(1, {"tall": (8, 4), "wide": (3, 6)}, STEPS)
    # One refresh (at step 0): a singular vector's sign is arbitrary, and with fresh (zero)
    # moments the update is odd in it, so numpy's and JAX's SVDs give the same trajectory.
    tx = gc.galore(
        0.01, rank=2, update_proj_gap=100, scale=0.25, weight_decay=0.01, projected_dim="smaller"
    )
    got, _state = run(tx, params, grads, gc.apply_updates)
    expected = reference_galore(params, grads, rank=2, lr=0.01, scale=0.25, weight_decay=0.01)
    # float32 against float64 over 20 Adam steps of size <= lr: 1e-5 bounds the drift.
    for k in range(STEPS):
        assert_trees_close(
            got[k], expected[k], what=f"params after step {k + 1}", rtol=1e-5, atol=1e-5
        )


@pytest.mark.parametrize(
    "projected_dim, moment_shape, projector_shape",
    [("larger", (2, 4), (8, 2)), ("smaller", (8, 2), (4, 2))],
)
def test_projected_side_sets_the_state_shapes(projected_dim, moment_shape, projector_shape):
    # ALGORITHMS.md §9.2: an (8, 4) weight at rank 2 keeps (2, 4) moments in optax, (8, 2) in the
    # reference.
    params = {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32)}
    state = jax.eval_shape(gc.galore(0.1, rank=2, projected_dim=projected_dim).init, params)
    assert state.scale_by_galore.base_optimizer_state.mu["w"].shape == moment_shape
    assert state.scale_by_galore.projector["w"].shape == projector_shape


def test_projector_is_refreshed_every_update_proj_gap_steps_from_the_gradient():
    params, grads = numpy_tree(2, {"w": (8, 4)}, 7)
    tx = gc.scale_by_galore(rank=2, update_proj_gap=3)
    step = jax.jit(tx.update)
    state = tx.init(params)
    previous = None
    for k, g in enumerate(grads):
        _, state = step(g, state, params)
        p = np.asarray(state.projector["w"], np.float64)
        if k % 3 == 0:  # left projector onto the top-2 left singular vectors of this gradient
            u = np.linalg.svd(np.asarray(g["w"], np.float64))[0][:, :2]
            np.testing.assert_allclose(p @ p.T, u @ u.T, atol=1e-5, err_msg=f"step {k}")
        else:
            np.testing.assert_array_equal(p, previous, err_msg=f"step {k}")
        previous = p


def test_stacked_layers_are_projected_per_layer():
    stacked, grads = numpy_tree(3, {"w": (3, 8, 4)}, 6)
    dims = {"w": gc.GaLoreDimensionNumbers(reduction_axis=1, output_axis=2)}
    got, _ = run(
        gc.galore(0.01, rank=2, update_proj_gap=4, weight_dimension_numbers=dims),
        stacked,
        grads,
        gc.apply_updates,
    )
    split = lambda t: {f"layer_{i}": t["w"][i] for i in range(3)}
    layers, _ = run(
        gc.galore(0.01, rank=2, update_proj_gap=4),
        split(stacked),
        [split(g) for g in grads],
        gc.apply_updates,
    )
    assert_trees_close(split(got[-1]), layers[-1], what="layers")


def test_leaves_it_cannot_project_go_to_the_base_optimizer_unprojected():
    params = {"b": jnp.ones(3), "small": jnp.ones((2, 2)), "w": jnp.ones((6, 4))}
    state = gc.scale_by_galore(rank=2).init(params)
    # a vector, and a 2x2 matrix that a rank-2 projection would not shrink
    # a placeholder stands for their projectors, as in optax (whose empty (0, 0) one orbax
    # refuses to save: tests/test_checkpoint.py saves ours)
    assert state.projector["b"].shape == state.projector["small"].shape == (1, 1)
    assert state.base_optimizer_state.mu["b"].shape == (3,)
    assert state.base_optimizer_state.mu["small"].shape == (2, 2)
    assert state.base_optimizer_state.mu["w"].shape == (2, 4)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "kwargs, params, message",
    [
        (
            dict(
                weight_dimension_numbers={
                    "w": gc.GaLoreDimensionNumbers(),
                    "b": gc.GaLoreDimensionNumbers(),
                }
            ),
            {"w": jnp.ones((6, 4)), "b": jnp.ones(3)},
            r"scale_by_galore: parameter \['b'\] has shape \(3,\): GaLore projects matrices",
        ),
        (
            dict(
                rank=4,
                weight_dimension_numbers=lambda p: jax.tree.map(
                    lambda _: gc.GaLoreDimensionNumbers(), p
                ),
            ),
            {"layer": {"w": jnp.ones((4, 4))}},
            r"parameter \['layer'\]\['w'\] is a 4x4 matrix: projecting its larger side \(4\) to rank 4 "
            r"would not shrink it",
        ),
        (
            dict(
                rank=4,
                projected_dim="smaller",
                weight_dimension_numbers={"w": gc.GaLoreDimensionNumbers()},
            ),
            {"w": jnp.ones((16, 4))},
            r"parameter \['w'\] is a 16x4 matrix: projecting its smaller side \(4\) to rank 4",
        ),
        (
            dict(weight_dimension_numbers={"w": gc.GaLoreDimensionNumbers(0, 0)}),
            {"w": jnp.ones((6, 4))},
            r"parameter \['w'\]: reduction_axis 0 and output_axis 0 overlap",
        ),
    ],
    ids=[
        "forced-1-d-leaf",
        "forced-square-at-full-rank",
        "forced-smaller-side-at-rank",
        "bad-axes",
    ],
)
def test_forcing_projection_on_a_leaf_it_cannot_project_names_the_path(
    kwargs, params, message, jit
):
    init = gc.galore(0.1, **kwargs).init
    with pytest.raises(ValueError, match=message):
        (jax.jit(init) if jit else init)(params)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.galore(0.1, rank=0), r"rank must be a positive int, got 0"),
        (lambda: gc.galore(0.1, rank=2.5), r"rank must be a positive int, got 2.5"),
        (lambda: gc.galore(0.1, update_proj_gap=0), r"update_proj_gap must be a positive int"),
        (lambda: gc.galore(0.1, scale=-1.0), r"scale must be in \[0, inf\)"),
        (lambda: gc.galore(-0.1), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.galore(0.1, weight_decay=-1.0), r"weight_decay must be in \[0, inf\)"),
        (
            lambda: gc.galore(0.1, projected_dim="middle"),
            r"projected_dim must be one of \('larger', 'smaller'\)",
        ),
        (
            lambda: gc.galore(0.1, base_optimizer="adam"),
            r"base_optimizer must be a gradient transformation",
        ),
        (
            lambda: gc.galore(0.1, weight_dimension_numbers=3),
            r"weight_dimension_numbers must be None",
        ),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize("projected_dim", ["larger", "smaller"])
@pytest.mark.parametrize("rank", [8, 16])
def test_state_memory_follows_the_rank(projected_dim, rank):
    m, n = 64, 32
    params = {"w": jax.ShapeDtypeStruct((m, n), jnp.float32)}
    shapes = jax.eval_shape(gc.galore(0.1, rank=rank, projected_dim=projected_dim).init, params)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    reduced, kept = (m, n) if projected_dim == "larger" else (n, m)
    # an (reduced x r) projector and Adam's two (r x kept) moments, 4 bytes each, plus scalars
    assert state_bytes == pytest.approx(4 * (reduced * rank + 2 * rank * kept), abs=128)


@pytest.mark.parametrize(
    "wrap, projector_dtype",
    [(lambda tx: tx, jnp.bfloat16), (gc.with_float32_state, jnp.float32)],
    ids=["default-as-optax", "with_float32_state"],
)
def test_bfloat16_updates_keep_their_dtype_and_the_projector_follows_the_state_policy(
    wrap, projector_dtype
):
    params = {"w": jnp.ones((6, 4), jnp.bfloat16)}
    tx = wrap(gc.galore(0.01, rank=2))
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.eye(6, 4, dtype=jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    assert gc.tree_get(state, "projector")["w"].dtype == projector_dtype
