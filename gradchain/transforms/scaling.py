"""Scaling by constants, learning rates and schedules."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    PyTree,
    ScalarOrSchedule,
    check_bool,
    check_number,
    count_of,
    hyperparam_value,
    state_class,
    stateless_call,
    transformation,
)
from gradchain.core.numerics import init_count, leaf_kernel, safe_increment

__all__ = [
    "ScaleByScheduleState",
    "ScaleState",
    "scale",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "scale_gradient",
]


@state_class(extras=("count", "hyperparams"))
class ScaleState:
    """optax's ``EmptyState`` by default. Extras: ``count``, updates done (kept when the factor is
    a schedule); ``hyperparams``, the factor(s) the latest update used."""

    count: jax.Array | None
    hyperparams: dict | None


@state_class(extras=("hyperparams",))
class ScaleByScheduleState:
    """``count``: updates done (optax's state of ``scale_by_schedule``); ``hyperparams``: the
    step size the latest update used (kept with :func:`with_live_hyperparams`)."""

    count: jax.Array
    hyperparams: dict | None


@leaf_kernel("negate")
def _scale_leaf(u, factor, negate=False):
    factor = jnp.asarray(factor).astype(u.dtype)
    # Negating after the cast is exact, so this is ``(-factor).astype(...)`` with one dispatch
    # less when un-jitted.
    return u * (-factor if negate else factor)


def _scaled(updates, factor, negate: bool = False):
    return jax.tree.map(lambda u: _scale_leaf(u, factor, negate=negate), updates)


@transformation("scale", hyperparams=("step_size",))
class Scale(GradientTransformation):
    """Multiplies the updates by a constant: ``u = s * g``.

    Args:
      step_size: the factor ``s`` (any real number; a schedule of the step count also works).

    Same as ``optax.scale``.
    """

    complex_params = True

    step_size: ScalarOrSchedule

    def __post_init__(self):
        check_number("step_size", self.step_size)

    def init(self, params):
        return ScaleState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        out = _scaled(updates, hp["step_size"])
        if stateless_call(state):
            return out, state
        return out, ScaleState(count=safe_increment(count_of(state)), hyperparams=hp)


scale = Scale


@transformation("scale_by_learning_rate", hyperparams=("learning_rate",))
class ScaleByLearningRate(GradientTransformation):
    """Scales by the (negated) learning rate: ``u_k = -eta_k * g_k``.

    The update number ``k`` (0-based) uses ``eta_k = learning_rate(k)`` when the learning rate is a
    schedule, so the first update uses ``learning_rate(0)``, as in optax and in PyTorch's
    ``optimizer.step(); scheduler.step()`` loop. The value used is kept in the state:
    ``tree_get(state, "learning_rate")``.

    Args:
      learning_rate: ``eta >= 0``, a float or a schedule.
      flip_sign: when True (default), multiply by ``-eta`` so that ``apply_updates`` descends.

    Same as ``optax.scale_by_learning_rate``. The learning rate is cast to the updates' dtype.
    """

    complex_params = True

    learning_rate: ScalarOrSchedule
    _: dataclasses.KW_ONLY
    flip_sign: bool = True

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_bool("flip_sign", self.flip_sign)

    def init(self, params):
        return ScaleState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        out = _scaled(updates, hp["learning_rate"], negate=self.flip_sign)
        if stateless_call(state):
            return out, state
        return out, ScaleState(count=safe_increment(count_of(state)), hyperparams=hp)


scale_by_learning_rate = ScaleByLearningRate


@transformation("scale_by_schedule")
class ScaleBySchedule(GradientTransformation):
    """Multiplies the updates by a schedule of the step count: ``u_k = f(k) * g_k``.

    ``k`` counts the updates done before this one, so the first update uses ``f(0)``. State:
    :class:`ScaleByScheduleState`, optax's; with :func:`with_live_hyperparams` it also keeps the
    value used, ``hyperparams["step_size"]``. Same as ``optax.scale_by_schedule``.
    """

    complex_params = True

    step_size_fn: Any

    def __post_init__(self):
        if not callable(self.step_size_fn):
            raise ValueError(f"step_size_fn must be callable, got {self.step_size_fn!r}")

    def init(self, params):
        zero = init_count()
        return ScaleByScheduleState(
            zero, hyperparams={"step_size": hyperparam_value(self.step_size_fn, zero)}
        )

    def update(self, updates, state, params=None, **extra_args):
        step_size = hyperparam_value(self.step_size_fn, state.count)
        return _scaled(updates, step_size), ScaleByScheduleState(
            safe_increment(state.count), hyperparams={"step_size": step_size}
        )


scale_by_schedule = ScaleBySchedule


@jax.custom_vjp
def _scaled_gradient(inputs, scale):
    del scale  # read by the backward pass only
    return inputs


def _scaled_gradient_fwd(inputs, scale):
    return inputs, scale


def _scaled_gradient_bwd(scale, cotangents):
    return jax.tree.map(lambda c: c * scale, cotangents), None


_scaled_gradient.defvjp(_scaled_gradient_fwd, _scaled_gradient_bwd)


def scale_gradient(inputs: PyTree, scale: float) -> PyTree:
    """``inputs`` unchanged in the forward pass; their gradient multiplied by ``scale`` in the
    backward pass (a pytree of arrays in, the same out).

    ``scale == 1`` returns ``inputs`` and ``scale == 0`` stops the gradient
    (``jax.lax.stop_gradient``), without a custom rule. Not a gradient transformation: it goes
    inside the loss, as optax's ``scale_gradient``, which it matches.
    """
    if not callable(scale) and not isinstance(scale, jax.core.Tracer):
        if scale == 1.0:
            return inputs
        if scale == 0.0:
            return jax.lax.stop_gradient(inputs)
    return _scaled_gradient(inputs, scale)
