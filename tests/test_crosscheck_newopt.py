"""The optimizers and transformations of issue #18 against optax 0.2.8, step by step.

Each case runs gradchain and optax for ``STEPS`` jitted steps on the same pseudo-gradients over
``crosscheck.mixed_params()`` (a scalar, a vector, a matrix, a 3-D tensor and a bfloat16 matrix)
and compares the parameters after every step with the tolerance of
``test_crosscheck_foundation`` (``|ours - ref| <= rtol * S_k + atol``, ``S_k`` the summed size of
the reference's steps; 1e-6 for float32, 1e-2 for bfloat16 leaves against optax run on the
float32-upcast tree and stored back in bfloat16: gradchain runs with ``gc.with_float32_state``,
its option of float32 state for bfloat16 parameters; the default, optax's bfloat16 state, is
checked against optax bit for bit in ``test_dtype_policy``). Cases that optax runs on complex parameters
repeat the comparison on a complex64 tree. Cases that need the loss (``polyak_sgd``) get
``value = sum of squares of the params`` from both sides.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from crosscheck import gradient_stream, mixed_params, upcast
from test_crosscheck_foundation import ADAM_RTOL, assert_trajectories_close

import gradchain as gc

STEPS = 20


def schedule(count):
    return 0.1 / (1.0 + 0.2 * count)


def b3_schedule(count):
    return 0.999 - 0.1 / (1.0 + count)


def alpha_schedule(count):
    return jnp.minimum(count / 10.0, 1.0) * 3.0


def _loss(params):
    """The sum of squares of the float32 leaves: a bfloat16 leaf may round one ulp apart on the
    two sides (within its tolerance), which would move the loss, and so the Polyak step of every
    leaf, by more than the float32 tolerance."""
    leaves = [p for k, p in params.items() if k != "bf16"]  # the reference's is upcast
    return sum(jnp.sum(jnp.abs(p) ** 2) for p in leaves)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    ours: Callable
    ref: Callable
    rtol: float | None = None
    complex: bool = False  # optax runs it on complex parameters: compare on a complex tree too
    value: bool = False  # update takes value= (the loss)
    positive: bool = False  # params start non-negative (keep_params_nonnegative)
    scalar: bool = True  # include the scalar leaf (optax's sm3 fails on scalars)
    bf16: bool = True  # include the bfloat16 leaf (see test_crosscheck_contrib for why not)


def case(id, ours, ref, **kw):
    return pytest.param(Case(id, ours, ref, **kw), id=id)


MATRIX = [
    # (a) stateless and accumulation transforms, sign descent, noise
    case("scale_by_sign", gc.scale_by_sign, optax.scale_by_sign, complex=True),
    case("sign_sgd", lambda: gc.sign_sgd(0.01), lambda: optax.sign_sgd(0.01), complex=True),
    case("signum", lambda: gc.signum(schedule), lambda: optax.signum(schedule)),
    case(
        "signum-beta",
        lambda: gc.signum(0.01, beta=0.5),
        lambda: optax.signum(0.01, beta=0.5),
    ),
    case("centralize", gc.centralize, optax.centralize, complex=True),
    case(
        "keep_params_nonnegative",
        lambda: gc.chain(gc.sgd(0.3), gc.keep_params_nonnegative()),
        lambda: optax.chain(optax.sgd(0.3), optax.keep_params_nonnegative()),
        positive=True,
    ),
    case(
        "normalize_by_update_norm",
        lambda: gc.normalize_by_update_norm(),
        lambda: optax.normalize_by_update_norm(),
    ),
    case(
        "normalize_by_update_norm-scale_factor",
        lambda: gc.normalize_by_update_norm(0.3, eps=0.1),
        lambda: optax.normalize_by_update_norm(0.3, eps=0.1),
    ),
    case(
        "add_noise",
        lambda: gc.add_noise(0.01, 0.55, 3),
        lambda: optax.add_noise(0.01, 0.55, 3),
    ),
    case(
        "noisy_sgd",
        lambda: gc.noisy_sgd(0.1, key=5),
        lambda: optax.noisy_sgd(0.1, key=5),
    ),
    case("apply_every", lambda: gc.apply_every(3), lambda: optax.apply_every(3)),
    case(
        "apply_every-after_sgd",
        lambda: gc.chain(gc.sgd(0.1, momentum=0.9), gc.apply_every(2)),
        lambda: optax.chain(optax.sgd(0.1, momentum=0.9), optax.apply_every(2)),
    ),
    case(
        "scale_by_param_block_norm",
        lambda: gc.chain(gc.scale_by_param_block_norm(), gc.scale_by_learning_rate(0.01)),
        lambda: optax.chain(optax.scale_by_param_block_norm(), optax.scale_by_learning_rate(0.01)),
    ),
    # (b) optimizers
    case(
        "scale_by_belief",
        lambda: gc.scale_by_belief(),
        lambda: optax.scale_by_belief(),
        rtol=ADAM_RTOL,
    ),
    case(
        "adabelief-nesterov",
        lambda: gc.adabelief(0.01, nesterov=True),
        lambda: optax.adabelief(0.01, nesterov=True),
        rtol=ADAM_RTOL,
    ),
    case(
        "adabelief-schedule",
        lambda: gc.adabelief(schedule),
        lambda: optax.adabelief(schedule),
        rtol=ADAM_RTOL,
    ),
    case(
        "scale_by_yogi", lambda: gc.scale_by_yogi(), lambda: optax.scale_by_yogi(), rtol=ADAM_RTOL
    ),
    case(
        "scale_by_yogi-eps_root-initial",
        lambda: gc.scale_by_yogi(0.8, 0.99, 1e-2, 1e-8, 0.5),
        lambda: optax.scale_by_yogi(0.8, 0.99, 1e-2, 1e-8, 0.5),
    ),
    case("yogi", lambda: gc.yogi(0.01), lambda: optax.yogi(0.01), rtol=ADAM_RTOL),
    case("scale_by_adadelta", lambda: gc.scale_by_adadelta(), lambda: optax.scale_by_adadelta()),
    case(
        "adadelta-weight_decay",
        lambda: gc.adadelta(0.5, rho=0.95, weight_decay=0.1),
        lambda: optax.adadelta(0.5, rho=0.95, weight_decay=0.1),
    ),
    case("scale_by_adan", lambda: gc.scale_by_adan(), lambda: optax.scale_by_adan()),
    case(
        "adan-weight_decay-schedule",
        lambda: gc.adan(schedule, weight_decay=0.1),
        lambda: optax.adan(schedule, weight_decay=0.1),
    ),
    case("scale_by_novograd", lambda: gc.scale_by_novograd(), lambda: optax.scale_by_novograd()),
    case(
        "novograd-weight_decay",
        lambda: gc.novograd(0.01, weight_decay=0.1, eps_root=1e-8),
        lambda: optax.novograd(0.01, weight_decay=0.1, eps_root=1e-8),
    ),
    case("fromage", lambda: gc.fromage(0.01), lambda: optax.fromage(0.01)),
    case("fromage-schedule", lambda: gc.fromage(schedule), lambda: optax.fromage(schedule)),
    case("scale_by_rprop", lambda: gc.scale_by_rprop(0.1), lambda: optax.scale_by_rprop(0.1)),
    case(
        "rprop",
        lambda: gc.rprop(0.01, 0.3, 1.5, 1e-3, 0.05),
        lambda: optax.rprop(0.01, 0.3, 1.5, 1e-3, 0.05),
    ),
    case("scale_by_sm3", lambda: gc.scale_by_sm3(), lambda: optax.scale_by_sm3(), scalar=False),
    case(
        "scale_by_sm3-b2",
        lambda: gc.scale_by_sm3(0.5, 0.9),
        lambda: optax.scale_by_sm3(0.5, 0.9),
        scalar=False,
    ),
    case("sm3", lambda: gc.sm3(0.01), lambda: optax.sm3(0.01), scalar=False),
    case(
        "scale_by_optimistic_gradient",
        lambda: gc.scale_by_optimistic_gradient(0.5, 2.0),
        lambda: optax.scale_by_optimistic_gradient(0.5, 2.0),
    ),
    case(
        "optimistic_gradient_descent",
        lambda: gc.optimistic_gradient_descent(schedule),
        lambda: optax.optimistic_gradient_descent(schedule),
    ),
    case(
        "optimistic_adam",
        lambda: gc.optimistic_adam(0.01, 0.02),
        lambda: optax.optimistic_adam(0.01, 0.02),
        rtol=ADAM_RTOL,
    ),
    case(
        "optimistic_adam_v2",
        lambda: gc.optimistic_adam_v2(schedule, alpha=0.5, beta=0.7),
        lambda: optax.optimistic_adam_v2(schedule, alpha=0.5, beta=0.7),
        rtol=ADAM_RTOL,
    ),
    case(
        "scale_by_polyak",
        lambda: gc.chain(gc.scale_by_polyak(), gc.scale(-0.1)),
        lambda: optax.chain(optax.scale_by_polyak(), optax.scale(-0.1)),
        value=True,
    ),
    case(
        "polyak_sgd-sps+",
        lambda: gc.polyak_sgd(0.5, scaling=0.3, f_min=40.0, eps=1e-3, variant="sps+"),
        lambda: optax.polyak_sgd(0.5, scaling=0.3, f_min=40.0, eps=1e-3, variant="sps+"),
        value=True,
    ),
    # (d) optax.contrib: AdEMAMix, its simplified form, ADOPT
    case(
        "scale_by_ademamix",
        lambda: gc.scale_by_ademamix(),
        lambda: optax.contrib.scale_by_ademamix(),
        rtol=ADAM_RTOL,
        complex=True,
    ),
    case(
        "ademamix-schedules-weight_decay",
        lambda: gc.ademamix(schedule, b3=b3_schedule, alpha=alpha_schedule, weight_decay=0.1),
        lambda: optax.contrib.ademamix(
            schedule, b3=b3_schedule, alpha=alpha_schedule, weight_decay=0.1
        ),
        rtol=ADAM_RTOL,
    ),
    case(
        "ademamix-eps_root-mu_dtype",
        lambda: gc.ademamix(0.01, 0.8, 0.99, 0.999, 2.0, 1e-6, 1e-8, jnp.float32),
        lambda: optax.contrib.ademamix(0.01, 0.8, 0.99, 0.999, 2.0, 1e-6, 1e-8, jnp.float32),
        rtol=ADAM_RTOL,
    ),
    case(
        "scale_by_simplified_ademamix",
        lambda: gc.scale_by_simplified_ademamix(alpha=2.0),
        lambda: optax.contrib.scale_by_simplified_ademamix(alpha=2.0),
        rtol=ADAM_RTOL,
    ),
    case(
        "simplified_ademamix-schedule",
        lambda: gc.simplified_ademamix(0.01, 0.9, alpha=alpha_schedule, weight_decay=0.1),
        lambda: optax.contrib.simplified_ademamix(
            0.01, 0.9, alpha=alpha_schedule, weight_decay=0.1
        ),
        rtol=ADAM_RTOL,
    ),
    case("scale_by_adopt", gc.scale_by_adopt, optax.contrib.scale_by_adopt, rtol=ADAM_RTOL),
    case(
        "adopt-nesterov",
        lambda: gc.adopt(schedule, 0.8, 0.99, nesterov=True),
        lambda: optax.contrib.adopt(schedule, 0.8, 0.99, nesterov=True),
        rtol=ADAM_RTOL,
    ),
    case(
        "adopt-no_clipping",
        lambda: gc.adopt(0.01, b2=0.5, eps=1e-3, use_clipping=False),
        lambda: optax.contrib.adopt(0.01, b2=0.5, eps=1e-3, use_clipping=False),
        rtol=ADAM_RTOL,
    ),
    case(
        "adopt-clip_value_fn",
        lambda: gc.adopt(0.01, clip_value_fn=lambda t: 0.5 + 0.1 * t),
        lambda: optax.contrib.adopt(0.01, clip_value_fn=lambda t: 0.5 + 0.1 * t),
        rtol=ADAM_RTOL,
    ),
    # (c) clipping relative to the parameters
    case(
        "adaptive_grad_clip",
        lambda: gc.chain(gc.adaptive_grad_clip(0.1), gc.sgd(0.5)),
        lambda: optax.chain(optax.adaptive_grad_clip(0.1), optax.sgd(0.5)),
    ),
    case(
        "adaptive_grad_clip-eps",
        lambda: gc.chain(gc.adaptive_grad_clip(0.05, eps=0.5), gc.sgd(0.5)),
        lambda: optax.chain(optax.adaptive_grad_clip(0.05, eps=0.5), optax.sgd(0.5)),
    ),
]


def _params(c: Case, complex_: bool = False):
    params = mixed_params(bf16=c.bf16 and not complex_)
    if not c.scalar:
        del params["scalar"]
    if c.positive:
        params = jax.tree.map(jnp.abs, params)
    if complex_:
        k = jax.random.PRNGKey(3)
        params = jax.tree.map(
            lambda p: (p + 1j * jax.random.normal(k, p.shape)).astype(jnp.complex64), params
        )
    return params


def _grads(params, complex_: bool):
    if not complex_:
        return gradient_stream(params, STEPS)
    real = gradient_stream(jax.tree.map(jnp.real, params), STEPS)
    imag = gradient_stream(jax.tree.map(jnp.real, params), STEPS, seed=2)
    return [
        jax.tree.map(lambda a, b: (a + 1j * b).astype(jnp.complex64), r, i)
        for r, i in zip(real, imag)
    ]


def _run(tx, params, grads, apply, value: bool):
    @jax.jit
    def step(p, s, g):
        extra = {"value": _loss(p)} if value else {}
        u, s = tx.update(g, s, p, **extra)
        return apply(p, u), s

    state = tx.init(params)
    trajectory = []
    for g in grads:
        params, state = step(params, state, g)
        trajectory.append(params)
    return trajectory, state


@functools.cache
def _ours(c: Case, complex_: bool = False):
    params = _params(c, complex_)
    tx = gc.with_float32_state(c.ours())
    return _run(tx, params, _grads(params, complex_), gc.apply_updates, c.value)


def _reference(c: Case, complex_: bool = False):
    """optax on the float32-upcast tree, low-precision params stored back in their dtype."""
    params = _params(c, complex_)
    dtypes = jax.tree.map(lambda p: p.dtype, params)

    def apply(p, u):
        return jax.tree.map(
            lambda p, u, d: (p.astype(d) + u.astype(d)).astype(p.dtype), p, u, dtypes
        )

    grads = _grads(params, complex_)
    traj, _ = _run(c.ref(), upcast(params), upcast(grads), apply, c.value)
    return [jax.tree.map(lambda p, d: p.astype(d), p, dtypes) for p in traj]


@pytest.mark.parametrize("c", MATRIX)
def test_matches_optax_for_every_step(c):
    assert_trajectories_close(c, _params(c), _ours(c)[0], _reference(c))


COMPLEX = [p for p in MATRIX if p.values[0].complex]


def assert_complex_trajectories_close(c: Case, rtol: float) -> None:
    """Every step of ``c`` on the complex tree equals optax's to ``rtol`` (atol 1e-6)."""
    params = _params(c, True)
    ours, ref = _ours(c, True)[0], _reference(c, True)
    for k, (a, b) in enumerate(zip(ours, ref)):
        for path, x, y in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(a), jax.tree.leaves(b)
        ):
            np.testing.assert_allclose(
                x, y, rtol=rtol, atol=1e-6, err_msg=f"{c.id} step {k + 1} at {path[0]}"
            )


def assert_state_dtypes_and_structure_preserved(c: Case) -> None:
    """The state after the steps has ``init``'s structure and dtypes (no jit signature change)."""
    params = _params(c)
    state0 = gc.with_float32_state(c.ours()).init(params)
    _, state = _ours(c)
    dtypes = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    assert dtypes(state) == dtypes(state0)


@pytest.mark.parametrize("c", COMPLEX)
def test_matches_optax_on_complex_params(c):
    assert_complex_trajectories_close(c, rtol=1e-6)


@pytest.mark.parametrize("c", MATRIX)
def test_state_dtypes_and_structure_are_preserved(c):
    assert_state_dtypes_and_structure_preserved(c)
