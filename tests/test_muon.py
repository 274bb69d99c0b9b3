"""Muon: optax's numbers by default, the reference's momentum on request, AdamW for non-matrices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import assert_trees_close, gradient_stream, mixed_params, run

import gradchain as gc

STEPS = 20
# A scalar, a vector, a (5, 3) matrix and a (2, 3, 4) tensor. No bfloat16 leaf: optax runs its
# momentum and Newton-Schulz in bfloat16 and gradchain in float32, and a bfloat16 parameter
# rounds every 0.02-sized step, so the two drift apart by a few bfloat16 ulps (2e-2 after 20
# steps, as much as either drifts from a float32 run): a bound too loose to check anything.
PARAMS = mixed_params(bf16=False)
GRADS = gradient_stream(PARAMS, STEPS)


def dims_tree(dims_cls):
    """The (2, 3, 4) tensor as two 3x4 matrices (axis 0 a batch axis); non-matrices to AdamW."""
    return {
        "scalar": None,
        "vector": None,
        "matrix": dims_cls(),
        "tensor": dims_cls(reduction_axis=1, output_axis=2),
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(nesterov=False, weight_decay=0.1, beta=0.9, preconditioning="spectral"),
        dict(
            adaptive=True,
            adam_learning_rate=0.003,
            adam_weight_decay=0.01,
            consistent_rms=0.2,
            preconditioning="schatten",
        ),
        dict(ns_coeffs="dion", preconditioning="aol", dims=True),
    ],
    ids=[
        "defaults",
        "heavy-ball-decay-spectral",
        "adaptive-consistent-rms-schatten",
        "dion-aol-3d",
    ],
)
def test_matches_optax_over_jitted_steps(kwargs):
    kwargs = dict(kwargs)
    ours_kw, theirs_kw = dict(kwargs), dict(kwargs)
    if kwargs.pop("dims", False):
        ours_kw.pop("dims")
        theirs_kw.pop("dims")
        ours_kw["muon_weight_dimension_numbers"] = dims_tree(gc.MuonDimensionNumbers)
        theirs_kw["muon_weight_dimension_numbers"] = dims_tree(optax.contrib.MuonDimensionNumbers)
    got, _ = run(gc.muon(0.02, **ours_kw), PARAMS, GRADS, gc.apply_updates)
    want, _ = run(optax.contrib.muon(0.02, **theirs_kw), PARAMS, GRADS, optax.apply_updates)
    for k in range(STEPS):
        assert_trees_close(got[k], want[k], what=f"params after step {k + 1}")


def reference_newton_schulz(g, eps, steps=5, coeffs=(3.4445, -4.7750, 2.0315)):
    a, b, c = coeffs
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def reference_muon(params, grads, *, lr, beta, weight_decay, nesterov, eps):
    """KellerJordan/Muon as ALGORITHMS.md §11.2 writes it, in float64 (not bfloat16): raw EMA,
    ``lerp(g, buf, beta)`` for Nesterov, decay ``p (1 - lr wd)``, width factor
    ``sqrt(max(1, rows/cols))`` of torch's ``(out, in)`` layout, which is ``(cols/rows)`` in the
    ``(in, out)`` layout used here."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    out = []
    for g in grads:
        for k in p:
            gk = np.asarray(g[k], np.float64)
            buf[k] = beta * buf[k] + (1 - beta) * gk
            upd = (1 - beta) * gk + beta * buf[k] if nesterov else buf[k]
            rows, cols = upd.shape
            upd = reference_newton_schulz(upd, eps) * np.sqrt(max(1.0, cols / rows))
            p[k] = p[k] * (1 - lr * weight_decay) - lr * upd
        out.append({k: v.copy() for k, v in p.items()})
    return out


@pytest.mark.parametrize("nesterov", [True, False])
def test_reference_momentum_follows_the_reference_algorithm(nesterov):
    rng = np.random.default_rng(7)
    params = {
        "tall": PARAMS["matrix"],
        "wide": jnp.asarray(rng.standard_normal((3, 6)), jnp.float32),
    }
    grads = [
        {"tall": g["matrix"], "wide": jnp.asarray(rng.standard_normal((3, 6)), jnp.float32)}
        for g in GRADS
    ]
    tx = gc.muon(
        0.02, beta=0.95, eps=1e-7, weight_decay=0.01, nesterov=nesterov, bias_correction=False
    )
    got, _ = run(tx, params, grads, gc.apply_updates)
    expected = reference_muon(
        params, grads, lr=0.02, beta=0.95, weight_decay=0.01, nesterov=nesterov, eps=1e-7
    )
    # float32 Newton-Schulz against float64: five polynomial steps on a unit-norm matrix lose a
    # few ulps (~1e-6 relative); 20 steps of 0.02-sized updates keep the drift far below 1e-5.
    for k in range(STEPS):
        assert_trees_close(
            got[k], expected[k], what=f"params after step {k + 1}", rtol=1e-5, atol=1e-5
        )


def test_without_nesterov_bias_correction_cancels_in_the_normalisation():
    # ALGORITHMS.md §11.4: the correction is a positive scalar, which the Frobenius
    # pre-normalisation divides out (exactly, with eps = 0).
    params = {"w": PARAMS["matrix"]}
    grads = [{"w": g["matrix"]} for g in GRADS[:5]]
    with_bc, _ = run(gc.muon(0.02, eps=0.0, nesterov=False), params, grads, gc.apply_updates)
    without, _ = run(
        gc.muon(0.02, eps=0.0, nesterov=False, bias_correction=False),
        params,
        grads,
        gc.apply_updates,
    )
    assert_trees_close(with_bc[-1], without[-1], what="params")


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (16, 8)])
def test_newton_schulz_keeps_singular_vectors_and_brings_singular_values_near_one(shape):
    x = np.random.default_rng(3).standard_normal(shape)
    out = np.asarray(gc.orthogonalize_via_newton_schulz(jnp.asarray(x, jnp.float32)), np.float64)
    u, _s, vt = np.linalg.svd(x, full_matrices=False)
    core = u.T @ out @ vt.T  # diagonal when out = U S' V^T
    off_diagonal = core - np.diag(np.diag(core))
    assert np.abs(off_diagonal).max() < 1e-5
    assert np.diag(core).min() > 0.5 and np.diag(core).max() < 1.5  # §11.1: S' in ~[0.5, 1.5]
    scaled = gc.orthogonalize_via_newton_schulz(jnp.asarray(37.0 * x, jnp.float32))
    np.testing.assert_allclose(np.asarray(scaled), out, rtol=1e-5, atol=1e-6)  # scale-invariant


def transformer_params():
    """Shapes of a one-layer transformer; numpy data, so no new compilation per shape."""
    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    return {
        "embed": {"embedding": n(11, 4)},
        "layer_0": {
            "MultiHeadAttention_0": {"query": {"kernel": n(4, 4)}, "out": {"kernel": n(4, 4)}},
            "mlp": {"kernel": n(4, 8), "bias": n(8)},
            "norm": {"scale": n(4)},
        },
        "lm_head": {"kernel": n(4, 11)},
    }


def test_muon_labels_send_only_hidden_matrices_to_muon():
    labels = gc.muon_labels(transformer_params())
    assert labels == {
        "embed": {"embedding": "adam"},
        "layer_0": {
            "MultiHeadAttention_0": {"query": {"kernel": "muon"}, "out": {"kernel": "muon"}},
            "mlp": {"kernel": "muon", "bias": "adam"},
            "norm": {"scale": "adam"},
        },
        "lm_head": {"kernel": "adam"},
    }


def test_labelled_muon_gives_embeddings_and_heads_adamw_moments():
    params = transformer_params()
    default = gc.muon(0.02).init(params)
    labelled = gc.muon(0.02, param_labels=gc.muon_labels).init(params)
    # optax's default puts the 2-D embedding and head in the Muon group; the labels move them.
    # Each group keeps MaskedNode() on the other group's leaves, as optax's partition does.
    assert default["muon"].scale_by_muon.mu["lm_head"]["kernel"].shape == (4, 11)
    assert isinstance(labelled["muon"].scale_by_muon.mu["lm_head"]["kernel"], gc.MaskedNode)
    assert labelled["adam"].scale_by_adam.nu["lm_head"]["kernel"].shape == (4, 11)
    assert labelled["adam"].scale_by_adam.nu["embed"]["embedding"].shape == (11, 4)
    assert labelled["muon"].scale_by_muon.mu["layer_0"]["mlp"]["kernel"].shape == (4, 8)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "build, params, message",
    [
        (
            lambda: gc.scale_by_muon(),
            {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
            r"scale_by_muon: parameter \['b'\] has shape \(2,\); Muon orthogonalises matrices",
        ),
        (
            lambda: gc.muon(0.1, param_labels=lambda p: jax.tree.map(lambda _: "muon", p)),
            {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
            r"scale_by_muon: parameter \['b'\] has shape \(2,\)",
        ),
        (
            lambda: gc.muon(0.1, param_labels=gc.muon_labels),
            {"layers": {"w": jnp.ones((4, 3, 2))}},
            r"parameter \['layers'\]\['w'\] has shape \(4, 3, 2\)",
        ),
        (
            lambda: gc.muon(0.1, param_labels={"w": "sgd"}),
            {"w": jnp.ones((3, 2))},
            r"muon: the parameter \['w'\] has the label 'sgd', which has no transformation "
            r"\(labels with one: \['muon', 'adam'\]\)",
        ),
    ],
    ids=[
        "1-d-leaf-in-scale_by_muon",
        "1-d-leaf-labelled-muon",
        "3-d-leaf-without-dims",
        "unknown-label",
    ],
)
def test_leaves_muon_cannot_take_are_clear_errors_naming_the_path(build, params, message, jit):
    init = jax.jit(build().init) if jit else build().init
    with pytest.raises(ValueError, match=message):
        init(params)


def test_stacked_layers_with_dimension_numbers_are_orthogonalised_per_layer():
    rng = np.random.default_rng(5)
    stacked = jnp.asarray(rng.standard_normal((3, 4, 2)), jnp.float32)
    grads = [{"w": jnp.asarray(rng.standard_normal((3, 4, 2)), jnp.float32)} for _ in range(3)]
    dims = gc.MuonDimensionNumbers(reduction_axis=1, output_axis=2)
    got, _ = run(
        gc.muon(0.02, muon_weight_dimension_numbers={"w": dims}),
        {"w": stacked},
        grads,
        gc.apply_updates,
    )
    # The same three layers as three separate 4x2 leaves.
    split = lambda t: {f"layer_{i}": t["w"][i] for i in range(3)}
    layers, _ = run(
        gc.muon(0.02), split({"w": stacked}), [split(g) for g in grads], gc.apply_updates
    )
    assert_trees_close(split(got[-1]), layers[-1], what="layers")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: gc.muon(0.02, beta=1.0), r"beta must be in \[0, 1\), got 1.0"),
        (lambda: gc.muon(0.02, eps=-1e-8), r"eps must be in \[0, inf\)"),
        (lambda: gc.muon(-0.02), r"learning_rate must be in \[0, inf\)"),
        (lambda: gc.muon(0.02, ns_steps=0), r"ns_steps must be a positive int, got 0"),
        (
            lambda: gc.muon(0.02, ns_coeffs=(1.0, 2.0)),
            r"ns_coeffs must have shape \(3,\) or \(n, 3\)",
        ),
        (
            lambda: gc.muon(0.02, ns_coeffs="cubic"),
            r"ns_coeffs must be a preset in \['dion', 'standard'\]",
        ),
        (
            lambda: gc.muon(0.02, ns_coeffs="dion", ns_steps=3),
            r"ns_coeffs gives 5 rows .* ns_steps is 3",
        ),
        (lambda: gc.muon(0.02, preconditioning="polar"), r"preconditioning must be one of"),
        (lambda: gc.muon(0.02, consistent_rms=0.0), r"consistent_rms must be in \(0, inf\)"),
        (lambda: gc.muon(0.02, adam_b2=1.0), r"b2 must be in \[0, 1\)"),
        (lambda: gc.muon(0.02, ns_dtype=jnp.int8), r"ns_dtype must be a floating dtype"),
    ],
)
def test_invalid_hyperparameters_raise_at_construction(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_state_memory_is_one_buffer_for_muon_leaves():
    params = {
        "w": jax.ShapeDtypeStruct((64, 32), jnp.float32),
        "b": jax.ShapeDtypeStruct((32,), jnp.float32),
    }
    shapes = jax.eval_shape(gc.muon(0.02).init, params)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))
    # mu for w (4 bytes per entry), mu and nu for b (AdamW), plus O(1) counters and hyperparams.
    assert state_bytes == pytest.approx(4 * 64 * 32 + 8 * 32, abs=128)


@pytest.mark.parametrize("float32_state", [False, True], ids=["default", "with_float32_state"])
def test_bfloat16_updates_keep_their_dtype_and_the_momentum_dtype_is_the_policy(float32_state):
    """bfloat16 momentum by default, as optax; float32 with gc.with_float32_state."""
    params = {"w": jnp.ones((4, 6), jnp.bfloat16)}
    tx = gc.with_float32_state(gc.muon(0.02)) if float32_state else gc.muon(0.02)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)({"w": jnp.eye(4, 6, dtype=jnp.bfloat16)}, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    want = jnp.float32 if float32_state else jnp.bfloat16
    assert state["muon"].scale_by_muon.mu["w"].dtype == want


def test_state_is_optax_muon_state_and_its_coefficients_drive_the_iteration():
    params = {"w": PARAMS["matrix"]}
    grads = [{"w": g["matrix"]} for g in GRADS[:3]]
    dion = gc.scale_by_muon(ns_coeffs="dion")
    state = gc.scale_by_muon().init(params)
    assert isinstance(state, gc.MuonState) and state.ns_coeffs.shape == (3,)
    np.testing.assert_array_equal(
        state.ns_coeffs, optax.contrib.scale_by_muon().init(params).ns_coeffs
    )
    assert dion.init(params).ns_coeffs.shape == (5, 3)
    # The update reads ns_coeffs from the state, as optax's: the quintic transformation given
    # the Dion rows in its state computes what the Dion transformation computes.
    swapped = dataclasses.replace(state, ns_coeffs=dion.init(params).ns_coeffs)
    quintic_step = jax.jit(gc.scale_by_muon().update)
    dion_step, dion_state = jax.jit(dion.update), dion.init(params)
    for g in grads:
        got, swapped = quintic_step(g, swapped)
        want, dion_state = dion_step(g, dion_state)
        assert_trees_close(got, want, what="updates", rtol=0, atol=0)
