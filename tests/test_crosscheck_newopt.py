"""The optimizers and transformations of issue #18 against optax 0.2.8, step by step.

Each case runs gradchain and optax for ``STEPS`` jitted steps on the same pseudo-gradients over
``crosscheck.mixed_params()`` (a scalar, a vector, a matrix, a 3-D tensor and a bfloat16 matrix)
and compares the parameters after every step with the tolerance of
``test_crosscheck_foundation`` (``|ours - ref| <= rtol * S_k + atol``, ``S_k`` the summed size of
the reference's steps; 1e-6 for float32, 1e-2 for bfloat16 leaves against optax run on the
float32-upcast tree and stored back in bfloat16, because gradchain keeps the state of bfloat16
parameters in float32 where optax keeps bfloat16). Cases that optax runs on complex parameters
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
from test_crosscheck_foundation import assert_trajectories_close

import gradchain as gc

STEPS = 20


def schedule(count):
    return 0.1 / (1.0 + 0.2 * count)


def _loss(params):
    return sum(jnp.sum(jnp.abs(p.astype(jnp.float32)) ** 2) for p in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    ours: Callable
    ref: Callable
    rtol: float | None = None
    complex: bool = False  # optax runs it on complex parameters: compare on a complex tree too
    value: bool = False  # update takes value= (the loss)
    positive: bool = False  # params start non-negative (keep_params_nonnegative)


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
]


def _params(c: Case, complex_: bool = False):
    params = mixed_params(bf16=not complex_)
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
    return _run(c.ours(), params, _grads(params, complex_), gc.apply_updates, c.value)


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


@pytest.mark.parametrize("c", COMPLEX)
def test_matches_optax_on_complex_params(c):
    params = _params(c, True)
    ours, ref = _ours(c, True)[0], _reference(c, True)
    for k, (a, b) in enumerate(zip(ours, ref)):
        for path, x, y in zip(
            jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(a), jax.tree.leaves(b)
        ):
            np.testing.assert_allclose(
                x, y, rtol=1e-6, atol=1e-6, err_msg=f"{c.id} step {k + 1} at {path[0]}"
            )


@pytest.mark.parametrize("c", MATRIX)
def test_state_dtypes_and_structure_are_preserved(c):
    params = _params(c)
    state0 = c.ours().init(params)
    _, state = _ours(c)
    dtypes = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)
    assert jax.tree.structure(state) == jax.tree.structure(state0)
    assert dtypes(state) == dtypes(state0)
