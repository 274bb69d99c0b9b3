"""Every transformation and named optimizer of the foundation against its optax counterpart.

Each case of ``MATRIX`` runs gradchain and optax for ``STEPS`` jitted steps on the same
pseudo-gradients over ``crosscheck.mixed_params()`` (a scalar, a vector, a matrix, a 3-D tensor
and a bfloat16 matrix; the Adafactor cases add a square matrix and a 130 x 128 matrix, so that
both factored and unfactored leaves, and the tie-break between equal axes, are exercised) and
compares the parameters after every step.

Tolerance. A parameter after ``k`` steps is a sum of ``k`` updates, so its rounding error is
bounded relative to the size of what was summed, not to its own (possibly cancelled) value: the
difference at step ``k`` must be within ``rtol * S_k + atol``, with
``S_k = |p_0| + sum_{j<=k} |p_j - p_{j-1}|`` (elementwise, from the reference trajectory) and
``(rtol, atol)`` from ``crosscheck.tolerance`` (1e-6 for float32, 1e-2 for bfloat16). Cases
with ``b2 = 0.999`` use ``rtol = 2e-5``: gradchain keeps hyperparameters as float32 data and forms
``1 - b2`` from float32 ``b2``, optax from the Python double, and the two differ by 1.3e-5
relative (ALGORITHMS.md §14; gradchain's first Adam step is exactly ``sign(g)``, optax's is
0.9999934), half of which reaches the update through the square root.

bfloat16 leaves: these cases run gradchain with ``gc.with_float32_state`` (gradchain's option:
the moments of bfloat16 parameters in float32, since a bfloat16 second moment with b2 = 0.999
never decays and stalls; ALGORITHMS.md §14). The default, optax's bfloat16 state and arithmetic,
is compared with optax on bfloat16 parameters bit for bit in ``test_dtype_policy``. Here the
reference is optax run on the float32-upcast tree, with each bfloat16
parameter stored back in bfloat16 after every step the way ``gradchain.apply_updates`` stores it
(the update cast to bfloat16, then added in bfloat16). The bfloat16 leaves are compared in
bfloat16 with the bfloat16 tolerance; the float32 leaves with the float32 tolerance (1e-6).

The same matrix also checks that parameter and state dtypes survive the steps, that a second
call does not recompile, and that ``init`` from ``jax.ShapeDtypeStruct`` leaves equals ``init``
from arrays. Each case is run once (``_ours``) and the result shared by those tests.
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
from crosscheck import gradient_stream, mixed_params, tolerance, upcast

import gradchain as gc

STEPS = 20


def schedule(count):
    return 0.1 / (1.0 + 0.2 * count)


def relative_step(count):
    """Adafactor's relative step size min(1e-2, 1/sqrt(t)), t = count + 1."""
    return jnp.minimum(1e-2, 1 / jnp.sqrt(count + 1.0))


def capped_decay(step, rate):
    return jnp.minimum(0.9, 1.0 - (step + 1.0) ** (-rate))


def matrices_only(params):
    return jax.tree.map(lambda p: p.ndim >= 2, params)


MASK = {"scalar": False, "vector": True, "matrix": True, "tensor": False, "bf16": True}


ADAM_RTOL = 2e-5  # b2 = 0.999: see the module docstring


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    ours: Callable
    ref: Callable
    factorable: bool = False  # add a square and a 130 x 128 matrix to the params
    rtol: float | None = None  # float32 rtol, when the algebra needs another than 1e-6


def case(id, ours, ref, factorable=False, rtol=None):
    return pytest.param(Case(id, ours, ref, factorable, rtol), id=id)


MATRIX = [
    case("scale", lambda: gc.scale(0.5), lambda: optax.scale(0.5)),
    case(
        "scale_by_learning_rate-schedule",
        lambda: gc.scale_by_learning_rate(schedule),
        lambda: optax.scale_by_learning_rate(schedule),
    ),
    case(
        "scale_by_learning_rate-no_flip",
        lambda: gc.scale_by_learning_rate(0.1, flip_sign=False),
        lambda: optax.scale_by_learning_rate(0.1, flip_sign=False),
    ),
    case(
        "scale_by_schedule",
        lambda: gc.scale_by_schedule(schedule),
        lambda: optax.scale_by_schedule(schedule),
    ),
    case("trace-heavy_ball", lambda: gc.trace(0.9), lambda: optax.trace(0.9)),
    case(
        "trace-nesterov",
        lambda: gc.trace(0.9, nesterov=True),
        lambda: optax.trace(0.9, nesterov=True),
    ),
    case(
        "scale_by_adam", lambda: gc.scale_by_adam(), lambda: optax.scale_by_adam(), rtol=ADAM_RTOL
    ),
    case(
        "scale_by_adam-nesterov",
        lambda: gc.scale_by_adam(nesterov=True),
        lambda: optax.scale_by_adam(nesterov=True),
        rtol=ADAM_RTOL,
    ),
    case(
        "scale_by_adam-eps_root",
        lambda: gc.scale_by_adam(0.8, 0.99, 1e-6, eps_root=1e-8),
        lambda: optax.scale_by_adam(0.8, 0.99, 1e-6, eps_root=1e-8),
    ),
    case(
        "add_decayed_weights",
        lambda: gc.add_decayed_weights(0.1),
        lambda: optax.add_decayed_weights(0.1),
    ),
    case(
        "add_decayed_weights-mask_tree",
        lambda: gc.add_decayed_weights(0.1, MASK),
        lambda: optax.add_decayed_weights(0.1, MASK),
    ),
    case(
        "add_decoupled_weight_decay-schedule-mask_fn",
        lambda: gc.add_decoupled_weight_decay(schedule, matrices_only),
        lambda: optax.add_decayed_weights(schedule, matrices_only),
    ),
    case("add_l2_penalty", lambda: gc.add_l2_penalty(0.1), lambda: optax.add_decayed_weights(0.1)),
    case(
        "clip_by_global_norm-clipping",
        lambda: gc.clip_by_global_norm(1.0),
        lambda: optax.clip_by_global_norm(1.0),
    ),
    case(
        "clip_by_global_norm-passing",
        lambda: gc.clip_by_global_norm(1e3),
        lambda: optax.clip_by_global_norm(1e3),
    ),
    case("clip", lambda: gc.clip(0.5), lambda: optax.clip(0.5)),
    case(
        "clip_by_block_rms", lambda: gc.clip_by_block_rms(0.5), lambda: optax.clip_by_block_rms(0.5)
    ),
    case("scale_by_rms", lambda: gc.scale_by_rms(), lambda: optax.scale_by_rms()),
    case(
        "scale_by_rms-torch",
        lambda: gc.scale_by_rms(0.99, eps_in_sqrt=False),
        lambda: optax.scale_by_rms(0.99, eps_in_sqrt=False),
    ),
    case(
        "scale_by_rms-bias_correction-initial_scale",
        lambda: gc.scale_by_rms(0.95, 1e-6, 0.5, bias_correction=True),
        lambda: optax.scale_by_rms(0.95, 1e-6, 0.5, bias_correction=True),
    ),
    case("scale_by_stddev", lambda: gc.scale_by_stddev(), lambda: optax.scale_by_stddev()),
    case(
        "scale_by_stddev-eps_outside",
        lambda: gc.scale_by_stddev(eps_in_sqrt=False),
        lambda: optax.scale_by_stddev(eps_in_sqrt=False),
    ),
    # With bias correction and nu_0 = 0 the first centered variance is 0 - 0: pure rounding.
    # nu_0 = 1 keeps the comparison well conditioned.
    case(
        "scale_by_stddev-bias_correction",
        lambda: gc.scale_by_stddev(initial_scale=1.0, bias_correction=True),
        lambda: optax.scale_by_stddev(initial_scale=1.0, bias_correction=True),
    ),
    case("ema", lambda: gc.ema(0.9), lambda: optax.ema(0.9)),
    case("ema-no_debias", lambda: gc.ema(0.9, debias=False), lambda: optax.ema(0.9, debias=False)),
    case(
        "scale_by_factored_rms",
        lambda: gc.scale_by_factored_rms(),
        lambda: optax.scale_by_factored_rms(),
        factorable=True,
    ),
    case(
        "scale_by_factored_rms-small_factor_size",
        lambda: gc.scale_by_factored_rms(min_dim_size_to_factor=3),
        lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=3),
        factorable=True,
    ),
    case(
        "factored_second_moment-unfactored-decay_rate",
        lambda: gc.factored_second_moment(False, 0.5, epsilon=1e-20),
        lambda: optax.scale_by_factored_rms(False, 0.5, epsilon=1e-20),
        factorable=True,
    ),
    case(
        "factored_second_moment-decay_rate_fn",
        lambda: gc.factored_second_moment(min_dim_size_to_factor=3, decay_rate_fn=capped_decay),
        lambda: optax.scale_by_factored_rms(min_dim_size_to_factor=3, decay_rate_fn=capped_decay),
        factorable=True,
    ),
    case(
        "scale_by_param_block_rms",
        lambda: gc.scale_by_param_block_rms(),
        lambda: optax.scale_by_param_block_rms(),
    ),
    case(
        "scale_by_param_block_rms-floor",
        lambda: gc.scale_by_param_block_rms(2.0),
        lambda: optax.scale_by_param_block_rms(2.0),
    ),
    case("sgd", lambda: gc.sgd(0.1), lambda: optax.sgd(0.1)),
    case(
        "sgd-nesterov",
        lambda: gc.sgd(0.1, momentum=0.9, nesterov=True),
        lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    ),
    case(
        "sgd-momentum-schedule",
        lambda: gc.sgd(schedule, momentum=0.9),
        lambda: optax.sgd(schedule, momentum=0.9),
    ),
    case("adam", lambda: gc.adam(0.01), lambda: optax.adam(0.01), rtol=ADAM_RTOL),
    case(
        "adam-nesterov-eps_root",
        lambda: gc.adam(0.01, eps_root=1e-8, nesterov=True),
        lambda: optax.adam(0.01, eps_root=1e-8, nesterov=True),
        rtol=ADAM_RTOL,
    ),
    case(
        "adam-l2",
        lambda: gc.chain(gc.add_l2_penalty(0.1), gc.adam(0.01)),
        lambda: optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.01)),
        rtol=ADAM_RTOL,
    ),
    case(
        "adamw",
        lambda: gc.adamw(0.01, weight_decay=0.1),
        lambda: optax.adamw(0.01, weight_decay=0.1),
        rtol=ADAM_RTOL,
    ),
    case(
        "adamw-schedule-mask",
        lambda: gc.adamw(schedule, weight_decay=0.1, mask=matrices_only),
        lambda: optax.adamw(schedule, weight_decay=0.1, mask=matrices_only),
        rtol=ADAM_RTOL,
    ),
    case("rmsprop", lambda: gc.rmsprop(0.01), lambda: optax.rmsprop(0.01)),
    case(
        "rmsprop-torch",
        lambda: gc.rmsprop(0.01, decay=0.99, eps_in_sqrt=False),
        lambda: optax.rmsprop(0.01, decay=0.99, eps_in_sqrt=False),
    ),
    case(
        "rmsprop-centered-momentum",
        lambda: gc.rmsprop(0.01, centered=True, momentum=0.9),
        lambda: optax.rmsprop(0.01, centered=True, momentum=0.9),
    ),
    case(
        "rmsprop-nesterov-bias_correction",
        lambda: gc.rmsprop(schedule, momentum=0.9, nesterov=True, bias_correction=True),
        lambda: optax.rmsprop(schedule, momentum=0.9, nesterov=True, bias_correction=True),
    ),
    case("adafactor", lambda: gc.adafactor(0.01), lambda: optax.adafactor(0.01), factorable=True),
    case(
        "adafactor-small_factor_size",
        lambda: gc.adafactor(0.01, min_dim_size_to_factor=3),
        lambda: optax.adafactor(0.01, min_dim_size_to_factor=3),
        factorable=True,
    ),
    case(
        "adafactor-momentum-weight_decay",
        lambda: gc.adafactor(
            relative_step, 3, momentum=0.9, weight_decay_rate=0.01, weight_decay_mask=matrices_only
        ),
        lambda: optax.adafactor(
            relative_step, 3, momentum=0.9, weight_decay_rate=0.01, weight_decay_mask=matrices_only
        ),
        factorable=True,
    ),
    case(
        "adafactor-bare",
        lambda: gc.adafactor(
            None, 3, multiply_by_parameter_scale=False, clipping_threshold=None, factored=False
        ),
        lambda: optax.adafactor(
            None, 3, multiply_by_parameter_scale=False, clipping_threshold=None, factored=False
        ),
        factorable=True,
    ),
]


def _params(c: Case):
    params = mixed_params()
    if c.factorable:
        k1, k2 = jax.random.split(jax.random.PRNGKey(7))
        params["square"] = jax.random.normal(k1, (4, 4))
        params["big"] = jax.random.normal(k2, (130, 128))
    return params


_COMPILES = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: (
        _COMPILES.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
)


@dataclasses.dataclass
class Run:
    params: list  # the params after each step
    init_state: object
    final_state: object
    traces: int  # how many times the jitted step was traced
    compiles_after_first_step: int  # XLA compilations during steps 2, 3, ...


def _run(tx, params, grads, apply):
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(None)
        u, s = tx.update(g, s, p)
        return apply(p, u), s

    init_state = state = tx.init(params)
    trajectory = []
    for k, g in enumerate(grads):
        if k == 1:
            compiles = len(_COMPILES)
        params, state = step(params, state, g)
        trajectory.append(params)
    return Run(trajectory, init_state, state, len(traces), len(_COMPILES) - compiles)


@functools.cache
def _ours(c: Case) -> Run:
    params = _params(c)
    tx = gc.with_float32_state(c.ours())
    return _run(tx, params, gradient_stream(params, STEPS), gc.apply_updates)


def _reference(c: Case) -> list:
    """optax on the float32-upcast tree, low-precision params stored back in their dtype."""
    params = _params(c)
    dtypes = jax.tree.map(lambda p: p.dtype, params)

    def store(p, u, dtype):
        return (p.astype(dtype) + u.astype(dtype)).astype(p.dtype)

    def apply(p, u):
        return jax.tree.map(store, p, u, dtypes)

    run = _run(c.ref(), upcast(params), upcast(gradient_stream(params, STEPS)), apply)
    return [jax.tree.map(lambda p, d: p.astype(d), p, dtypes) for p in run.params]


def assert_trajectories_close(c: Case, params, ours, ref):
    """``|ours_k - ref_k| <= rtol * S_k + atol`` at every step, S_k as in the module docstring."""
    p0 = jax.tree_util.tree_flatten_with_path(params)[0]
    paths = [jax.tree_util.keystr(path) for path, _ in p0]
    ours_leaves = [jax.tree.leaves(t) for t in ours]
    ref_leaves = [jax.tree.leaves(t) for t in ref]
    for i, (path, (_, p)) in enumerate(zip(paths, p0)):
        rtol, atol = tolerance(p.dtype)
        if c.rtol is not None and p.dtype == jnp.float32:
            rtol = c.rtol
        previous = np.asarray(p, np.float64)
        size = np.abs(previous)
        for k in range(len(ours)):
            a = np.asarray(ours_leaves[k][i], np.float64)
            b = np.asarray(ref_leaves[k][i], np.float64)
            size = size + np.abs(b - previous)
            previous = b
            excess = np.abs(a - b) - (rtol * size + atol)
            if np.any(excess > 0):
                j = np.unravel_index(np.argmax(excess), np.shape(a))
                raise AssertionError(
                    f"{c.id}: params{path} after step {k + 1} differ at {j}: gradchain {a[j]!r}, "
                    f"optax {b[j]!r}, allowed {rtol:g} * {size[j]:.4g} + {atol:g}"
                )


@pytest.mark.parametrize("c", MATRIX)
def test_matches_optax_for_every_step(c):
    assert_trajectories_close(c, _params(c), _ours(c).params, _reference(c))


@pytest.mark.parametrize("c", MATRIX)
def test_param_and_state_dtypes_are_preserved(c):
    run = _ours(c)
    dtypes = lambda tree: jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)
    assert dtypes(run.params[-1]) == dtypes(_params(c))
    assert jax.tree.structure(run.final_state) == jax.tree.structure(run.init_state)
    assert dtypes(run.final_state) == dtypes(run.init_state)


@pytest.mark.parametrize("c", MATRIX)
def test_second_call_does_not_recompile(c):
    run = _ours(c)
    assert run.traces == 1
    assert run.compiles_after_first_step == 0


@pytest.mark.parametrize("c", MATRIX)
def test_init_from_shape_dtype_structs_equals_init_from_arrays(c):
    tx, params = c.ours(), _params(c)
    abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    a, b = tx.init(abstract), tx.init(params)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
        np.testing.assert_array_equal(x, y)


def test_the_matrix_covers_every_foundation_transformation_and_optimizer():
    foundation = {
        "scale",
        "scale_by_learning_rate",
        "scale_by_schedule",
        "trace",
        "scale_by_adam",
        "add_decayed_weights",
        "add_decoupled_weight_decay",
        "add_l2_penalty",
        "clip_by_global_norm",
        "clip",
        "clip_by_block_rms",
        "scale_by_rms",
        "scale_by_stddev",
        "ema",
        "scale_by_factored_rms",
        "factored_second_moment",
        "scale_by_param_block_rms",
        "sgd",
        "adam",
        "adamw",
        "rmsprop",
        "adafactor",
    }
    covered = {p.values[0].id.split("-")[0] for p in MATRIX}
    assert foundation <= covered, foundation - covered
