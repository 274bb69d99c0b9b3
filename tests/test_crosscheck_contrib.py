"""The optax.contrib optimizers of issue #18 against optax 0.2.8, step by step.

The machinery and tolerances are those of ``test_crosscheck_newopt`` (20 jitted steps on
``crosscheck.mixed_params()``, float32 leaves to ``1e-6 * S_k``, the bfloat16 leaf, run with
``gc.with_float32_state``, against optax run on the float32-upcast tree to 1e-2, complex trees where optax runs them). Cases that need the
loss (``momo``, ``momo_adam``) get ``value = sum of squares of the float32 params`` on both sides.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import gradient_stream, mixed_params, upcast
from test_crosscheck_foundation import ADAM_RTOL, assert_trajectories_close
from test_crosscheck_newopt import (
    _ours,
    _params,
    _reference,
    assert_complex_trajectories_close,
    assert_state_dtypes_and_structure_preserved,
    case,
    schedule,
)

import gradchain as gc

# MADGRAD's dual averages grow as sum sqrt(k) g: their cube roots and the division by them
# round differently in the two programs by a few float32 ulps of the (large) sums, which the
# damping of momentum 0.9 carries for ~10 steps; measured 3e-7 absolute on O(1) params.
MADGRAD_RTOL = 5e-6

# DoG, DoWG, MoMo and Mechanic take one step size for the whole tree from statistics of the parameters
# (the distance travelled, <g, x>). The upcast reference's bfloat16 leaf is not bfloat16 inside
# its jitted step (XLA's excess precision drops the round trip through bfloat16), so it moves
# those statistics, and every float32 leaf, by ~1e-5 relative from the second step. These cases
# compare the float32 leaves on a tree without the bfloat16 leaf (bf16=False), and
# test_global_step_size_on_bfloat16_params compares an all-bfloat16 tree.
GLOBAL = dict(bf16=False)


def _allow_rank_promotion(tx):
    """optax's layer-wise DoG multiplies each leaf by a ``(1,)``-shaped step, which the suite's
    ``jax_numpy_rank_promotion="raise"`` forbids; the reference runs with it allowed."""

    def update(updates, state, params=None):
        with jax.numpy_rank_promotion("allow"):
            return tx.update(updates, state, params)

    return optax.GradientTransformation(tx.init, update)


MATRIX = [
    case("scale_by_acprop", gc.scale_by_acprop, optax.contrib.scale_by_acprop),
    case(
        "acprop-weight_decay-schedule",
        lambda: gc.acprop(schedule, 0.8, 0.99, 1e-8, 1e-10, weight_decay=0.1),
        lambda: optax.contrib.acprop(schedule, 0.8, 0.99, 1e-8, 1e-10, weight_decay=0.1),
    ),
    case("scale_by_cocob", gc.scale_by_cocob, optax.contrib.scale_by_cocob),
    case("cocob", gc.cocob, optax.contrib.cocob),
    case(
        "cocob-lr-alpha-weight_decay",
        lambda: gc.cocob(0.5, 10.0, 1e-6, weight_decay=0.1),
        lambda: optax.contrib.cocob(0.5, 10.0, 1e-6, weight_decay=0.1),
    ),
    case("dog", gc.dog, optax.contrib.dog, complex=True, **GLOBAL),
    case(
        "dog-distance-weight_decay",
        lambda: gc.dog(0.5, ("distance", 0.1), weight_decay=0.1),
        lambda: optax.contrib.dog(0.5, ("distance", 0.1), weight_decay=0.1),
        **GLOBAL,
    ),
    case(
        "dog-learning_rate-schedule",
        lambda: gc.dog(schedule, ("learning_rate", 0.01)),
        lambda: optax.contrib.dog(schedule, ("learning_rate", 0.01)),
        complex=True,
        **GLOBAL,
    ),
    case("dowg", gc.dowg, optax.contrib.dowg, complex=True, **GLOBAL),
    case(
        "dowg-init-weight_decay",
        lambda: gc.dowg(0.3, 0.5, 1e-3, weight_decay=0.1),
        lambda: optax.contrib.dowg(0.3, 0.5, 1e-3, weight_decay=0.1),
        **GLOBAL,
    ),
    # optax's layer-wise DoG turns a scalar leaf's update into shape (1,): no scalar leaf.
    case(
        "scale_by_distance_over_gradients",
        lambda: gc.chain(gc.scale_by_distance_over_gradients(), gc.scale(-0.1)),
        lambda: optax.chain(
            _allow_rank_promotion(optax.scale_by_distance_over_gradients()), optax.scale(-0.1)
        ),
        scalar=False,
    ),
    case(
        "scale_by_distance_over_gradients-args",
        lambda: gc.scale_by_distance_over_gradients(1e-3, 1e-4, jnp.float32, -0.5),
        lambda: _allow_rank_promotion(
            optax.scale_by_distance_over_gradients(1e-3, 1e-4, jnp.float32, -0.5)
        ),
        scalar=False,
    ),
    case(
        "scale_by_madgrad",
        lambda: gc.scale_by_madgrad(0.01),
        lambda: optax.contrib.scale_by_madgrad(0.01),
        rtol=MADGRAD_RTOL,
    ),
    case(
        "madgrad-schedule-weight_decay",
        lambda: gc.madgrad(schedule, 0.5, 0.1, 1e-3),
        lambda: optax.contrib.madgrad(schedule, 0.5, 0.1, 1e-3),
        rtol=MADGRAD_RTOL,
    ),
    case("normalize", gc.normalize, optax.contrib.normalize, complex=True),
    case(
        "sam",
        lambda: gc.sam(gc.sgd(0.1), gc.chain(gc.normalize(), gc.sgd(0.05))),
        lambda: optax.contrib.sam(
            optax.sgd(0.1), optax.chain(optax.contrib.normalize(), optax.sgd(0.05))
        ),
        complex=True,
        **GLOBAL,
    ),
    case(
        "sam-adam-sync3-no_reset",
        lambda: gc.sam(
            gc.adam(0.01), gc.chain(gc.normalize(), gc.sgd(0.05, momentum=0.9)), 3, False
        ),
        lambda: optax.contrib.sam(
            optax.adam(0.01),
            optax.chain(optax.contrib.normalize(), optax.sgd(0.05, momentum=0.9)),
            3,
            False,
        ),
        rtol=ADAM_RTOL,
        **GLOBAL,
    ),
    case(
        "mechanize-sgd",
        lambda: gc.mechanize(gc.sgd(1.0)),
        lambda: optax.contrib.mechanize(optax.sgd(1.0)),
        **GLOBAL,
    ),
    case(
        "mechanize-adam-args",
        lambda: gc.mechanize(gc.adam(1.0), 0.1, 1e-6, 1e-4, 3),
        lambda: optax.contrib.mechanize(optax.adam(1.0), 0.1, 1e-6, 1e-4, 3),
        rtol=ADAM_RTOL,
        **GLOBAL,
    ),
    case(
        "split_real_and_imaginary-adam",
        lambda: gc.split_real_and_imaginary(gc.adam(0.01)),
        lambda: optax.contrib.split_real_and_imaginary(optax.adam(0.01)),
        complex=True,
        rtol=ADAM_RTOL,
    ),
    case("momo", gc.momo, optax.contrib.momo, value=True, **GLOBAL),
    case(
        "momo-adapt_lower_bound-weight_decay",
        lambda: gc.momo(schedule, 0.5, 1.0, 0.1, True),
        lambda: optax.contrib.momo(schedule, 0.5, 1.0, 0.1, True),
        value=True,
        **GLOBAL,
    ),
    case("momo_adam", gc.momo_adam, optax.contrib.momo_adam, value=True, rtol=ADAM_RTOL, **GLOBAL),
    case(
        "momo_adam-adapt_lower_bound-weight_decay",
        lambda: gc.momo_adam(schedule, 0.8, 0.99, 1e-3, 1.0, 0.1, True),
        lambda: optax.contrib.momo_adam(schedule, 0.8, 0.99, 1e-3, 1.0, 0.1, True),
        value=True,
        rtol=ADAM_RTOL,
        **GLOBAL,
    ),
]


@pytest.mark.parametrize("c", MATRIX)
def test_matches_optax_for_every_step(c):
    assert_trajectories_close(c, _params(c), _ours(c)[0], _reference(c))


COMPLEX = [p for p in MATRIX if p.values[0].complex]


@pytest.mark.parametrize("c", COMPLEX)
def test_matches_optax_on_complex_params(c):
    assert_complex_trajectories_close(c, rtol=1e-5)


@pytest.mark.parametrize("c", MATRIX)
def test_state_dtypes_and_structure_are_preserved(c):
    assert_state_dtypes_and_structure_preserved(c)


def test_layerwise_dog_keeps_a_scalar_leafs_shape():
    # optax's returns shape (1,) for a scalar leaf (its step has shape (1,)).
    tx = gc.scale_by_distance_over_gradients()
    params = {"s": jnp.asarray(1.0), "v": jnp.ones(3, jnp.bfloat16)}
    u, _ = tx.update(params, tx.init(params), params)
    assert u["s"].shape == () and u["v"].dtype == jnp.bfloat16


GLOBAL_CASES = [p for p in MATRIX if not p.values[0].bf16]


@pytest.mark.parametrize("c", GLOBAL_CASES)
def test_global_step_size_on_bfloat16_params(c):
    # An all-bfloat16 tree, with gradchain's option of float32 state, against optax on its
    # float32 upcast (optax's bfloat16 default is gradchain's too: test_dtype_policy). The parameters are rounded to
    # bfloat16 outside the jitted update on both sides, so the reference's excess precision
    # cannot skip the rounding; one rounding may still flip an ulp (2^-8 relative), hence the
    # bfloat16 tolerance of 1e-2.
    params = jax.tree.map(
        lambda x: x.astype(jnp.bfloat16), {k: v for k, v in mixed_params().items() if k != "bf16"}
    )
    grads = gradient_stream(params, 20)

    def run(tx, params, grads):
        @jax.jit
        def update(p, s, g):
            loss = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(p))
            return tx.update(g, s, p, **({"value": loss} if c.value else {}))

        state = tx.init(params)
        for g in grads:
            u, state = update(params, state, g)
            params = jax.tree.map(
                lambda p, u: (p.astype(jnp.bfloat16) + u.astype(jnp.bfloat16)).astype(p.dtype),
                params,
                u,
            )
        return params

    ours = run(gc.with_float32_state(c.ours()), params, grads)
    ref = run(c.ref(), upcast(params), upcast(grads))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2, atol=1e-2
        )
