r"""Schedules: hyperparameter values as pure functions of the integer step count.

A schedule maps the 0-based update count ``c`` to a value; update number ``c`` of a transformation
given a schedule uses ``schedule(c)`` (see ``base``: every float hyperparameter may be one). As in
optax, the first update uses ``schedule(0)``; in PyTorch terms, the value after ``c`` calls of
``scheduler.step()`` in the loop ``optimizer.step(); scheduler.step()``.

Every gradchain schedule is a small frozen object:

* it is called with an integer step, a Python int or a traced int32 inside ``jax.jit``, and returns
  a scalar of the default float type (float32; float64 with x64). Step offsets are formed in the
  integers, where they are exact and cannot overflow, and turned into floats before any other
  arithmetic, so a schedule stays finite and correct up to the int32 counter's limit 2^31 - 1.
  Steps before 0 count as step 0;
* it prints its arguments (``warmup_cosine_decay_schedule(init_value=0.0, peak_value=0.001, ...)``),
  compares equal to a schedule built with the same arguments, and validates its arguments at
  construction with a ``ValueError`` that names the argument;
* it is elementwise: ``schedule(jnp.arange(1000))`` gives the whole curve, and
  ``schedule.values(1000)`` the same as a NumPy array, for plotting.

Names, argument names, order and defaults follow optax (``import gradchain as optax`` works).
Where PyTorch's schedulers give other values (a cosine that keeps oscillating after its end,
one-cycle knots one step earlier; ALGORITHMS.md §13.2, §15 rows 23-24), the optax value is the
default and ``convention="pytorch"`` gives PyTorch's.

Also here: :class:`ReduceOnPlateau`, gradchain's variant of reduce-on-plateau whose
hyperparameters can be live (:func:`gradchain.with_live_hyperparams`); ``gradchain.reduce_on_plateau`` (optax's rule, in :mod:`gradchain.contrib`)
returns it for ``rule="gradchain"``.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar, dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    FieldData,
    GradientTransformation,
    MissingArgumentError,
    ScalarOrSchedule,
    _short_repr,
    check_bool,
    check_number,
    state_class,
    transformation,
)
from gradchain.core.numerics import init_count, safe_increment

_T = TypeVar("_T")

__all__ = [
    "Schedule",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "cosine_warm_restarts_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_onecycle_schedule",
    "linear_schedule",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polynomial_schedule",
    "sgdr_schedule",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "warmup_inverse_sqrt_schedule",
    "warmup_linear_decay_schedule",
    "warmup_stable_decay_schedule",
]

_CONVENTIONS = ("optax", "pytorch")


# ---------------------------------------------------------------------------------------------
# Step arithmetic: exact in the integers, float afterwards


def _float_dtype():
    return jnp.result_type(float)


def _as_count(count) -> jax.Array:
    """The step as an array clamped at 0: signed integers stay integers (exact comparisons),
    anything else becomes the default float type."""
    c = jnp.asarray(count)
    if c.dtype == jnp.bool_ or not jnp.issubdtype(c.dtype, jnp.number):
        raise TypeError(f"a schedule takes an integer step count, got dtype {c.dtype}")
    if not jnp.issubdtype(c.dtype, jnp.signedinteger):
        c = c.astype(jnp.promote_types(c.dtype, _float_dtype()))
    return jnp.maximum(c, 0)


def _is_int(c) -> bool:
    return jnp.issubdtype(c.dtype, jnp.integer)


def _fits(c, b) -> bool:
    return not _is_int(c) or b <= jnp.iinfo(c.dtype).max


def _reached(c, b) -> jax.Array:
    """``c >= b`` for a Python number ``b``, without converting ``b`` to an int32 it overflows."""
    if not _fits(c, b):
        return jnp.zeros(c.shape, jnp.bool_)
    return c >= b


def _since(c, b) -> jax.Array:
    """``c - b`` as a float. For integer steps the difference is formed exactly in the integers
    first (``0 <= c, b <= max`` cannot overflow); for float ``b`` (PyTorch's one-cycle knots) in
    floats."""
    f = _float_dtype()
    if _is_int(c) and isinstance(b, numbers.Integral) and _fits(c, b):
        return (c - b).astype(f)
    return c.astype(f) - b


def _since_mod(c, b, period: int) -> jax.Array:
    """``(c - b) mod period`` as a float, reduced exactly in the integers for integer steps, so
    that a periodic schedule keeps its phase near step 2^31 (a float32 step has lost it)."""
    if _is_int(c) and _fits(c, b) and _fits(c, period):
        return jnp.remainder(c - b, period).astype(_float_dtype())
    return jnp.remainder(_since(c, b), period)


def _shift(c, b) -> jax.Array:
    """The step a joined schedule sees, ``c - b``, in the dtype of ``c`` (as optax passes it)."""
    if not _fits(c, b):
        return c  # never used: an int32 step cannot reach this boundary
    return c - b


def _linear_ramp(c, init, end, steps):
    """``init -> end`` linearly over ``steps`` steps, then ``end`` (optax's linear_schedule)."""
    if steps == 0:
        return jnp.asarray(end, _float_dtype())
    k = jnp.clip(_since(c, 0), 0, steps)
    return (init - end) * (1 - k / steps) + end


def _exponential(k, init, steps, rate, staircase, end):
    """optax's exponential decay at ``k`` steps after its start (``init`` while ``k <= 0``)."""
    p = k / steps
    if staircase:
        p = jnp.floor(p)
    value = jnp.where(k <= 0, init, init * jnp.power(rate, p))
    if end is not None:
        value = (jnp.maximum if rate < 1 else jnp.minimum)(value, end)
    return value


def _half_cosine(x):
    """``(1 + cos(pi x)) / 2``: 1 at x = 0, 0 at x = 1."""
    return 0.5 * (1 + jnp.cos(jnp.pi * x))


def _interpolate(c, knots, values, kind):
    """Interpolates ``values`` between ``knots`` (linearly or along a half cosine), then holds
    the last value.

    The segment from knot j to j+1 has ``pct = (c - k_j) / (k_{j+1} - k_j)``; for integer knots
    (optax's) the length is at least 1, which skips an empty segment as optax does. PyTorch's
    one-cycle knots are floats that always increase.
    """
    out = values[-1]
    for j in reversed(range(len(knots) - 1)):
        start, end = values[j], values[j + 1]
        length = knots[j + 1] - knots[j]
        pct = _since(c, knots[j]) / (max(length, 1) if isinstance(length, int) else length)
        if kind == "linear":
            segment = (end - start) * pct + start
        else:
            segment = end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1)
        out = jnp.where(_reached(c, knots[j + 1]), out, segment)
    return out


# ---------------------------------------------------------------------------------------------
# Argument checks (construction time)


def _check_steps(name: str, value, *, low: int | None = 0) -> int:
    """A number of steps as a Python int: integers and integral floats (``1e5``) are accepted;
    ``low=None`` accepts any integer."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer number of steps, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        if not (isinstance(value, numbers.Real) and float(value).is_integer()):
            raise ValueError(f"{name} must be an integer number of steps, got {value!r}") from None
        v = int(float(value))
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return v


def _check_transition(schedule) -> None:
    """``transition_steps`` and ``transition_begin`` of a polynomial or linear schedule, any
    integers: optax makes a non-positive length a constant schedule and a negative start 0."""
    _set(
        schedule,
        "transition_steps",
        _check_steps("transition_steps", schedule.transition_steps, low=None),
    )
    begin = _check_steps("transition_begin", schedule.transition_begin, low=None)
    _set(schedule, "transition_begin", max(begin, 0))


def _check_value(name: str, value, **bounds) -> None:
    check_number(name, value, allow_schedule=False, **bounds)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _check_boundaries(name: str, boundaries_and_scales) -> dict[int, float] | None:
    """``{step: scale}`` with non-negative integer steps and scales, sorted by step."""
    if boundaries_and_scales is None:
        return None
    if not isinstance(boundaries_and_scales, Mapping):
        raise ValueError(f"{name} must be a dict {{step: scale}}, got {boundaries_and_scales!r}")
    out = {}
    for b, s in boundaries_and_scales.items():
        step = _check_steps(f"{name} key", b)
        _check_value(f"{name}[{b!r}]", s, low=0.0)
        out[step] = s
    return dict(sorted(out.items()))


def _set(obj, name, value):
    object.__setattr__(obj, name, value)


def _check_warmup(schedule, *, total_length: bool = False) -> None:
    """The arguments of the warmup schedules: ``init_value``, ``peak_value``, ``warmup_steps``
    and, with ``total_length``, ``decay_steps`` counted from step 0 (so greater than the warmup)."""
    _check_value("init_value", schedule.init_value)
    _check_value("peak_value", schedule.peak_value)
    _set(schedule, "warmup_steps", _check_steps("warmup_steps", schedule.warmup_steps))
    if not total_length:
        return
    _set(schedule, "decay_steps", _check_steps("decay_steps", schedule.decay_steps, low=1))
    if schedule.decay_steps <= schedule.warmup_steps:
        raise ValueError(
            f"decay_steps is the total length, warmup included, and must be greater than "
            f"warmup_steps; got decay_steps={schedule.decay_steps}, "
            f"warmup_steps={schedule.warmup_steps}"
        )


def _after_warmup(schedule, c, after):
    """``after`` from step ``warmup_steps`` on; before it, the linear ramp from ``init_value`` to
    ``peak_value`` (optax's ``join_schedules([linear_schedule(...), after], [warmup_steps])``)."""
    w = schedule.warmup_steps
    warm = _linear_ramp(c, schedule.init_value, schedule.peak_value, w)
    return jnp.where(_reached(c, w), after, warm)


# ---------------------------------------------------------------------------------------------
# The schedule base class


class Schedule(FieldData):
    """Base class of gradchain schedules: frozen dataclasses called with a step count.

    Subclasses implement ``_at(c)`` for ``c`` an array of non-negative steps (a signed integer
    array, or a float array for float steps) and return values of the same shape.
    """

    name: ClassVar[str] = "schedule"

    def _at(self, c: jax.Array) -> jax.Array:
        raise NotImplementedError

    def __call__(self, count) -> jax.Array:
        c = _as_count(count)
        out = jnp.asarray(self._at(c), _float_dtype())
        return out if out.shape == c.shape else jnp.broadcast_to(out, c.shape)

    def values(self, steps) -> np.ndarray:
        """The schedule at each of ``steps``, as a NumPy array, for plotting.

        ``steps`` is a number ``n`` (steps ``0 .. n-1``) or an array of steps::

            plt.plot(schedule.values(10_000))
        """
        if isinstance(steps, numbers.Integral):
            steps = np.arange(int(steps))
        return np.asarray(jax.jit(jax.vmap(self))(jnp.asarray(steps)))

    # -- inspectable data -------------------------------------------------------------------

    def _shows(self, field: dataclasses.Field) -> bool:
        return field.compare

    def _value_repr(self, value: Any) -> str:
        return _arg_repr(value)


def _arg_repr(v) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_arg_repr(x) for x in v) + "]"
    return _short_repr(v)


@dataclass_transform(frozen_default=True, eq_default=False)
def schedule_class(name: str) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a frozen, comparable dataclass schedule that prints as ``name(...)``."""

    def wrap(cls: type[_T]) -> type[_T]:
        cls.name = name  # type: ignore[attr-defined]
        return dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)

    return wrap


def _derived():
    """A dataclass field computed in ``__post_init__``: not an argument, not printed or compared."""
    return dataclasses.field(init=False, repr=False, compare=False, default=None)


# ---------------------------------------------------------------------------------------------
# Constant, polynomial, exponential, piecewise constant


@schedule_class("constant_schedule")
class ConstantSchedule(Schedule):
    """The same value at every step: :math:`f(c) = v`. Same as ``optax.constant_schedule``;
    PyTorch: no scheduler (or ``ConstantLR(factor=1)``)."""

    value: float

    def __post_init__(self):
        _check_value("value", self.value)

    def _at(self, c):
        return jnp.asarray(self.value, _float_dtype())


constant_schedule = ConstantSchedule


@schedule_class("polynomial_schedule")
class PolynomialSchedule(Schedule):
    r"""A polynomial transition from ``init_value`` to ``end_value``.

    With :math:`k = \mathrm{clip}(c - B, 0, T)`:

    .. math:: f(c) = (I - E)\,(1 - k/T)^{P} + E

    so :math:`f = I` until step :math:`B` and :math:`f = E` from step :math:`B + T` on.

    Args:
      init_value: :math:`I`.
      end_value: :math:`E`.
      power: :math:`P > 0`.
      transition_steps: :math:`T`, the length of the transition; :math:`T \le 0` makes the
        schedule the constant :math:`I`, as in optax.
      transition_begin: :math:`B`, default 0; a negative value counts as 0, as in optax.

    Same as ``optax.polynomial_schedule``. PyTorch ``PolynomialLR(total_iters=T, power=P)`` is
    ``polynomial_schedule(lr, 0.0, P, T)`` (ALGORITHMS.md §13.2).
    """

    init_value: float
    end_value: float
    power: float
    transition_steps: int
    transition_begin: int = 0

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _check_value("end_value", self.end_value)
        _check_value("power", self.power, low=0.0, low_open=True)
        _check_transition(self)

    def _at(self, c):
        if self.transition_steps <= 0:
            return jnp.full(c.shape, self.init_value, _float_dtype())
        k = jnp.clip(_since(c, self.transition_begin), 0, self.transition_steps)
        frac = 1 - k / self.transition_steps
        return (self.init_value - self.end_value) * frac**self.power + self.end_value


polynomial_schedule = PolynomialSchedule


@schedule_class("linear_schedule")
class LinearSchedule(Schedule):
    r"""A linear transition from ``init_value`` to ``end_value``.

    .. math:: f(c) = I + (E - I)\,\frac{\mathrm{clip}(c - B, 0, T)}{T}

    Args:
      init_value: :math:`I`.
      end_value: :math:`E`.
      transition_steps: :math:`T`; :math:`T \le 0` makes the schedule the constant :math:`I`,
        as in optax.
      transition_begin: :math:`B`, default 0; a negative value counts as 0, as in optax.

    Same as ``optax.linear_schedule``. PyTorch ``LinearLR(start_factor=a, end_factor=b,
    total_iters=T)`` with base lr ``lr`` is ``linear_schedule(a * lr, b * lr, T)``.
    """

    init_value: float
    end_value: float
    transition_steps: int
    transition_begin: int = 0

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _check_value("end_value", self.end_value)
        _check_transition(self)

    def _at(self, c):
        if self.transition_steps <= 0:
            return jnp.full(c.shape, self.init_value, _float_dtype())
        k = jnp.clip(_since(c, self.transition_begin), 0, self.transition_steps)
        return (self.init_value - self.end_value) * (1 - k / self.transition_steps) + self.end_value


linear_schedule = LinearSchedule


@schedule_class("exponential_decay")
class ExponentialDecay(Schedule):
    r"""Exponential decay, continuous or in stairs, with an optional floor.

    With :math:`k = c - B`:

    .. math:: f(c) = I \ \text{ if } k \le 0, \qquad
              f(c) = I\, r^{k/T} \ \big(I\, r^{\lfloor k/T \rfloor} \text{ with staircase}\big)
              \ \text{ otherwise,}

    then clipped at ``end_value``: a floor when :math:`r < 1`, a ceiling when :math:`r > 1`.

    Args:
      init_value: :math:`I`.
      transition_steps: :math:`T \ge 1` (optax makes ``T <= 0`` a constant; gradchain raises).
      decay_rate: :math:`r > 0` (optax makes ``r = 0`` a constant ``init_value``; gradchain
        raises).
      transition_begin: :math:`B \ge 0`, default 0.
      staircase: decay in whole steps of :math:`T`, default False.
      end_value: the floor (or ceiling), default None (none).

    Same as ``optax.exponential_decay``. PyTorch: ``StepLR(step_size=T, gamma=r)`` is
    ``exponential_decay(lr, T, r, staircase=True)``; ``ExponentialLR(gamma=r)`` is
    ``exponential_decay(lr, 1, r)``.
    """

    init_value: float
    transition_steps: int
    decay_rate: float
    transition_begin: int = 0
    staircase: bool = False
    end_value: float | None = None

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _set(
            self, "transition_steps", _check_steps("transition_steps", self.transition_steps, low=1)
        )
        _check_value("decay_rate", self.decay_rate, low=0.0, low_open=True)
        _set(self, "transition_begin", _check_steps("transition_begin", self.transition_begin))
        check_bool("staircase", self.staircase)
        _check_value("end_value", self.end_value, allow_none=True)

    def _at(self, c):
        return _exponential(
            _since(c, self.transition_begin),
            self.init_value,
            self.transition_steps,
            self.decay_rate,
            self.staircase,
            self.end_value,
        )


exponential_decay = ExponentialDecay


@schedule_class("piecewise_constant_schedule")
class PiecewiseConstantSchedule(Schedule):
    r"""Step decay: the value is multiplied by ``scale`` from step ``boundary`` on.

    .. math:: f(c) = I \prod_{b \le c} s_b

    Args:
      init_value: :math:`I`.
      boundaries_and_scales: ``{b: s_b}`` with integer steps :math:`b \ge 0` and scales
        :math:`s_b \ge 0`; default None (constant).

    Same as ``optax.piecewise_constant_schedule``. PyTorch ``MultiStepLR(milestones, gamma)`` is
    ``piecewise_constant_schedule(lr, {m: gamma for m in milestones})``; ``StepLR(4, 0.5)`` is
    ``{4: 0.5, 8: 0.5, 12: 0.5, ...}``.
    """

    init_value: float
    boundaries_and_scales: dict | None = None

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _set(
            self,
            "boundaries_and_scales",
            _check_boundaries("boundaries_and_scales", self.boundaries_and_scales),
        )

    def _at(self, c):
        v = jnp.asarray(self.init_value, _float_dtype())
        for b, s in (self.boundaries_and_scales or {}).items():
            v = jnp.where(_reached(c, b), v * s, v)
        return v


piecewise_constant_schedule = PiecewiseConstantSchedule


# ---------------------------------------------------------------------------------------------
# Cosine family


@schedule_class("cosine_decay_schedule")
class CosineDecaySchedule(Schedule):
    r"""Cosine decay from ``init_value`` to ``alpha * init_value`` over ``decay_steps``.

    .. math:: f(c) = I\Big((1-\alpha)\big[\tfrac12\big(1+\cos(\pi k/D)\big)\big]^{p}
              + \alpha\Big), \qquad k = \min(c, D)

    Args:
      init_value: :math:`I`.
      decay_steps: :math:`D \ge 1`.
      alpha: :math:`\alpha`, the final value as a fraction of ``init_value``; default 0.
      exponent: :math:`p > 0`, default 1.
      convention: ``"optax"`` (default) holds :math:`\alpha I` after step :math:`D`;
        ``"pytorch"`` uses :math:`k = c`, so the cosine rises again after :math:`D` (period
        :math:`2D`) as PyTorch's ``CosineAnnealingLR`` does (ALGORITHMS.md §15 row 24).

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts"
    (2017). Same as ``optax.cosine_decay_schedule``. PyTorch ``CosineAnnealingLR(T_max=D,
    eta_min=m)`` with base lr ``lr`` is ``cosine_decay_schedule(lr, D, alpha=m / lr,
    convention="pytorch")`` (equal to the optax default for :math:`c \le D`).
    """

    init_value: float
    decay_steps: int
    alpha: float = 0.0
    exponent: float = 1.0
    _: dataclasses.KW_ONLY
    convention: str = "optax"

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _set(self, "decay_steps", _check_steps("decay_steps", self.decay_steps, low=1))
        _check_value("alpha", self.alpha)
        _check_value("exponent", self.exponent, low=0.0, low_open=True)
        _check_choice("convention", self.convention, _CONVENTIONS)

    def _at(self, c):
        # As a float: a Python int past int32 (optax's test uses 1e10 steps) cannot enter jnp.
        steps = float(self.decay_steps)
        if self.convention == "optax":
            k = jnp.minimum(_since(c, 0), steps)
        else:
            k = _since_mod(c, 0, 2 * self.decay_steps)
        decayed = (1 - self.alpha) * _half_cosine(k / steps) ** self.exponent + self.alpha
        return self.init_value * decayed


cosine_decay_schedule = CosineDecaySchedule


@schedule_class("warmup_cosine_decay_schedule")
class WarmupCosineDecaySchedule(Schedule):
    r"""Linear warmup from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    With :math:`W` the warmup and :math:`D` the *total* length (warmup included):

    .. math::
        f(c) = I + (P - I)\,c/W \quad (c < W), \qquad
        f(c) = E + (P - E)\big[\tfrac12\big(1 + \cos(\pi k/(D-W))\big)\big]^{p}, \quad
        k = \min(c - W, D - W) \quad (c \ge W)

    so :math:`f(W) = P` and :math:`f(c) = E` for :math:`c \ge D`.

    Args:
      init_value: :math:`I`.
      peak_value: :math:`P`.
      warmup_steps: :math:`W \ge 0`.
      decay_steps: :math:`D > W`, the total length including the warmup.
      end_value: :math:`E`, default 0.
      exponent: :math:`p > 0`, default 1.
      convention: ``"optax"`` (default) holds :math:`E` after step :math:`D`; ``"pytorch"``
        keeps the cosine going (:math:`k = c - W`, rising again with period :math:`2(D-W)`),
        which is what ``SequentialLR([LinearLR, CosineAnnealingLR])`` and Hugging Face's
        ``get_cosine_schedule_with_warmup`` do past the end (ALGORITHMS.md §13.2, §15 row 24).

    Same as ``optax.warmup_cosine_decay_schedule`` (optax writes the decay as
    :math:`P((1-\alpha)\cos^p + \alpha)` with :math:`\alpha = E/P`; the two agree to rounding.
    With :math:`P = 0` the decay phase is 0, not :math:`E`, as optax sets :math:`\alpha = 0`
    then). PyTorch, base lr ``lr``:
    ``SequentialLR([LinearLR(start_factor=a, end_factor=1, total_iters=W),
    CosineAnnealingLR(T_max=D - W, eta_min=e)], milestones=[W])`` is
    ``warmup_cosine_decay_schedule(a * lr, lr, W, D, e)`` for :math:`c \le D`.
    """

    init_value: float
    peak_value: float
    warmup_steps: int
    decay_steps: int
    end_value: float = 0.0
    exponent: float = 1.0
    _: dataclasses.KW_ONLY
    convention: str = "optax"

    def __post_init__(self):
        _check_warmup(self, total_length=True)
        _check_value("end_value", self.end_value)
        _check_value("exponent", self.exponent, low=0.0, low_open=True)
        _check_choice("convention", self.convention, _CONVENTIONS)

    def _at(self, c):
        w, length = self.warmup_steps, self.decay_steps - self.warmup_steps
        if self.convention == "optax":
            k = jnp.minimum(_since(c, w), length)
        else:
            k = _since_mod(c, w, 2 * length)
        cosine = _half_cosine(k / length) ** self.exponent
        # optax decays P to P * E/P, and to 0 when P = 0 (its alpha = E/P is then set to 0).
        end = 0.0 if self.peak_value == 0 else self.end_value
        decayed = end + (self.peak_value - end) * cosine
        return _after_warmup(self, c, decayed)


warmup_cosine_decay_schedule = WarmupCosineDecaySchedule


@schedule_class("sgdr_schedule")
class SgdrSchedule(Schedule):
    r"""SGD with warm restarts: warmup-cosine cycles one after the other.

    Cycle :math:`i` is ``warmup_cosine_decay_schedule(**cosine_kwargs[i])`` and starts at the
    sum of the previous cycles' ``decay_steps``; after the last cycle its ``end_value`` holds.

    Args:
      cosine_kwargs: a list of dicts of :func:`warmup_cosine_decay_schedule` arguments, one per
        cycle (each must give ``decay_steps``).

    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts"
    (2017). Same as ``optax.sgdr_schedule``. For PyTorch's ``CosineAnnealingWarmRestarts``
    (cycles growing by ``T_mult``, never ending) use :func:`cosine_warm_restarts_schedule`.
    """

    cosine_kwargs: tuple
    cycles: tuple = _derived()
    starts: tuple = _derived()

    def __post_init__(self):
        if isinstance(self.cosine_kwargs, Mapping) or not isinstance(self.cosine_kwargs, Iterable):
            raise ValueError(
                f"cosine_kwargs must be a list of dicts, one per cycle, got {self.cosine_kwargs!r}"
            )
        kwargs = tuple(dict(kw) if isinstance(kw, Mapping) else kw for kw in self.cosine_kwargs)
        if not kwargs:
            raise ValueError("cosine_kwargs must give at least one cycle")
        cycles, starts, step = [], [], 0
        for i, kw in enumerate(kwargs):
            if not isinstance(kw, Mapping):
                raise ValueError(f"cosine_kwargs[{i}] must be a dict, got {kw!r}")
            try:
                cycles.append(WarmupCosineDecaySchedule(**kw))
            except (TypeError, ValueError) as e:
                raise ValueError(f"cosine_kwargs[{i}]: {e}") from None
            starts.append(step)
            step += cycles[-1].decay_steps
        _set(self, "cosine_kwargs", kwargs)
        _set(self, "cycles", tuple(cycles))
        _set(self, "starts", tuple(starts))

    def _at(self, c):
        out = self.cycles[0](c)
        for start, cycle in zip(self.starts[1:], self.cycles[1:]):
            out = jnp.where(_reached(c, start), cycle(_shift(c, start)), out)
        return out


sgdr_schedule = SgdrSchedule


@schedule_class("cosine_warm_restarts_schedule")
class CosineWarmRestartsSchedule(Schedule):
    r"""PyTorch's ``CosineAnnealingWarmRestarts``: cosine cycles of length
    :math:`T_0, T_0 m, T_0 m^2, \ldots` that restart at ``init_value``, for ever.

    With :math:`T_{cur}` the steps since the current cycle began and :math:`T_i` its length:

    .. math:: f(c) = \eta_{min} + (I - \eta_{min})\,\tfrac12\big(1 + \cos(\pi T_{cur}/T_i)\big)

    A cycle restarts when :math:`T_{cur}` reaches :math:`T_i`, so the value at
    :math:`T_{cur} = T_i` is never used. The cycle is found by exact integer comparison with the
    cycle starts, for any step up to 2^31 - 1.

    Args:
      init_value: :math:`I`, the value at each restart (PyTorch's base lr).
      T_0: :math:`T_0 \ge 1`, the first cycle's length.
      T_mult: :math:`m \ge 1`, an integer growth factor of the cycle lengths; default 1.
      eta_min: :math:`\eta_{min}`, the floor; default 0.

    Same values as ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(T_0, T_mult,
    eta_min)`` with base lr ``init_value`` (ALGORITHMS.md §13.2), and as ``optax.sgdr_schedule``
    with cycles of ``decay_steps`` :math:`T_0 m^i`, ``warmup_steps=0``, ``init_value =
    peak_value = I`` and ``end_value = eta_min`` (which must list every cycle).
    Reference: Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts" (2017).
    """

    init_value: float
    T_0: int
    T_mult: int = 1
    eta_min: float = 0.0
    starts: tuple = _derived()

    def __post_init__(self):
        _check_value("init_value", self.init_value)
        _set(self, "T_0", _check_steps("T_0", self.T_0, low=1))
        _set(self, "T_mult", _check_steps("T_mult", self.T_mult, low=1))
        _check_value("eta_min", self.eta_min)
        starts = [0]
        if self.T_mult > 1:  # every cycle start below 2^63: at most 63 of them
            while starts[-1] < 2**63:
                starts.append(starts[-1] + self.T_0 * self.T_mult ** (len(starts) - 1))
        _set(self, "starts", tuple(starts))

    def _cosine(self, t_cur, t_i):
        return self.eta_min + (self.init_value - self.eta_min) * _half_cosine(t_cur / t_i)

    def _at(self, c):
        if self.T_mult == 1:
            return self._cosine(_since_mod(c, 0, self.T_0), self.T_0)
        out = self._cosine(_since(c, 0), self.T_0)
        for i, start in enumerate(self.starts[1:], start=1):
            if not _fits(c, start):
                break
            t_i = self.T_0 * self.T_mult**i
            out = jnp.where(_reached(c, start), self._cosine(_since(c, start), t_i), out)
        return out


cosine_warm_restarts_schedule = CosineWarmRestartsSchedule


# ---------------------------------------------------------------------------------------------
# Warmups


@schedule_class("warmup_constant_schedule")
class WarmupConstantSchedule(Schedule):
    r"""Linear warmup from ``init_value`` to ``peak_value``, then constant.

    .. math:: f(c) = I + (P - I)\,\min(c, W)/W

    Args:
      init_value: :math:`I`.
      peak_value: :math:`P`.
      warmup_steps: :math:`W \ge 0`; with :math:`W = 0` the value is :math:`P` from the start.
        (optax's version holds ``init_value`` for ever when ``warmup_steps=0``, because it is a
        ``linear_schedule`` of 0 steps; gradchain gives the peak.)

    Same as ``optax.warmup_constant_schedule`` for :math:`W \ge 1`. PyTorch: ``LinearLR(
    start_factor=I/P, end_factor=1, total_iters=W)`` with base lr :math:`P`.
    """

    init_value: float
    peak_value: float
    warmup_steps: int

    def __post_init__(self):
        _check_warmup(self)

    def _at(self, c):
        return _linear_ramp(c, self.init_value, self.peak_value, self.warmup_steps)


warmup_constant_schedule = WarmupConstantSchedule


@schedule_class("warmup_exponential_decay_schedule")
class WarmupExponentialDecaySchedule(Schedule):
    r"""Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    :func:`exponential_decay` from ``peak_value`` (its step count starting at ``warmup_steps``).

    .. math:: f(c) = I + (P - I)\,c/W \quad (c < W), \qquad
              f(c) = \mathrm{exponential\_decay}(P, T, r, B, \ldots)(c - W) \quad (c \ge W)

    Args:
      init_value, peak_value, warmup_steps: :math:`I`, :math:`P`, :math:`W \ge 0`.
      transition_steps, decay_rate, transition_begin, staircase, end_value: as in
        :func:`exponential_decay` (:math:`T \ge 1`, :math:`r > 0`, :math:`B \ge 0`).

    Same as ``optax.warmup_exponential_decay_schedule``. PyTorch: ``SequentialLR([LinearLR,
    ExponentialLR or StepLR], milestones=[W])``.
    """

    init_value: float
    peak_value: float
    warmup_steps: int
    transition_steps: int
    decay_rate: float
    transition_begin: int = 0
    staircase: bool = False
    end_value: float | None = None

    def __post_init__(self):
        _check_warmup(self)
        _set(
            self, "transition_steps", _check_steps("transition_steps", self.transition_steps, low=1)
        )
        _check_value("decay_rate", self.decay_rate, low=0.0, low_open=True)
        _set(self, "transition_begin", _check_steps("transition_begin", self.transition_begin))
        check_bool("staircase", self.staircase)
        _check_value("end_value", self.end_value, allow_none=True)

    def _at(self, c):
        w = self.warmup_steps
        decayed = _exponential(
            _since(c, w + self.transition_begin),
            self.peak_value,
            self.transition_steps,
            self.decay_rate,
            self.staircase,
            self.end_value,
        )
        return _after_warmup(self, c, decayed)


warmup_exponential_decay_schedule = WarmupExponentialDecaySchedule


@schedule_class("warmup_linear_decay_schedule")
class WarmupLinearDecaySchedule(Schedule):
    r"""Linear warmup from ``init_value`` to ``peak_value``, then linear decay to ``end_value``.

    .. math:: f(c) = I + (P - I)\,c/W \quad (c < W), \qquad
              f(c) = P + (E - P)\,\frac{\min(c - W,\ D - W)}{D - W} \quad (c \ge W)

    Args:
      init_value: :math:`I`.
      peak_value: :math:`P`.
      warmup_steps: :math:`W \ge 0`.
      decay_steps: :math:`D > W`, the total length including the warmup (as in
        :func:`warmup_cosine_decay_schedule`).
      end_value: :math:`E`, default 0.

    optax has no such name; it is ``join_schedules([linear_schedule(I, P, W),
    linear_schedule(P, E, D - W)], [W])``. Hugging Face's ``get_linear_schedule_with_warmup(W, D)``
    is ``warmup_linear_decay_schedule(0.0, lr, W, D)`` (ALGORITHMS.md §13.2b); in PyTorch,
    ``SequentialLR([LinearLR(a, 1, W), LinearLR(1, E/P, D - W)], milestones=[W])``.
    """

    init_value: float
    peak_value: float
    warmup_steps: int
    decay_steps: int
    end_value: float = 0.0

    def __post_init__(self):
        _check_warmup(self, total_length=True)
        _check_value("end_value", self.end_value)

    def _at(self, c):
        w, length = self.warmup_steps, self.decay_steps - self.warmup_steps
        k = jnp.clip(_since(c, w), 0, length)
        decayed = (self.peak_value - self.end_value) * (1 - k / length) + self.end_value
        return _after_warmup(self, c, decayed)


warmup_linear_decay_schedule = WarmupLinearDecaySchedule


@schedule_class("warmup_inverse_sqrt_schedule")
class WarmupInverseSqrtSchedule(Schedule):
    r"""Linear warmup, then decay as the inverse square root of the step (the Transformer's).

    With :math:`\tau` the timescale:

    .. math:: f(c) = I + (P - I)\,c/W \quad (c < W), \qquad
              f(c) = P\,\sqrt{\frac{\tau}{c - W + \tau}} \quad (c \ge W)

    so :math:`f(W) = P` and, with :math:`\tau = W`, :math:`f(c) = P\sqrt{W/c}` after the warmup.

    Args:
      init_value: :math:`I`.
      peak_value: :math:`P`.
      warmup_steps: :math:`W \ge 0`.
      timescale: :math:`\tau > 0`; default None: :math:`W` (or 10,000 when :math:`W = 0`), as
        Hugging Face's ``get_inverse_sqrt_schedule``.

    Hugging Face's ``get_inverse_sqrt_schedule(W, timescale)`` is
    ``warmup_inverse_sqrt_schedule(0.0, lr, W, timescale)`` (ALGORITHMS.md §13.2b). The
    schedule of Vaswani et al., "Attention Is All You Need" (2017),
    :math:`d^{-1/2}\min(s^{-1/2}, s\,w^{-3/2})` with 1-based :math:`s = c + 1`, is
    ``warmup_inverse_sqrt_schedule(P / w, P, w - 1, timescale=w)`` with
    :math:`P = (d\,w)^{-1/2}` (ALGORITHMS.md §13.3). optax has none.
    """

    init_value: float
    peak_value: float
    warmup_steps: int
    timescale: float | None = None

    def __post_init__(self):
        _check_warmup(self)
        _check_value("timescale", self.timescale, low=0.0, low_open=True, allow_none=True)

    def _at(self, c):
        w = self.warmup_steps
        tau = self.timescale if self.timescale is not None else (w or 10_000)
        decayed = self.peak_value * jnp.sqrt(tau / (_since(c, w) + tau))
        return _after_warmup(self, c, decayed)


warmup_inverse_sqrt_schedule = WarmupInverseSqrtSchedule


_COOLDOWNS = {
    "linear": lambda x: 1 - x,
    "cosine": _half_cosine,
    "1-sqrt": lambda x: 1 - jnp.sqrt(x),
}


@schedule_class("warmup_stable_decay_schedule")
class WarmupStableDecaySchedule(Schedule):
    r"""Warmup-stable-decay (WSD): a linear warmup, a long constant plateau at ``peak_value``,
    and a short cool-down to ``end_value``.

    With :math:`W` warmup steps, :math:`N` total steps and a cool-down of :math:`K` steps that
    starts at :math:`H = N - K`, :math:`x = (c - H)/K`:

    .. math::
        f(c) = \begin{cases}
          I + (P - I)\,c/W & c < W \\
          P & W \le c \le H \\
          E + (P - E)\,g(x) & H < c < N \\
          E & c \ge N
        \end{cases}
        \qquad g(x) = \begin{cases}
          1 - x & \text{linear} \\
          \tfrac12(1 + \cos \pi x) & \text{cosine} \\
          1 - \sqrt{x} & \text{1-sqrt}
        \end{cases}

    The plateau is exactly :math:`P`; the cool-down reaches :math:`E` exactly at step
    :math:`N` (the last of :math:`N` updates, number :math:`N - 1`, uses the value one step
    above the floor, as in the reference code), and :math:`E` holds afterwards.

    Args:
      init_value: :math:`I`, the value at step 0.
      peak_value: :math:`P`.
      warmup_steps: :math:`W \ge 0`.
      total_steps: :math:`N \ge W + K`.
      cooldown_steps: :math:`K \ge 1`, the length of the cool-down (10-20 % of :math:`N` in
        the reference).
      end_value: :math:`E`, the final floor; default 0.
      cooldown_type: ``"linear"`` (default), ``"cosine"`` or ``"1-sqrt"``.

    Reference: Hägele et al., "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    Durations" (2024), ``wsd_schedule`` (ALGORITHMS.md §13.4; 1-sqrt is its "sqrt": ``init_value
    = peak / init_div_factor``, ``end_value = peak * final_lr_factor``, ``cooldown_steps =
    int(fract_decay * N)``); Hu et al., "MiniCPM" (2024). Hugging Face ``get_wsd_schedule(W, K,
    N, decay_type=..., min_lr_ratio=m)`` is ``warmup_stable_decay_schedule(0.0, lr, W, N, K,
    m * lr, ...)``. optax and PyTorch have none.
    """

    init_value: float
    peak_value: float
    warmup_steps: int
    total_steps: int
    cooldown_steps: int
    end_value: float = 0.0
    cooldown_type: str = "linear"

    def __post_init__(self):
        _check_warmup(self)
        _set(self, "total_steps", _check_steps("total_steps", self.total_steps, low=1))
        _set(self, "cooldown_steps", _check_steps("cooldown_steps", self.cooldown_steps, low=1))
        if self.warmup_steps + self.cooldown_steps > self.total_steps:
            raise ValueError(
                f"warmup_steps + cooldown_steps must be <= total_steps; got warmup_steps="
                f"{self.warmup_steps}, cooldown_steps={self.cooldown_steps}, "
                f"total_steps={self.total_steps}"
            )
        _check_value("end_value", self.end_value)
        _check_choice("cooldown_type", self.cooldown_type, tuple(_COOLDOWNS))

    def _at(self, c):
        k = self.cooldown_steps
        hold = self.total_steps - k
        x = jnp.clip(_since(c, hold) / k, 0, 1)
        cooled = self.end_value + (self.peak_value - self.end_value) * _COOLDOWNS[
            self.cooldown_type
        ](x)
        cooled = jnp.where(_reached(c, self.total_steps), self.end_value, cooled)
        out = jnp.where(_reached(c, hold + 1), cooled, self.peak_value)
        return _after_warmup(self, c, out)


warmup_stable_decay_schedule = WarmupStableDecaySchedule


# ---------------------------------------------------------------------------------------------
# Piecewise interpolation and one-cycle


@schedule_class("piecewise_interpolate_schedule")
class PiecewiseInterpolateSchedule(Schedule):
    r"""Interpolates, linearly or along half cosines, between values that are cumulative
    products of scales at given steps.

    The knots are step 0 with value :math:`v_0 = I` and each boundary :math:`b_j` (sorted) with
    :math:`v_j = I \prod_{i \le j} s_i`. Between knots :math:`b_j \le c < b_{j+1}`, with
    :math:`x = (c - b_j)/\max(b_{j+1} - b_j, 1)`, the value is :math:`v_j + (v_{j+1} - v_j)\,x`
    (linear) or :math:`v_{j+1} + (v_j - v_{j+1})\,\tfrac12(1 + \cos \pi x)` (cosine); after the
    last knot it is the last value.

    Args:
      interpolate_type: ``"linear"`` or ``"cosine"``.
      init_value: :math:`I`.
      boundaries_and_scales: ``{b_j: s_j}``, integer steps :math:`\ge 0`, scales :math:`\ge 0`;
        default None (constant).

    Same as ``optax.piecewise_interpolate_schedule``. One-cycle momentum (``b1`` cycled against
    the learning rate, as PyTorch's ``OneCycleLR(cycle_momentum=True)``) is
    ``piecewise_interpolate_schedule("cosine", 0.95, {int(0.3 * N): 0.85 / 0.95, N: 0.95 / 0.85})``
    given as ``b1``.
    """

    interpolate_type: str
    init_value: float
    boundaries_and_scales: dict | None = None
    knots: tuple = _derived()

    def __post_init__(self):
        _check_choice("interpolate_type", self.interpolate_type, ("linear", "cosine"))
        _check_value("init_value", self.init_value)
        _set(
            self,
            "boundaries_and_scales",
            _check_boundaries("boundaries_and_scales", self.boundaries_and_scales),
        )
        _set(self, "knots", (0, *(self.boundaries_and_scales or {})))

    def _at(self, c):
        values = [jnp.asarray(self.init_value, _float_dtype())]
        for s in (self.boundaries_and_scales or {}).values():
            values.append(values[-1] * s)
        return _interpolate(c, self.knots, values, self.interpolate_type)


piecewise_interpolate_schedule = PiecewiseInterpolateSchedule


def _init_onecycle(schedule, pct_names) -> None:
    """Checks a one-cycle schedule's arguments, in their order, and sets its knots.

    ``pct_names``: the fields holding the knot fractions, which must not decrease."""
    _set(
        schedule,
        "transition_steps",
        _check_steps("transition_steps", schedule.transition_steps, low=1),
    )
    _check_value("peak_value", schedule.peak_value)
    pcts = tuple(getattr(schedule, name) for name in pct_names)
    for name, pct in zip(pct_names, pcts):
        _check_value(name, pct, low=0.0, high=1.0)
    for (earlier, a), (later, b) in zip(zip(pct_names, pcts), zip(pct_names[1:], pcts[1:])):
        if b < a:
            raise ValueError(f"{later} must be >= {earlier}, got {earlier}={a}, {later}={b}")
    _check_value("div_factor", schedule.div_factor, low=0.0, low_open=True)
    _check_value("final_div_factor", schedule.final_div_factor, low=0.0, low_open=True)
    _check_choice("convention", schedule.convention, _CONVENTIONS)
    _set(
        schedule,
        "knots",
        _onecycle_knots(schedule.name, schedule.transition_steps, pcts, schedule.convention),
    )


def _onecycle_knots(name, transition_steps, fractions, convention):
    """One-cycle knot steps: optax's ``int(pct * T)`` and ``T``, or PyTorch's float knots
    ``pct * T - 1`` (``2 pct * T - 2`` for a three-phase cycle's second knot) and ``T - 1``."""
    t = transition_steps
    if convention == "optax":
        return (0, *(int(f * t) for f in fractions), t)
    knots = (0.0, *(f * t - 1 - i for i, f in enumerate(fractions)), float(t - 1))
    if any(b <= a for a, b in itertools.pairwise(knots)):
        raise ValueError(
            f"{name} with convention='pytorch' has knots {knots} (pct * transition_steps - 1, "
            f"..., transition_steps - 1) that do not increase; use more transition_steps or "
            f"another pct_start"
        )
    return knots


@schedule_class("linear_onecycle_schedule")
class LinearOnecycleSchedule(Schedule):
    r"""One-cycle with three linear phases: up to the peak, back down, then a final anneal.

    The value is linear between the knots (steps: values)

    .. math:: 0: P/d, \quad \lfloor p_s T \rfloor: P, \quad \lfloor p_f T \rfloor: P/d,
              \quad T: P/(d\,d_f)

    and :math:`P/(d\,d_f)` afterwards.

    Args:
      transition_steps: :math:`T \ge 1`.
      peak_value: :math:`P`.
      pct_start: :math:`p_s`, default 0.3.
      pct_final: :math:`p_f`, default 0.85 (:math:`0 \le p_s \le p_f \le 1`).
      div_factor: :math:`d > 0`, default 25.
      final_div_factor: :math:`d_f > 0`, default 1e4.
      convention: ``"optax"`` (default) or ``"pytorch"``: knots at
        :math:`p_s T - 1`, :math:`p_f T - 2`, :math:`T - 1` (floats) as PyTorch places them, one
        step earlier than optax (ALGORITHMS.md §15 row 23). With :math:`p_f = 2 p_s` this is
        ``OneCycleLR(max_lr=P, total_steps=T, pct_start=p_s, anneal_strategy="linear",
        three_phase=True, div_factor=d, final_div_factor=d_f)``; PyTorch raises after
        :math:`T - 1` steps, gradchain holds the final value.

    Reference: Smith & Topin, "Super-Convergence" (2017). Same as
    ``optax.linear_onecycle_schedule`` (optax forms the knot values as cumulative products
    :math:`(P/d)\cdot d`, ...; they agree to rounding).
    """

    transition_steps: int
    peak_value: float
    pct_start: float = 0.3
    pct_final: float = 0.85
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    _: dataclasses.KW_ONLY
    convention: str = "optax"
    knots: tuple = _derived()

    def __post_init__(self):
        _init_onecycle(self, ("pct_start", "pct_final"))

    def _at(self, c):
        low = self.peak_value / self.div_factor
        values = (low, self.peak_value, low, low / self.final_div_factor)
        return _interpolate(c, self.knots, values, "linear")


linear_onecycle_schedule = LinearOnecycleSchedule


@schedule_class("cosine_onecycle_schedule")
class CosineOnecycleSchedule(Schedule):
    r"""One-cycle: a half-cosine rise to the peak, then a half-cosine anneal far below the start.

    Half cosines between the knots (steps: values)

    .. math:: 0: P/d, \qquad \lfloor p_s T \rfloor: P, \qquad T: P/(d\,d_f)

    and :math:`P/(d\,d_f)` afterwards.

    Args:
      transition_steps: :math:`T \ge 1`.
      peak_value: :math:`P`.
      pct_start: :math:`p_s \in [0, 1]`, default 0.3.
      div_factor: :math:`d > 0`, default 25.
      final_div_factor: :math:`d_f > 0`, default 1e4.
      convention: ``"optax"`` (default) or ``"pytorch"``: knots at :math:`p_s T - 1` and
        :math:`T - 1` (floats), as ``OneCycleLR(max_lr=P, total_steps=T, pct_start=p_s,
        div_factor=d, final_div_factor=d_f)`` (two phases, cosine anneal) places them, one step
        earlier than optax (ALGORITHMS.md §13.2, §15 row 23). PyTorch raises after :math:`T - 1`
        steps; gradchain holds the final value. Its momentum cycle is a separate schedule given
        as ``b1``, see :func:`piecewise_interpolate_schedule`.

    Reference: Smith & Topin, "Super-Convergence" (2017). Same as
    ``optax.cosine_onecycle_schedule``::

        cosine_onecycle_schedule(20, 1.0)                        # 0.04, 0.104, ..., 1.0 at step 6
        cosine_onecycle_schedule(20, 1.0, convention="pytorch")  # 0.04, 0.132, ..., 1.0 at step 5
    """

    transition_steps: int
    peak_value: float
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    _: dataclasses.KW_ONLY
    convention: str = "optax"
    knots: tuple = _derived()

    def __post_init__(self):
        _init_onecycle(self, ("pct_start",))

    def _at(self, c):
        low = self.peak_value / self.div_factor
        values = (low, self.peak_value, low / self.final_div_factor)
        return _interpolate(c, self.knots, values, "cosine")


cosine_onecycle_schedule = CosineOnecycleSchedule


# ---------------------------------------------------------------------------------------------
# Joining


@schedule_class("join_schedules")
class JoinSchedules(Schedule):
    r"""Schedules one after the other: from step :math:`b_i` on, ``schedules[i + 1]`` is used,
    counting its steps from :math:`b_i`.

    .. math:: f(c) = s_0(c) \ (c < b_0), \qquad f(c) = s_{i+1}(c - b_i) \ (b_i \le c < b_{i+1})

    Args:
      schedules: the schedules, gradchain's or any callable of the step (optax's included).
      boundaries: one fewer non-decreasing integer steps :math:`b_i \ge 0`.

    Same as ``optax.join_schedules``. PyTorch ``SequentialLR(schedulers, milestones)`` (2.14) is
    ``join_schedules(schedules, milestones)`` (ALGORITHMS.md §13.2).
    """

    schedules: tuple
    boundaries: tuple

    def __post_init__(self):
        schedules = tuple(self.schedules)
        for i, s in enumerate(schedules):
            if not callable(s):
                raise ValueError(f"schedules[{i}] must be a schedule (callable), got {s!r}")
        boundaries = tuple(
            _check_steps(f"boundaries[{i}]", b) for i, b in enumerate(self.boundaries)
        )
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"join_schedules needs one boundary fewer than schedules, got "
                f"{len(schedules)} schedules and {len(boundaries)} boundaries"
            )
        if any(b < a for a, b in itertools.pairwise(boundaries)):
            raise ValueError(f"boundaries must not decrease, got {list(boundaries)}")
        _set(self, "schedules", schedules)
        _set(self, "boundaries", boundaries)

    def _at(self, c):
        f = _float_dtype()
        out = jnp.asarray(self.schedules[0](c), f)
        for b, s in zip(self.boundaries, self.schedules[1:]):
            out = jnp.where(_reached(c, b), jnp.asarray(s(_shift(c, b)), f), out)
        return out


join_schedules = JoinSchedules


# ---------------------------------------------------------------------------------------------
# Reduce on plateau


@state_class(extras=("hyperparams",))
class ReduceOnPlateauState:
    """``count``: updates done; ``scale``: the factor the updates are multiplied by;
    ``best_value``: the best (lowest) averaged loss so far; ``plateau_count``: accumulations
    without improvement; ``cooldown_count``: accumulations left before plateaus count again;
    ``accumulation_count``, ``avg_value``: losses averaged so far in the current accumulation;
    ``hyperparams``: factor, rtol, atol, min_scale."""

    count: jax.Array
    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    accumulation_count: jax.Array
    avg_value: jax.Array
    hyperparams: dict | None


@transformation("reduce_on_plateau", hyperparams=("factor", "rtol", "atol", "min_scale"))
class ReduceOnPlateau(GradientTransformation):
    r"""Scales the updates down by ``factor`` when the loss stops improving (gradchain's rule).

    Built by ``reduce_on_plateau(..., rule="gradchain")``; the default rule is optax's
    (:class:`gradchain.contrib.reduce_on_plateau.ReduceLROnPlateau`).

    ``update(updates, state, params, value=loss)`` takes the loss. Every ``accumulation_size``
    updates, the mean :math:`\bar L` of the losses passed is compared with the best mean so far
    :math:`L^*`: it improves when :math:`\bar L < (1 - r_{tol}) L^* - a_{tol}`. After
    ``patience`` accumulations without improvement the scale becomes
    :math:`\max(s\,\gamma, s_{min})`, then ``cooldown`` accumulations are ignored. The updates
    are :math:`u = s\,g`; place it after the optimizer: ``chain(adam(lr), reduce_on_plateau())``.

    Args:
      factor: :math:`\gamma \in (0, 1)`, default 0.1.
      patience: accumulations without improvement before a reduction, an integer
        :math:`\ge 1`; default 10.
      rtol: relative improvement :math:`r_{tol} \in [0, 1]`, default 1e-4.
      atol: absolute improvement :math:`a_{tol} \ge 0`, default 0 (not both 0).
      cooldown: accumulations to wait after a reduction, integer :math:`\ge 0`; default 0.
      accumulation_size: losses averaged per comparison, integer :math:`\ge 1`; default 1 (use
        more when ``value`` is a noisy minibatch loss).
      min_scale: :math:`s_{min} \ge 0`, default 0.

    Same as ``optax.contrib.reduce_on_plateau``, except that the scale and the averages are kept
    in float32 or better (optax: the params' lowest / highest dtype) and that ``count`` counts
    updates (optax's ``count`` is gradchain's ``accumulation_count``); read the scale with
    ``tree_get(state, "scale")``. PyTorch's ``ReduceLROnPlateau(mode="min",
    threshold_mode="rel")`` reduces after *more than* ``patience`` bad epochs: its ``patience=p``
    is ``patience=p + 1`` here, ``threshold`` is ``rtol``.
    """

    factor: ScalarOrSchedule = 0.1
    patience: int = 10
    rtol: ScalarOrSchedule = 1e-4
    atol: ScalarOrSchedule = 0.0
    cooldown: int = 0
    accumulation_size: int = 1
    min_scale: ScalarOrSchedule = 0.0

    def __post_init__(self):
        check_number("factor", self.factor, low=0.0, high=1.0, low_open=True, high_open=True)
        object.__setattr__(self, "patience", _check_steps("patience", self.patience, low=1))
        check_number("rtol", self.rtol, low=0.0, high=1.0)
        check_number("atol", self.atol, low=0.0)
        if not (callable(self.rtol) or callable(self.atol)) and self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol are both 0: at least one must be positive")
        object.__setattr__(self, "cooldown", _check_steps("cooldown", self.cooldown))
        object.__setattr__(
            self,
            "accumulation_size",
            _check_steps("accumulation_size", self.accumulation_size, low=1),
        )
        check_number("min_scale", self.min_scale, low=0.0)

    def init(self, params):
        dt = jnp.promote_types(_float_dtype(), jnp.float32)
        zero = init_count()
        return ReduceOnPlateauState(
            count=zero,
            scale=jnp.ones((), dt),
            best_value=jnp.full((), jnp.inf, dt),
            plateau_count=zero,
            cooldown_count=zero,
            accumulation_count=zero,
            avg_value=jnp.zeros((), dt),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        if value is None:
            raise MissingArgumentError(
                "reduce_on_plateau needs the loss: call update(updates, state, params, "
                "value=loss) (a chain passes value= on to it)"
            )
        value = jnp.asarray(value)
        if value.ndim != 0:
            raise ValueError(
                f"reduce_on_plateau: value must be a scalar loss, got shape {value.shape}"
            )
        hp = self.current_hyperparams(state)
        dt = state.avg_value.dtype
        n = safe_increment(state.accumulation_count)
        avg = (state.accumulation_count * state.avg_value + value.astype(dt)) / n
        due = n == self.accumulation_size

        improved = avg < (1 - hp["rtol"].astype(dt)) * state.best_value - hp["atol"].astype(dt)
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        cooling = state.cooldown_count > 0
        reduce = ~cooling & (plateau == self.patience)
        scale = jnp.where(reduce, state.scale * hp["factor"].astype(dt), state.scale)
        scale = jnp.where(cooling, state.scale, jnp.maximum(scale, hp["min_scale"].astype(dt)))
        cooldown = jnp.where(cooling, state.cooldown_count - 1, jnp.where(reduce, self.cooldown, 0))
        plateau = jnp.where(cooling | reduce, 0, plateau)

        def when_due(new, old):
            return jnp.where(due, new, old).astype(old.dtype)

        new_state = ReduceOnPlateauState(
            count=safe_increment(state.count),
            scale=when_due(scale, state.scale),
            best_value=when_due(jnp.where(improved, avg, state.best_value), state.best_value),
            plateau_count=when_due(plateau, state.plateau_count),
            cooldown_count=when_due(cooldown, state.cooldown_count),
            accumulation_count=jnp.where(due, 0, n).astype(n.dtype),
            avg_value=jnp.where(due, 0, avg).astype(dt),
            hyperparams=hp,
        )
        out = jax.tree.map(lambda g: g * new_state.scale.astype(g.dtype), updates)
        return out, new_state
