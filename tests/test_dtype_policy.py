"""bfloat16 parameters get optax's state dtypes and optax's trajectory by default (issue #17);
gradchain's float32 state is the option ``gc.with_float32_state(tx)``.

For every registry entry whose name optax also has, the same constructor call is run on a tree
of bfloat16 parameters for 20 jitted steps by gradchain and by optax: the states hold the same
dtypes, and the parameters after every step are the same bits. The exceptions are listed below
with their reason, and each is checked to still differ, so the lists only shrink.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import gradient_stream
from test_optax_layout import SHARED, STRUCTURAL_DIFFERENCES, optax_build

import gradchain as gc

STEPS = 20

# Entries this driver cannot run on both sides with the same call.
NOT_DRIVEN = {
    "scale_by_muon": "optax's state keeps ns_coeffs (STRUCTURAL_DIFFERENCES in test_optax_layout)",
    "hutchinson_estimator_diag_hessian": "the registry's call passes an int seed, which optax's "
    "constructor does not take as a PRNG key",
    "scale_by_distance_over_gradients": "optax's update broadcasts a (1,)-shaped scalar against "
    "each leaf, which the suite's jax_numpy_rank_promotion='raise' refuses",
}

# State dtypes that still differ from optax's for bfloat16 parameters (beyond the structural
# differences of test_optax_layout, whose leaves differ in number).
STATE_DTYPE_DIFFERENCES = {
    "schedule_free": "optax keeps b1 and step_count in ScheduleFreeState (STRUCTURAL_DIFFERENCES)",
    "schedule_free_sgd": "as schedule_free",
    "schedule_free_adamw": "as schedule_free",
    "reduce_on_plateau": "gradchain keeps best_value, plateau_count and scale in float32 whatever "
    "the parameters (tests/test_reduce_on_plateau.py)",
    "add_noise": "gradchain keeps a typed PRNG key where optax keeps raw uint32 key data",
    "noisy_sgd": "as add_noise",
    "differentially_private_aggregate": "gradchain keeps raw uint32 key data where optax keeps a "
    "typed PRNG key",
    "dpsgd": "as differentially_private_aggregate",
    "scale_by_backtracking_linesearch": "gradchain keeps the line search's value and learning "
    "rate in float32",
    "scale_by_backtracking_linesearch[store_grad]": "as scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch": "gradchain keeps the zoom line search's scalars in float32",
    "lbfgs": "gradchain keeps the zoom line search's scalars in float32",
    "prodigy": "gradchain keeps Prodigy's moments and scalar estimates in float32 (in bfloat16 "
    "the estimate of d overflows: tests/test_properties.py)",
    "dadapt_adamw": "as prodigy",
    "mechanize": "gradchain keeps Mechanic's scalars in float32",
}

# Trajectories that are not yet optax's bits for bfloat16 parameters: gradchain forms a
# reduction or an intermediate in float32, or in another order, where optax rounds to bfloat16.
ROUNDING_DIFFERENCES = {
    "scale_by_stddev": "the variance max(nu - mu^2, 0) is clamped (optax can give NaN)",
    "rmsprop": "as scale_by_stddev (centered)",
    "clip_by_global_norm": "the global norm is summed in float32 and applied as one factor M/N",
    "ema": "the debiased EMA is formed in another order",
    "flatten": "the flat buffer runs Adam on one float32-summed leaf",
    "lamb": "the trust ratio's norms are summed in float32",
    "signum": "the momentum is formed in another order",
    "normalize_by_update_norm": "the norm is summed in float32",
    "adadelta": "the update is formed in another order",
    "scale_by_novograd": "the per-leaf norm is summed in float32",
    "novograd": "as scale_by_novograd",
    "fromage": "the norms are summed in float32",
    "scale_by_sm3": "the accumulator is formed in another order",
    "sm3": "as scale_by_sm3",
    "scale_by_polyak": "the squared norm is summed in float32",
    "polyak_sgd": "as scale_by_polyak",
    "scale_by_backtracking_linesearch": "the decrease condition is evaluated in float32",
    "scale_by_backtracking_linesearch[store_grad]": "as scale_by_backtracking_linesearch",
    "scale_by_lbfgs": "the two-loop recursion's dot products are summed in float32",
    "lbfgs": "as scale_by_lbfgs",
    "scale_by_madgrad": "the dual average is formed in another order",
    "madgrad": "as scale_by_madgrad",
    "momo": "the model's dot products are summed in float32",
    "momo[adapt_lower_bound]": "as momo",
    "momo_adam": "as momo",
    "muon": "the Newton-Schulz iteration runs in float32",
    "schedule_free": "the interpolation is formed in float32",
    "schedule_free_sgd": "as schedule_free",
    "schedule_free_adamw": "as schedule_free",
    "adafactor": "the factored statistics are formed in float32",
    "scale_by_factored_rms": "as adafactor",
    "differentially_private_aggregate": "the clipped sum and the noise are added in float32 and "
    "rounded once (tests/test_privacy.py)",
    "dpsgd": "as differentially_private_aggregate",
}

DRIVEN = [e for e in SHARED if e.id not in NOT_DRIVEN]


def _params(entry):
    if entry.matrices:
        shapes = {"w": (4, 3), "u": (3, 4)}
    else:
        shapes = {"w": (3, 2), "b": (4,)}
    return {
        k: jnp.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s).astype(jnp.bfloat16) + 0.1 * i
        for i, (k, s) in enumerate(shapes.items())
    }


def _run(tx, entry, params, grads, apply_updates):
    state = tx.init(params)

    @jax.jit
    def step(p, s, g):
        u, s = tx.update(entry.updates_arg(g), s, p, **entry.extra_args(p))
        return apply_updates(p, u), s

    trajectory = []
    for g in grads:
        params, state = step(params, state, g)
        trajectory.append([np.asarray(x, np.float32) for x in jax.tree.leaves(params)])
    return trajectory, state


def _both(entry):
    raw = _params(entry)
    grads = gradient_stream(raw, STEPS)
    ours = entry.params_arg(raw)
    theirs = ours
    if isinstance(ours, gc.LookaheadParams):
        theirs = optax.LookaheadParams(fast=ours.fast, slow=ours.slow)
    got = _run(entry.build(), entry, ours, grads, gc.apply_updates)
    want = _run(optax_build(entry), entry, theirs, grads, optax.apply_updates)
    return got, want


def _dtypes(state) -> list[str]:
    return sorted(str(x.dtype) for x in jax.tree.leaves(state))


def test_the_lists_name_shared_entries():
    ids = {e.id for e in SHARED}
    assert set(NOT_DRIVEN) <= ids
    assert set(STATE_DTYPE_DIFFERENCES) <= ids
    assert set(ROUNDING_DIFFERENCES) <= ids


@pytest.mark.parametrize("entry", DRIVEN, ids=lambda e: e.id)
def test_bfloat16_default_is_optax_state_dtypes_and_trajectory(entry):
    (got, ours), (want, theirs) = _both(entry)
    if entry.id in STRUCTURAL_DIFFERENCES:
        # Another number of leaves (test_optax_layout): the same dtypes occur.
        same_dtypes = set(_dtypes(ours)) == set(_dtypes(theirs))
    else:
        same_dtypes = _dtypes(ours) == _dtypes(theirs)
    if entry.id in STATE_DTYPE_DIFFERENCES:
        assert not same_dtypes, f"{entry.id}'s state dtypes now match optax's: unlist it"
    else:
        assert same_dtypes, (_dtypes(ours), _dtypes(theirs))
    same_bits = all(
        np.array_equal(a, b, equal_nan=True)
        for step_got, step_want in zip(got, want)
        for a, b in zip(step_got, step_want)
    )
    if entry.id in ROUNDING_DIFFERENCES:
        assert not same_bits, f"{entry.id} now gives optax's bits: unlist it"
        for a, b in zip(got[0], want[0]):
            # The first step is the same algorithm, rounded differently: the parameters (of
            # order 1) within a few bfloat16 ulps of an intermediate at the registry's learning
            # rates (up to 1).
            np.testing.assert_allclose(a, b, rtol=0.1, atol=0.1)
    else:
        assert same_bits


# ---------------------------------------------------------------------------------------------
# The option: with_float32_state


def test_with_float32_state_keeps_float32_moments_and_bfloat16_updates():
    params = {"w": jnp.ones((3, 2), jnp.bfloat16), "f": jnp.ones((2,), jnp.float32)}
    plain, wrapped = gc.adam(1e-3), gc.with_float32_state(gc.adam(1e-3))
    assert gc.tree_get(plain.init(params), "mu")["w"].dtype == jnp.bfloat16
    state = wrapped.init(params)
    assert gc.tree_get(state, "mu")["w"].dtype == jnp.float32
    assert gc.tree_get(state, "nu")["w"].dtype == jnp.float32
    # The state is adam's own, in adam's layout.
    assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))
    updates, state = jax.jit(wrapped.update)(params, state, params)
    assert updates["w"].dtype == jnp.bfloat16 and updates["f"].dtype == jnp.float32
    assert gc.tree_get(state, "nu")["w"].dtype == jnp.float32


def test_with_float32_state_is_the_inner_optimizer_on_float32_copies():
    """The option is exactly ``tx`` run on float32 copies, rounded to bfloat16 at the end."""
    params = {"w": jnp.linspace(-1, 1, 6).reshape(3, 2).astype(jnp.bfloat16)}
    grads = gradient_stream(params, 5)
    tx = gc.adamw(1e-2, weight_decay=0.1)
    wrapped = gc.with_float32_state(tx)
    s_wrapped, s_f32 = wrapped.init(params), tx.init(jax.tree.map(lambda x: x.astype("f4"), params))
    for g in grads:
        u, s_wrapped = jax.jit(wrapped.update)(g, s_wrapped, params)
        g32, p32 = (jax.tree.map(lambda x: x.astype("f4"), t) for t in (g, params))
        u32, s_f32 = jax.jit(tx.update)(g32, s_f32, p32)
        # Two XLA programs may contract a multiply-add differently (one float32 ulp); rounded
        # to bfloat16 that is at most one bfloat16 ulp (2^-8 relative).
        np.testing.assert_allclose(
            np.asarray(u["w"], np.float32),
            np.asarray(u32["w"].astype(jnp.bfloat16), np.float32),
            rtol=2**-7,
        )
        params = gc.apply_updates(params, u)
    for a, b in zip(jax.tree.leaves(s_wrapped), jax.tree.leaves(s_f32)):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_with_float32_state_works_on_optax_transformations_and_abstract_params():
    abstract = {"w": jax.ShapeDtypeStruct((4,), jnp.bfloat16)}
    state = gc.with_float32_state(optax.adam(1e-3)).init(abstract)
    assert state[0].mu["w"].dtype == jnp.float32
    state = gc.with_float32_state(gc.adam(1e-3)).init(abstract)
    assert gc.tree_get(state, "mu")["w"].dtype == jnp.float32


def test_an_explicit_mu_dtype_wins_in_both_policies():
    params = {"w": jnp.ones(3, jnp.bfloat16)}
    tx = gc.adam(1e-3, mu_dtype=jnp.float32)
    state = tx.init(params)
    assert gc.tree_get(state, "mu")["w"].dtype == jnp.float32
    assert gc.tree_get(state, "nu")["w"].dtype == jnp.bfloat16  # as optax's
    theirs = optax.adam(1e-3, mu_dtype=jnp.float32).init(params)
    assert theirs[0].nu["w"].dtype == jnp.bfloat16
    _, state = jax.jit(tx.update)(params, state, params)
    assert gc.tree_get(state, "mu")["w"].dtype == jnp.float32
    wrapped = gc.with_float32_state(gc.adam(1e-3, mu_dtype=jnp.bfloat16))
    assert gc.tree_get(wrapped.init(params), "mu")["w"].dtype == jnp.bfloat16
    assert gc.tree_get(wrapped.init(params), "nu")["w"].dtype == jnp.float32
