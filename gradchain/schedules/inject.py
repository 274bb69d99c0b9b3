"""Hyperparameters held in the optimizer state: ``inject_hyperparams``, as in optax.

``inject_hyperparams(adam)(learning_rate=1e-3)`` is a transformation whose state keeps every
numeric argument of ``adam`` in ``state.hyperparams``, a dict that can be read for logging and
written between (jitted) steps; an argument given as a schedule is evaluated at each step. The
inner optimizer is rebuilt from those values at every update. gradchain's own transformations
already keep live hyperparameters in their states; this wrapper is optax's way of getting the
same, with optax's state layout (:class:`InjectStatefulHyperparamsState`), and works around
gradchain and optax factories alike.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    OptState,
    _call_update,
    check_dtype,
    transformation,
)
from gradchain.core.numerics import safe_increment

__all__ = [
    "InjectHyperparamsState",
    "InjectStatefulHyperparamsState",
    "StatefulSchedule",
    "WrappedSchedule",
    "WrappedScheduleState",
    "inject_hyperparams",
    "inject_stateful_hyperparams",
]


class InjectHyperparamsState(NamedTuple):
    """optax's older state of an injected transformation (kept for code that names it)."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name shadows tuple.count
    hyperparams: dict[str, Any]
    inner_state: OptState


class InjectStatefulHyperparamsState(NamedTuple):
    """The state of an injected transformation, as optax's.

    Fields: ``count`` (updates done), ``hyperparams`` (name to the value the next update uses,
    writable), ``hyperparams_states`` (the state of each scheduled hyperparameter) and
    ``inner_state`` (the wrapped transformation's state).
    """

    count: jax.Array  # type: ignore[assignment]  # optax's field name shadows tuple.count
    hyperparams: dict[str, Any]
    hyperparams_states: dict[str, Any]
    inner_state: OptState


@runtime_checkable
class StatefulSchedule(Protocol):
    """A schedule with a state: ``init() -> state``, ``update(state, **extra_args) -> state``,
    ``__call__(state, **extra_args) -> value`` (optax's protocol of the same name)."""

    def init(self) -> Any: ...

    def update(self, state: Any, **extra_args) -> Any: ...

    def __call__(self, state: Any, **extra_args) -> jax.typing.ArrayLike: ...


class WrappedScheduleState(NamedTuple):
    """The state of a :class:`WrappedSchedule`: the number of updates done."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name shadows tuple.count


class WrappedSchedule:
    """A schedule of the step count seen as a :class:`StatefulSchedule`."""

    def __init__(self, schedule_fn: Callable[[jax.Array], jax.typing.ArrayLike]):
        self.schedule_fn = schedule_fn

    def init(self) -> WrappedScheduleState:
        return WrappedScheduleState(count=jnp.zeros([], jnp.int32))

    def update(self, state: WrappedScheduleState, **extra_args) -> WrappedScheduleState:
        del extra_args
        return WrappedScheduleState(count=safe_increment(state.count))

    def __call__(self, state: WrappedScheduleState, **extra_args) -> jax.typing.ArrayLike:
        del extra_args
        return self.schedule_fn(state.count)

    def __repr__(self) -> str:
        return f"WrappedSchedule({self.schedule_fn!r})"


def _convert_floats(x, dtype):
    """``x`` cast to ``dtype`` when it is a float without a dtype of its own (a Python float or
    a weakly typed array); anything else unchanged, as optax does."""
    if isinstance(x, jax.Array) and not getattr(x, "weak_type", False):
        return x
    current = x.dtype if hasattr(x, "dtype") else type(x)
    if jax.dtypes.issubdtype(current, jnp.floating):
        return jnp.asarray(x, dtype=dtype)
    return x


def _highest_dtype(tree):
    """The dtype every leaf of ``tree`` promotes to without loss (optax's ``'highest'``)."""
    dtypes = [jnp.asarray(x).dtype for x in jax.tree.leaves(tree)]
    if not dtypes:
        return jnp.asarray([]).dtype
    highest = dtypes[0]
    for d in dtypes[1:]:
        promoted = jnp.promote_types(highest, d)
        if promoted not in (highest, d):
            raise ValueError(f"the parameters' dtypes {highest} and {d} have no highest one")
        highest = promoted
    return highest


@transformation("inject_hyperparams")
class InjectHyperparams(GradientTransformation):
    """The transformation ``inner_factory(**arguments)``, with its numeric arguments in the state.

    Update rule: at each step the inner transformation is rebuilt from ``state.hyperparams``
    (scheduled arguments evaluated at their schedule's state first) and its update applied to
    ``state.inner_state``. Arguments that are bools, named in ``static_args`` or not numbers stay
    fixed. State: :class:`InjectStatefulHyperparamsState`.

    Same as optax's ``inject_hyperparams``; differences: none known.
    """

    inner_factory: Callable[..., GradientTransformation]
    arguments: tuple[tuple[str, Any], ...]
    static_args: frozenset
    hyperparam_dtype: Any = None

    def __post_init__(self):
        check_dtype("hyperparam_dtype", self.hyperparam_dtype)

    def _split(self):
        scheduled, numeric, other = {}, {}, {}
        for name, value in self.arguments:
            if name in self.static_args or isinstance(value, bool):
                other[name] = value
            elif isinstance(value, StatefulSchedule):
                scheduled[name] = value
            elif callable(value):
                scheduled[name] = WrappedSchedule(value)
            elif isinstance(value, (int, float, jax.Array, np.ndarray)):
                numeric[name] = value
            else:
                other[name] = value
        return scheduled, numeric, other

    def _dtype(self, params):
        return (
            self.hyperparam_dtype if self.hyperparam_dtype is not None else _highest_dtype(params)
        )

    def init(self, params):
        scheduled, numeric, other = self._split()
        dtype = self._dtype(params)
        hyperparams = {k: jnp.asarray(_convert_floats(v, dtype)) for k, v in numeric.items()}
        schedule_states = {k: f.init() for k, f in scheduled.items()}
        hyperparams.update(
            {k: _convert_floats(f(schedule_states[k]), dtype) for k, f in scheduled.items()}
        )
        return InjectStatefulHyperparamsState(
            count=jnp.zeros([], jnp.int32),
            hyperparams=hyperparams,
            hyperparams_states=schedule_states,
            inner_state=self.inner_factory(**other, **hyperparams).init(params),
        )

    def update(self, updates, state, params=None, **extra_args):
        scheduled, _, other = self._split()
        dtype = self._dtype(params)
        hyperparams = {k: _convert_floats(v, dtype) for k, v in state.hyperparams.items()}
        hyperparams.update(
            {
                k: _convert_floats(f(state.hyperparams_states[k], **extra_args), dtype)
                for k, f in scheduled.items()
            }
        )
        schedule_states = {
            k: f.update(state.hyperparams_states[k], **extra_args) for k, f in scheduled.items()
        }
        inner = self.inner_factory(**other, **hyperparams)
        updates, inner_state = _call_update(inner, updates, state.inner_state, params, extra_args)
        return updates, InjectStatefulHyperparamsState(
            count=safe_increment(state.count),
            hyperparams=hyperparams,
            hyperparams_states=schedule_states,
            inner_state=inner_state,
        )


def inject_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: jnp.dtype | None = None,
) -> Callable[..., InjectHyperparams]:
    """Wraps ``inner_factory`` so that its numeric arguments live in the state.

    ``inject_hyperparams(gradchain.adam)(learning_rate=sched)`` takes the arguments of
    ``inner_factory``, any numeric one possibly a schedule (a function of the step count) or a
    :class:`StatefulSchedule`, and returns a transformation whose state's ``hyperparams`` dict
    holds the values the next update uses: read it to log the learning rate, write it between
    steps to change a value without recompiling (a scheduled value is recomputed each step).

    Args:
      inner_factory: a function returning a transformation (a gradchain or optax one).
      static_args: names of arguments that are callables but not schedules.
      hyperparam_dtype: the dtype float hyperparameters are kept in; by default the parameters'
        highest dtype.

    Same as ``optax.inject_hyperparams`` (arguments, state layout, dtype rules).
    """
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not static.issubset(signature.parameters):
        raise ValueError(
            "`static_args` must specify a subset of `inner_factory`'s parameters. "
            f"Given `static_args`: {static}. `inner_factory` parameters: "
            f"{set(signature.parameters.keys())}"
        )

    def wrapped(*args, **kwargs) -> InjectHyperparams:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return InjectHyperparams(
            inner_factory,
            tuple(bound.arguments.items()),
            frozenset(static),
            hyperparam_dtype,
        )

    wrapped.__name__ = getattr(inner_factory, "__name__", "inject_hyperparams")
    wrapped.__qualname__ = getattr(inner_factory, "__qualname__", wrapped.__name__)
    wrapped.__doc__ = getattr(inner_factory, "__doc__", None)
    wrapped.__wrapped__ = inner_factory  # type: ignore[attr-defined]
    return wrapped


def inject_stateful_hyperparams(
    inner_factory: Callable[..., GradientTransformation],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: jnp.dtype | None = None,
) -> Callable[..., InjectHyperparams]:
    """:func:`inject_hyperparams` under optax's older name (it accepts stateful schedules too)."""
    return inject_hyperparams(inner_factory, static_args, hyperparam_dtype)
