"""DoG and DoWG: the step size is the distance travelled from the start over the gradients seen.

Both are parameter-free SGD: the learning rate that follows them is a multiplier (1 by
default). Both keep a copy of the initial parameters, so ``init`` needs their values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_dtype,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    identity,
    named_optimizer,
    require_params,
    require_values,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import compute_dtype, leaf_kernel
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "DoGState",
    "DoWGState",
    "ScaleByDistanceOverGradientsState",
    "dog",
    "dowg",
    "scale_by_distance_over_gradients",
    "scale_by_dog",
    "scale_by_dowg",
]

_INIT_STEPS = ("distance", "learning_rate", "heuristic")


def _real_dtype(dtype) -> jnp.dtype:
    """The real dtype of ``dtype``'s arithmetic: float32 or better, real for complex leaves."""
    return jnp.dtype(jnp.finfo(compute_dtype(dtype)).dtype)


def _scalar_dtype(params) -> jnp.dtype:
    """The dtype of the scalar statistics: that of the lowest-precision leaf (as optax),
    promoted to float32 so that bfloat16 parameters do not round the running sums."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    if not dtypes:
        return jnp.dtype(jnp.float32)
    lowest = min(dtypes, key=lambda d: jnp.finfo(d).bits)
    return _real_dtype(lowest)


@leaf_kernel("dtype")
def _leaf_sq_norm(x, dtype):
    x = x.astype(compute_dtype(x.dtype))
    return jnp.sum(jnp.square(x.real) + jnp.square(jnp.imag(x))).astype(dtype)


@leaf_kernel("dtype")
def _leaf_sq_distance(p, p0, dtype):
    dt = compute_dtype(p.dtype)
    return _leaf_sq_norm(p.astype(dt) - p0.astype(dt), dtype)


@leaf_kernel()
def _scale_leaf(g, lr):
    return (lr.astype(compute_dtype(g.dtype)) * g).astype(g.dtype)


def _sq_norm(tree, dtype) -> jax.Array:
    r""":math:`\sum |x|^2` over every entry of ``tree``, accumulated in ``dtype``."""
    total = jnp.zeros((), dtype)
    for x in jax.tree.leaves(tree):
        total = total + _leaf_sq_norm(x, dtype=jnp.dtype(dtype))
    return total


def _sq_distance(params, init_params, dtype) -> jax.Array:
    r""":math:`\|x - x_0\|^2`, each leaf's difference taken in its float32-or-better dtype."""
    total = jnp.zeros((), dtype)
    for p, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(init_params)):
        total = total + _leaf_sq_distance(p, p0, dtype=jnp.dtype(dtype))
    return total


def _scaled(updates, lr):
    return jax.tree.map(lambda g: _scale_leaf(g, lr), updates)


def _copy_initial(name):
    def copy(p):
        require_values(p, name)  # the distance travelled is measured from the initial values
        return jnp.array(p, copy=True)

    return copy


# ---------------------------------------------------------------------------------------------
# DoG


@state_class(extras=("hyperparams",))
class DoGState:
    """``is_init_step``: no update done yet; ``init_params``: :math:`x_0`; ``max_dist``: the
    largest distance from :math:`x_0` seen, :math:`\\bar r`; ``sum_sq_norm_grads``:
    :math:`G`; ``hyperparams``: as used last."""

    is_init_step: jax.Array
    init_params: Any
    max_dist: jax.Array
    sum_sq_norm_grads: jax.Array
    hyperparams: dict | None


def _check_init_step(init_step) -> None:
    if not (isinstance(init_step, (tuple, list)) and len(init_step) == 2):
        raise ValueError(f"init_step must be a pair (tag, value), got {init_step!r}")
    if init_step[0] not in _INIT_STEPS:
        raise ValueError(f"init_step[0] must be one of {_INIT_STEPS}, got {init_step[0]!r}")
    check_number("init_step[1]", init_step[1], low=0.0, low_open=True, allow_schedule=False)


@transformation("scale_by_dog", hyperparams=("eps",))
class ScaleByDoG(GradientTransformation):
    r"""Distance over Gradients: SGD whose step is the largest distance travelled from
    :math:`x_0` over the root of the summed squared gradient norms.

    .. math::
        \bar r_t = \max(\bar r_{t-1}, \|x_t - x_0\|), \qquad
        G_t = G_{t-1} + \|g_t\|^2, \qquad
        u_t = \frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t

    (norms over the whole tree; :math:`u_t` is an ascent direction, the learning rate that
    follows flips it). The start :math:`\bar r_0` comes from ``init_step = (tag, value)``:
    ``"distance"``: :math:`\bar r_0` = value; ``"heuristic"``: :math:`\bar r_0 = \text{value}
    \cdot (1 + \|x_0\|)`; ``"learning_rate"``: :math:`\bar r_0 = 0` and the first step is
    value :math:`\cdot\, g_1`.

    Args:
      init_step: the pair above, value > 0; optax's :func:`dog` default is
        ``("heuristic", 1e-6)`` (1e-4 is the paper's advice with batch normalization).
      eps: :math:`\epsilon \ge 0`, default 1e-8.

    The scalars are in the lowest-precision parameters' dtype promoted to float32 (optax keeps
    them in bfloat16 for bfloat16 parameters). Reference: Ivgi, Hinder & Carmon, "DoG is SGD's
    Best Friend: A Parameter-Free Dynamic Step Size Schedule" (ICML 2023); the authors
    recommend averaging the iterates. Same as optax's ``scale_by_dog`` (in
    ``optax.contrib._dog``).
    """

    init_step: tuple = ("heuristic", 1e-6)
    eps: ScalarOrSchedule = 1e-8

    complex_params = True

    def __post_init__(self):
        _check_init_step(self.init_step)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        init_params = jax.tree.map(_copy_initial(self.name), params)
        dtype = _scalar_dtype(params)
        tag, value = self.init_step
        if tag == "distance":
            r0 = jnp.asarray(value, dtype)
        elif tag == "heuristic":
            r0 = value * (1 + jnp.sqrt(_sq_norm(params, dtype)))
        else:
            r0 = jnp.zeros((), dtype)
        return DoGState(
            is_init_step=jnp.asarray(True),
            init_params=init_params,
            max_dist=r0.astype(dtype),
            sum_sq_norm_grads=jnp.zeros((), dtype),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.init_params, "updates", "state.init_params")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        dtype = state.max_dist.dtype
        dist = jnp.sqrt(_sq_distance(params, state.init_params, dtype))
        max_dist = jnp.maximum(state.max_dist, dist)
        sum_sq = state.sum_sq_norm_grads + _sq_norm(updates, dtype)
        lr = max_dist / jnp.sqrt(sum_sq + hp["eps"].astype(dtype))
        tag, value = self.init_step
        if tag == "learning_rate":
            lr = jnp.where(state.is_init_step, jnp.asarray(value, dtype), lr)
        return _scaled(updates, lr), DoGState(
            is_init_step=jnp.zeros_like(state.is_init_step),
            init_params=state.init_params,
            max_dist=max_dist,
            sum_sq_norm_grads=sum_sq,
            hyperparams=hp,
        )


scale_by_dog = ScaleByDoG


def _decayed_chain(weight_decay, mask, core: GradientTransformation, learning_rate) -> Parts:
    """optax's DoG/DoWG chain: the coupled decay (left out when None), the step, the rate."""
    return (
        identity() if weight_decay is None else add_decayed_weights(weight_decay, mask),
        core,
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def dog(
    learning_rate: ScalarOrSchedule = 1.0,
    init_step: tuple[str, float] = ("heuristic", 1e-6),
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn = None,
) -> Parts:
    r"""DoG: ``chain(add_decayed_weights(weight_decay, mask), scale_by_dog(init_step, eps),
    scale_by_learning_rate(learning_rate))``, the decay left out when ``weight_decay`` is None;
    see :func:`scale_by_dog`. The decay is a coupled L2 penalty (it enters :math:`G`). Same
    arguments and defaults as ``optax.contrib.dog``.
    """
    return _decayed_chain(weight_decay, mask, scale_by_dog(init_step, eps), learning_rate)


# ---------------------------------------------------------------------------------------------
# DoWG


@state_class(extras=("hyperparams",))
class DoWGState:
    """``init_params``: :math:`x_0`; ``weighted_sq_norm_grads``: :math:`v`;
    ``estim_sq_dist``: :math:`\\bar r^2`; ``hyperparams``: as used last."""

    init_params: Any
    weighted_sq_norm_grads: jax.Array
    estim_sq_dist: jax.Array
    hyperparams: dict | None


@transformation("scale_by_dowg", hyperparams=("eps",))
class ScaleByDoWG(GradientTransformation):
    r"""Distance over Weighted Gradients: DoG with gradient norms weighted by the squared
    distance estimate of their step.

    .. math::
        \bar r_t^2 = \max(\bar r_{t-1}^2, \|x_t - x_0\|^2), \qquad
        v_t = v_{t-1} + \bar r_t^2 \|g_t\|^2, \qquad
        u_t = \frac{\bar r_t^2}{\sqrt{v_t} + \epsilon}\, g_t

    with :math:`\bar r_0^2` = ``init_estim_sq_dist`` (``eps`` when None), :math:`v_0 = 0`.

    Args:
      init_estim_sq_dist: :math:`\bar r_0^2 > 0` or None (default, then ``eps``), a plain
        number.
      eps: :math:`\epsilon > 0`, default 1e-4.

    Scalars as in :func:`scale_by_dog`. Reference: Khaled, Mishchenko & Jin, "DoWG Unleashed:
    An Efficient Universal Parameter-Free Gradient Descent Method" (NeurIPS 2023), Algorithm
    1, whose :math:`\epsilon`-free step is :math:`\bar r_t^2/\sqrt{v_t}`. Same as optax's
    ``scale_by_dowg`` (in ``optax.contrib._dog``).
    """

    init_estim_sq_dist: float | None = None
    eps: ScalarOrSchedule = 1e-4

    complex_params = True

    def __post_init__(self):
        check_number(
            "init_estim_sq_dist",
            self.init_estim_sq_dist,
            low=0.0,
            low_open=True,
            allow_schedule=False,
            allow_none=True,
        )
        check_number("eps", self.eps, low=0.0, low_open=True)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        init_params = jax.tree.map(_copy_initial(self.name), params)
        dtype = _scalar_dtype(params)
        hp = self.init_hyperparams()
        r0 = hp["eps"] if self.init_estim_sq_dist is None else self.init_estim_sq_dist
        return DoWGState(
            init_params=init_params,
            weighted_sq_norm_grads=jnp.zeros((), dtype),
            estim_sq_dist=jnp.asarray(r0, dtype),
            hyperparams=hp,
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.init_params, "updates", "state.init_params")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        dtype = state.estim_sq_dist.dtype
        sq_dist = jnp.maximum(state.estim_sq_dist, _sq_distance(params, state.init_params, dtype))
        weighted = sq_dist * _sq_norm(updates, dtype) + state.weighted_sq_norm_grads
        lr = sq_dist / (jnp.sqrt(weighted) + hp["eps"].astype(dtype))
        return _scaled(updates, lr), DoWGState(
            init_params=state.init_params,
            weighted_sq_norm_grads=weighted,
            estim_sq_dist=sq_dist,
            hyperparams=hp,
        )


scale_by_dowg = ScaleByDoWG


@named_optimizer
def dowg(
    learning_rate: ScalarOrSchedule = 1.0,
    init_estim_sq_dist: float | None = None,
    eps: ScalarOrSchedule = 1e-4,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn = None,
) -> Parts:
    r"""DoWG: ``chain(add_decayed_weights(weight_decay, mask), scale_by_dowg(
    init_estim_sq_dist, eps), scale_by_learning_rate(learning_rate))``, the decay left out when
    ``weight_decay`` is None; see :func:`scale_by_dowg`. Same arguments and defaults as
    ``optax.contrib.dowg``.
    """
    return _decayed_chain(weight_decay, mask, scale_by_dowg(init_estim_sq_dist, eps), learning_rate)


# ---------------------------------------------------------------------------------------------
# Layer-wise DoG


@state_class(extras=("hyperparams",))
class ScaleByDistanceOverGradientsState:
    """Per leaf: ``max_dist``: :math:`\\bar r` (a scalar); ``grad_sum_of_squares``: :math:`G`
    (shape ``(1,)``, as optax); ``init_params``: :math:`x_0` in ``param_dtype``;
    ``hyperparams``: as used last."""

    max_dist: Any
    grad_sum_of_squares: Any
    init_params: Any
    hyperparams: dict | None


@transformation("scale_by_distance_over_gradients", hyperparams=("reps_rel", "eps", "global_scale"))
class ScaleByDistanceOverGradients(GradientTransformation):
    r"""Layer-wise DoG (LDoG): :func:`scale_by_dog` with its statistics per leaf.

    For each leaf :math:`x` with gradient :math:`g`:

    .. math::
        \bar r_0 = r_{rel}\,(1 + \|x_0\|), \qquad
        \bar r_t = \max(\bar r_{t-1}, \|x_t - x_0\|), \qquad
        G_t = G_{t-1} + \|g_t\|^2, \\
        u_t = s\,\frac{\bar r_t}{\sqrt{G_t + \epsilon}}\, g_t.

    Args:
      reps_rel: :math:`r_{rel} > 0`, default 1e-6 (the paper's advice is 1e-4 with batch
        normalization); read at ``init`` only.
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      param_dtype: the dtype :math:`x_0` is stored in, default float32.
      global_scale: :math:`s`, default 1 (-1 makes the update a descent step).

    Reference: Ivgi, Hinder & Carmon (ICML 2023), Section 4 (LDoG). Same as
    ``optax.scale_by_distance_over_gradients`` except that each update keeps its leaf's shape
    and dtype: optax's multiplies by a ``(1,)``-shaped float32 step, which turns a scalar leaf's
    update into shape ``(1,)`` and a bfloat16 leaf's into float32.
    """

    reps_rel: ScalarOrSchedule = 1e-6
    eps: ScalarOrSchedule = 1e-8
    param_dtype: Any = jnp.float32
    global_scale: ScalarOrSchedule = 1.0

    complex_params = True

    def __post_init__(self):
        check_number("reps_rel", self.reps_rel, low=0.0, low_open=True)
        check_number("eps", self.eps, low=0.0)
        check_dtype("param_dtype", self.param_dtype)
        check_number("global_scale", self.global_scale)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        hp = self.init_hyperparams()
        copy = _copy_initial(self.name)

        def r0(x):
            dt = _real_dtype(x.dtype)
            return (hp["reps_rel"].astype(dt) * (1 + jnp.sqrt(_sq_norm(copy(x), dt)))).astype(dt)

        def x0(x):
            dt = jnp.dtype(self.param_dtype)
            if jnp.iscomplexobj(x):
                dt = jnp.promote_types(dt, jnp.complex64)
            return jnp.asarray(copy(x), dt)

        return ScaleByDistanceOverGradientsState(
            max_dist=jax.tree.map(r0, params),
            grad_sum_of_squares=jax.tree.map(
                lambda x: jnp.zeros((1,), _real_dtype(x.dtype)), params
            ),
            init_params=jax.tree.map(x0, params),
            hyperparams=hp,
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.init_params, "updates", "state.init_params")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)

        def leaf(g, x, d, sos, x0):
            dt = d.dtype
            d = jnp.maximum(d, jnp.sqrt(_sq_distance(x, x0, dt)))
            sos = sos + _sq_norm(g, dt)
            eta = hp["global_scale"].astype(dt) * d / jnp.sqrt(sos[0] + hp["eps"].astype(dt))
            return _scaled(g, eta), d, sos

        out, max_dist, sos = tree_map_multi(
            leaf,
            3,
            updates,
            params,
            state.max_dist,
            state.grad_sum_of_squares,
            state.init_params,
        )
        return out, dataclasses.replace(
            state, max_dist=max_dist, grad_sum_of_squares=sos, hyperparams=hp
        )


scale_by_distance_over_gradients = ScaleByDistanceOverGradients
