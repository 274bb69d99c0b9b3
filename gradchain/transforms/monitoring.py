"""Monitoring: measurements of the updates at a point of a chain, kept in the state.

``snapshot`` stores one measurement of the updates passing through it; ``monitor`` stores several,
each a function of the updates or a stateful measuring transformation such as
``measure_with_ema``. The updates pass through unchanged; the measurements are read back by name
with ``gradchain.tree.get(state, name)`` (or optax's ``optax.tree.get``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core import numerics
from gradchain.core.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    Stateless,
    _call_update,
    check_bool,
    check_dtype,
    check_number,
    require_values,
    state_class,
    transformation,
)
from gradchain.core.numerics import compute_dtype, init_count, safe_increment, state_dtype
from gradchain.transforms.momentum import EmaState

__all__ = [
    "MonitorState",
    "SnapshotState",
    "measure_with_ema",
    "monitor",
    "snapshot",
]


def _check_measure(name: str, measure) -> None:
    if not callable(measure):
        raise TypeError(f"{name} must be a function of the updates, got {measure!r}")


# ---------------------------------------------------------------------------------------------
# snapshot


@state_class
class SnapshotState:
    """``measurement``: ``{measure_name: measure(updates)}`` of the last update (of the params
    after ``init``)."""

    measurement: dict[str, Any]


@transformation("snapshot")
class Snapshot(GradientTransformation):
    r"""Stores ``measure(updates)`` in the state under ``measure_name``; the updates pass through.

    .. math:: u = g, \qquad s.\text{measurement}[\text{name}] = \text{measure}(g)

    Placed in a chain, it sees the updates as transformed by the transformations before it (the
    norm before clipping, say); read it back with ``gradchain.tree.get(state, measure_name)``.

    Args:
      measure_name: the key of the measurement in the state.
      measure: a function of the updates returning a pytree of arrays.

    ``init`` stores ``measure(params)``, so the state has the same structure before and after
    the first update (and needs the parameters' values, not only their shapes). Same as
    ``optax.snapshot``.
    """

    measure_name: str
    measure: Callable

    def __post_init__(self):
        if not isinstance(self.measure_name, str):
            raise TypeError(f"measure_name must be a str, got {self.measure_name!r}")
        _check_measure("measure", self.measure)

    def init(self, params):
        require_values(params, self.name)
        return SnapshotState({self.measure_name: self.measure(params)})

    def update(self, updates, state, params=None, **extra_args):
        return updates, SnapshotState({self.measure_name: self.measure(updates)})


snapshot = Snapshot


# ---------------------------------------------------------------------------------------------
# measure_with_ema


@transformation("measure_with_ema", hyperparams=("decay",))
class MeasureWithEma(GradientTransformation):
    r"""The exponential moving average of a measurement of the updates, for :func:`monitor`.

    With :math:`x_t = \text{measure}(g_t)` and :math:`t` the 1-based step,

    .. math:: e_t = \beta\, e_{t-1} + (1-\beta)\, x_t, \qquad
              \text{out}_t = e_t / (1-\beta^t) \text{ if debias else } e_t, \qquad e_0 = 0.

    Its output is the average (not the updates): it is a measuring transformation, meant as a
    value of :func:`monitor`'s ``measures``.

    Args:
      measure: a function of the updates returning a pytree of arrays (booleans count as 0/1).
      decay: :math:`\beta \in [0, 1)` (a float or a schedule).
      debias: divide by :math:`1-\beta^t` (default True).
      accumulator_dtype: dtype of the average. Default: the measurement's float dtype (the
        default float dtype for booleans and integers).

    The state is optax's, a chain state ``(EmptyState(), EmaState(count, ema))`` (the measure,
    then the average); under :func:`~gradchain.with_live_hyperparams` the ``EmaState`` also
    keeps ``hyperparams``. Same as
    ``optax.measure_with_ema``, except the accumulator's dtype: optax keeps the measurement's
    dtype at ``init`` (a boolean measurement starts as a boolean accumulator and becomes float32
    at the first update, so the state changes type), here it is a float from ``init`` on.
    """

    measure: Callable
    decay: Any
    debias: bool = True
    accumulator_dtype: Any = None

    def __post_init__(self):
        _check_measure("measure", self.measure)
        check_number("decay", self.decay, low=0.0, high=1.0, high_open=True)
        check_bool("debias", self.debias)
        check_dtype("accumulator_dtype", self.accumulator_dtype)

    def init(self, params):
        # Only the measurement's shape is needed, so shapes alone (ShapeDtypeStruct) will do.
        measurement = jax.eval_shape(self.measure, params)
        acc = jax.tree.map(
            lambda x: jnp.zeros(jnp.shape(x), state_dtype(x.dtype, self.accumulator_dtype)),
            measurement,
        )
        ema_state = EmaState(count=init_count(), ema=acc, hyperparams=self.init_hyperparams())
        return ChainState((EmptyState(), ema_state), ("stateless", "ema"))

    def laid_out(self, state):
        """The ``EmaState`` inside the chain state laid out as this piece's own state."""
        if isinstance(state, ChainState):
            return ChainState((state[0], super().laid_out(state[1])), state.names)
        return state

    def update(self, updates, state, params=None, **extra_args):
        ema_state = state[1]
        hp = self.current_hyperparams(ema_state)
        decay = hp["decay"]
        t = safe_increment(ema_state.count)
        divisor = numerics.bias_divisor(decay, t) if self.debias else None

        def step(x, e):
            dt = compute_dtype(jnp.promote_types(x.dtype, e.dtype))
            new_e = numerics.ema(e.astype(dt), x.astype(dt), decay.astype(dt))
            out = new_e if divisor is None else numerics.debias(new_e, divisor)
            return out, new_e.astype(e.dtype)

        measurement = self.measure(updates)
        leaves, treedef = jax.tree.flatten(measurement)
        pairs = [step(x, e) for x, e in zip(leaves, treedef.flatten_up_to(ema_state.ema))]
        out = treedef.unflatten([o for o, _ in pairs])
        acc = treedef.unflatten([e for _, e in pairs])
        new_state = EmaState(count=t, ema=acc, hyperparams=hp)
        return out, ChainState((state[0], new_state), state.names)


measure_with_ema = MeasureWithEma


# ---------------------------------------------------------------------------------------------
# monitor


@state_class
class MonitorState:
    """``measurements``: ``{name: value}`` of the last update; ``measure_states``: the states
    of the measuring transformations, in the order of ``measures``."""

    measurements: dict[str, Any]
    measure_states: tuple


def _is_transformation(x) -> bool:
    return hasattr(x, "init") and hasattr(x, "update")


@transformation("monitor")
class Monitor(GradientTransformation):
    r"""Stores several measurements of the updates in the state; the updates pass through.

    .. math:: u = g, \qquad (s.\text{measurements}[k], s.\text{measure\_states}[k]) =
              \text{measures}[k](g, s.\text{measure\_states}[k])

    Args:
      measures: ``{name: measure}``, each measure a function of the updates (a stateless
        measurement, as :func:`snapshot`'s) or a transformation whose ``update`` returns the
        measurement and its next state (:func:`measure_with_ema`). Extra ``update`` arguments
        are passed on to the transformations.

    Read a measurement with ``gradchain.tree.get(state, name)``. Same as ``optax.monitor``,
    except the state before the first update: optax's ``measurements`` is an empty dict there,
    so the state changes structure at the first step (a second compilation, and a carry that
    ``lax.scan`` rejects); here ``init`` holds zeros shaped like each measurement.
    """

    measures: Mapping[str, Any]

    def __post_init__(self):
        if not isinstance(self.measures, Mapping):
            raise TypeError(f"measures must be a dict of name to measure, got {self.measures!r}")
        for name, measure in self.measures.items():
            if not isinstance(name, str):
                raise TypeError(f"measures: names must be str, got {name!r}")
            if not (_is_transformation(measure) or callable(measure)):
                raise TypeError(
                    f"measures[{name!r}] must be a function of the updates or a "
                    f"transformation, got {measure!r}"
                )

    def _transforms(self) -> list[tuple[str, Any]]:
        return [
            (name, m if _is_transformation(m) else Stateless(lambda u, _, m=m: m(u)))
            for name, m in self.measures.items()
        ]

    def init(self, params):
        measurements, states = {}, []
        for name, tx in self._transforms():
            inner = tx.init(params)
            shape = jax.eval_shape(lambda p, s, tx=tx: tx.update(p, s, p)[0], params, inner)
            measurements[name] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape)
            states.append(inner)
        return MonitorState(measurements, tuple(states))

    def update(self, updates, state, params=None, **extra_args):
        measurements, states = {}, []
        for (name, tx), inner in zip(self._transforms(), state.measure_states):
            measurements[name], new_inner = _call_update(tx, updates, inner, params, extra_args)
            states.append(new_inner)
        return updates, MonitorState(measurements, tuple(states))


monitor = Monitor
