r"""Line searches: a step size chosen by evaluating the loss along the update direction.

Both transformations take the loss at the current parameters and a way to evaluate it elsewhere
as extra ``update`` arguments, as optax's::

    value, grad = value_and_grad_from_state(fn)(params, state=state)
    updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=fn)

Any further keyword argument of ``update`` that ``value_fn`` names (a batch, labels) is passed
to it; one it does not name is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    Params,
    Updates,
    check_bool,
    check_floating,
    check_int,
    check_number,
    check_params_match,
    require_params,
    state_class,
    transformation,
)
from gradchain.core.numerics import safe_increment, state_dtype
from gradchain.core.tree import tree_get_all_with_path, tree_vdot

__all__ = [
    "ScaleByBacktrackingLinesearchState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_backtracking_linesearch",
    "scale_by_zoom_linesearch",
    "value_and_grad_from_state",
]

# The diagnostics ``verbose=True`` prints, word for word optax's (its tests look for them).
FLAG_INTERVAL_NOT_FOUND = (
    "No interval satisfying curvature condition. "
    "Consider increasing maximal possible stepsize of the linesearch."
)
FLAG_INTERVAL_TOO_SMALL = "Length of searched interval has been reduced below threshold."
FLAG_CURVATURE_COND_NOT_SATISFIED = (
    "Returning stepsize with sufficient decrease but curvature condition not satisfied."
)
FLAG_NO_STEPSIZE_FOUND = "Linesearch failed, no stepsize satisfying sufficient decrease found."
FLAG_NOT_A_DESCENT_DIRECTION = (
    "The linesearch failed because the provided direction is not a descent direction. "
)


# ---------------------------------------------------------------------------------------------
# Shared pieces


def scalar_dtype(params) -> jnp.dtype:
    """The dtype of the search's values and step sizes: the real dtype of the first leaf, as
    optax's, but never below float32 (a bfloat16 step size cannot tell 0.8 from 0.75)."""
    leaves = jax.tree.leaves(params)
    if not leaves:
        return jnp.dtype(jnp.result_type(float))
    real = jnp.finfo(jnp.result_type(leaves[0])).dtype
    return jnp.promote_types(real, jnp.float32)


def _zeros_like_state(params):
    """Gradients as the state keeps them: float32 for low-precision parameters."""
    return jax.tree.map(lambda p: jnp.zeros(p.shape, state_dtype(p.dtype)), params)


def _real_vdot(x, y) -> jax.Array:
    return jnp.real(tree_vdot(x, y))


def _add_scale(params, stepsize, updates):
    """``params + stepsize * updates`` in each parameter's dtype."""
    return jax.tree.map(
        lambda p, u: (p + stepsize.astype(p.dtype) * u).astype(p.dtype), params, updates
    )


def _scaled(stepsize, updates):
    return jax.tree.map(lambda u: (stepsize.astype(u.dtype) * u).astype(u.dtype), updates)


def _cast_like(tree, like):
    return jax.tree.map(lambda x, y: jnp.asarray(x).astype(y.dtype), tree, like)


def _where(condition, x, y):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), x, y)


def _split_fn_kwargs(name: str, value_fn: Callable, extra_args: Mapping[str, Any]) -> dict:
    """The extra ``update`` arguments ``value_fn`` takes; a TypeError naming any other."""
    try:
        parameters = inspect.signature(value_fn).parameters
    except (TypeError, ValueError):
        return dict(extra_args)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(extra_args)
    unused = sorted(k for k in extra_args if k not in parameters)
    if unused:
        raise TypeError(
            f"Unexpected keyword arguments passed to `{name}.update`. These arguments were not "
            f"consumed by `value_fn`: {unused}. Ensure that all extra keyword arguments are "
            f"accepted by `value_fn`."
        )
    return dict(extra_args)


def _require_extras(name: str, value, grad, value_fn) -> None:
    for key, given in (("value", value), ("grad", grad), ("value_fn", value_fn)):
        if given is None:
            raise ValueError(
                f"{name} needs {key}=: call update(updates, state, params, value=loss, "
                f"grad=gradient, value_fn=loss_fn), the loss and its gradient at params and the "
                f"loss function"
            )


def _is_array_like(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, complex))


def compiled_when_eager(step: Callable, fn: Callable | None, args: tuple):
    """``step(fn, *args)``, compiled once per ``(step, fn)`` and shapes when called eagerly.

    Un-jitted, the loops of a line search or of the two-loop recursion close over new functions
    at every call, which XLA would compile again every step; a jit keyed on the bound method (a
    transformation compares by its hyperparameters) and on ``fn`` compiles them once. Inside a
    trace, or with arguments jit cannot take, ``step`` runs as it is.
    """
    leaves = jax.tree.leaves(args)
    try:
        hash(fn)
    except TypeError:
        return step(fn, *args)
    if any(isinstance(x, jax.core.Tracer) or not _is_array_like(x) for x in leaves):
        return step(fn, *args)
    return _compiled(step, fn, args)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _compiled(step, fn, args):
    return step(fn, *args)


def _cond_print(condition, message: str, **kwargs) -> None:
    jax.lax.cond(
        condition,
        lambda: jax.debug.print(message, **kwargs, ordered=True),
        lambda: None,
    )


# ---------------------------------------------------------------------------------------------
# Backtracking (Armijo)


class BacktrackingLinesearchInfo(NamedTuple):
    """``num_linesearch_steps``: loss evaluations of the latest search; ``decrease_error``: by
    how much its step misses the sufficient decrease condition (0 when it meets it)."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array


class ScaleByBacktrackingLinesearchState(NamedTuple):
    """optax's fields: ``learning_rate``, the step size found; ``value``, the loss there;
    ``grad``, the gradient there (None unless ``store_grad``); ``info``, the search's
    :class:`BacktrackingLinesearchInfo`."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates | None
    info: BacktrackingLinesearchInfo


@state_class
class _Backtrack:
    """The loop carry of one backtracking search."""

    learning_rate: jax.Array
    new_value: jax.Array
    new_grad: Updates
    decrease_error: jax.Array
    iter_num: jax.Array


class _LineSearch(GradientTransformation):
    """What the two line searches share: ``update`` checks its extra arguments and runs the
    search ``_step`` (compiled once per ``value_fn`` when called outside ``jax.jit``)."""

    def _step(self, value_fn, updates, learning_rate, params, value, grad, fn_kwargs):
        raise NotImplementedError

    def update(
        self,
        updates,
        state,
        params=None,
        *,
        value=None,
        grad=None,
        value_fn=None,
        **extra_args,
    ):
        require_params(params, self.name)
        check_params_match(updates, params)
        _require_extras(self.name, value, grad, value_fn)
        fn_kwargs = _split_fn_kwargs(self.name, value_fn, extra_args)
        args = (updates, state.learning_rate, params, value, grad, fn_kwargs)
        return compiled_when_eager(self._step, value_fn, args)


@transformation("scale_by_backtracking_linesearch")
class ScaleByBacktrackingLinesearch(_LineSearch):
    r"""Scales the updates by the largest tried step size that decreases the loss enough.

    With :math:`f` the loss (``value_fn``), :math:`w` the parameters, :math:`u` the incoming
    updates (a descent direction) and :math:`g = \nabla f(w)` (``grad``), the search starts at
    :math:`\eta_0 = \min(\kappa\,\eta_{t-1}, \eta_{\max})` and multiplies by :math:`\beta` until
    the Armijo (sufficient decrease) condition holds:

    .. math::
        f(w + \eta u) \le (1 + \delta) f(w) + c\,\eta\,\mathrm{Re}\langle u, \bar g\rangle
        + \epsilon,

    for at most ``max_backtracking_steps`` reductions; the output is :math:`\eta u`. A step
    whose loss is NaN or infinite counts as failing by :math:`+\infty`, and a search that ends
    there returns :math:`\eta = 0` (no step).

    Args:
      max_backtracking_steps: the most reductions of :math:`\eta` (an int >= 0).
      slope_rtol: :math:`c \ge 0`, default 1e-4.
      decrease_factor: :math:`\beta \in (0, 1]`, default 0.8.
      increase_factor: :math:`\kappa > 0`, default 1.5 (``inf`` starts every search at
        :math:`\eta_{\max}`).
      max_learning_rate: :math:`\eta_{\max} > 0`, default 1.
      atol: :math:`\epsilon \ge 0`, default 0.
      rtol: :math:`\delta \ge 0`, default 0.
      store_grad: also keep :math:`\nabla f` at the accepted point in the state, for
        :func:`value_and_grad_from_state` (default False).
      verbose: print a diagnosis when the search fails (default False).

    ``update`` needs ``value=`` (:math:`f(w)`), ``grad=`` (:math:`g`) and ``value_fn=``
    (:math:`f`); other keyword arguments go to ``value_fn``.

    Reference: Armijo (1966); Nocedal & Wright, "Numerical Optimization" (2006), Algorithm 3.1;
    Vaswani et al., "Painless Stochastic Gradient" (2019). Same as
    ``optax.scale_by_backtracking_linesearch`` (same state fields), except that the step size
    and loss are kept in at least float32 for low-precision parameters (optax keeps them in
    the first parameter's dtype), and missing ``value``/``grad``/``value_fn`` raise a
    ValueError naming the argument. The book's Algorithm 3.1 restarts every search at a fixed
    :math:`\bar\eta`; optax and gradchain start from the previous step times :math:`\kappa`.
    """

    complex_params = True

    max_backtracking_steps: int
    slope_rtol: float = 1e-4
    decrease_factor: float = 0.8
    increase_factor: float = 1.5
    max_learning_rate: float = 1.0
    atol: float = 0.0
    rtol: float = 0.0
    store_grad: bool = False
    verbose: bool = False

    def __post_init__(self):
        check_int("max_backtracking_steps", self.max_backtracking_steps, low=0)
        check_number("slope_rtol", self.slope_rtol, low=0.0, allow_schedule=False)
        check_number(
            "decrease_factor",
            self.decrease_factor,
            low=0.0,
            high=1.0,
            low_open=True,
            allow_schedule=False,
        )
        check_number(
            "increase_factor", self.increase_factor, low=0.0, low_open=True, allow_schedule=False
        )
        check_number(
            "max_learning_rate",
            self.max_learning_rate,
            low=0.0,
            low_open=True,
            allow_schedule=False,
        )
        check_number("atol", self.atol, low=0.0, allow_schedule=False)
        check_number("rtol", self.rtol, low=0.0, allow_schedule=False)
        check_bool("store_grad", self.store_grad)
        check_bool("verbose", self.verbose)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        dtype = scalar_dtype(params)
        return ScaleByBacktrackingLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            grad=_zeros_like_state(params) if self.store_grad else None,
            info=BacktrackingLinesearchInfo(
                num_linesearch_steps=jnp.zeros((), jnp.int32),
                decrease_error=jnp.full((), jnp.inf, dtype),
            ),
        )

    def _decrease_error(self, stepsize, slope, value, new_value):
        error = new_value - (1.0 + self.rtol) * value - stepsize * self.slope_rtol * slope
        error = jnp.where(jnp.isnan(error), jnp.inf, error)
        return jnp.maximum(error, 0.0)

    def _step(self, value_fn, updates, learning_rate, params, value, grad, fn_kwargs):
        fn = functools.partial(value_fn, **fn_kwargs)
        dtype = scalar_dtype(params)
        previous = jnp.asarray(learning_rate).astype(dtype)
        value = jnp.asarray(value).astype(dtype)
        slope = _real_vdot(updates, jax.tree.map(jnp.conj, grad)).astype(dtype)
        max_steps = self.max_backtracking_steps

        def searching(s: _Backtrack):
            return ~(s.decrease_error <= self.atol) & (s.iter_num <= max_steps)

        def backtrack(s: _Backtrack) -> _Backtrack:
            # The first trial is the initial guess itself; later ones shrink it.
            lr = jnp.where(s.iter_num > 0, self.decrease_factor * s.learning_rate, s.learning_rate)
            lr = lr.astype(dtype)
            trial = _add_scale(params, lr, updates)
            if self.store_grad:
                new_value, linear = jax.linearize(fn, trial)
                error = self._decrease_error(lr, slope, value, new_value)
                new_grad = jax.lax.cond(
                    (error <= self.atol) | (s.iter_num == max_steps),
                    lambda: _cast_like(
                        jax.linear_transpose(linear, trial)(jnp.ones_like(new_value))[0],
                        s.new_grad,
                    ),
                    lambda: s.new_grad,
                )
            else:
                new_value = fn(trial)
                error = self._decrease_error(lr, slope, value, new_value)
                new_grad = s.new_grad
            return _cast_like(_Backtrack(lr, new_value, new_grad, error, s.iter_num + 1), s)

        start = jnp.minimum(self.increase_factor * previous, self.max_learning_rate)
        carry = _Backtrack(
            learning_rate=start.astype(dtype),
            new_value=value,
            new_grad=_zeros_like_state(params),
            decrease_error=jnp.full((), jnp.inf, dtype),
            iter_num=jnp.zeros((), jnp.int32),
        )
        found = jax.lax.while_loop(searching, backtrack, carry)
        # A search that never saw a finite loss takes no step rather than a NaN one.
        lr = jnp.where(jnp.isinf(found.decrease_error), 0.0, found.learning_rate).astype(dtype)
        if self.verbose:
            _cond_print(
                found.decrease_error > self.atol,
                "INFO: optax.scale_by_backtracking_linesearch:\n"
                "Backtracking linesearch failed to find a stepsize ensuring sufficent decrease.\n"
                "Value at current params: {value},\nSlope along update direction: {slope}\n"
                "Stepsize: {stepsize}\nDecrease Error: {decrease_error}",
                stepsize=found.learning_rate,
                decrease_error=found.decrease_error,
                value=value,
                slope=slope,
            )
            _cond_print(
                jnp.isinf(found.decrease_error),
                "Using a stepsize of 0 to avoid infinite or nan values.",
            )
        new_state = ScaleByBacktrackingLinesearchState(
            learning_rate=lr,
            value=found.new_value,
            grad=found.new_grad if self.store_grad else None,
            info=BacktrackingLinesearchInfo(
                num_linesearch_steps=found.iter_num, decrease_error=found.decrease_error
            ),
        )
        return _scaled(lr, updates), _cast_like(new_state, jax.eval_shape(self.init, params))


scale_by_backtracking_linesearch = ScaleByBacktrackingLinesearch


# ---------------------------------------------------------------------------------------------
# Zoom (strong Wolfe)


class ZoomLinesearchInfo(NamedTuple):
    """``num_linesearch_steps``: loss-and-gradient evaluations of the latest search;
    ``decrease_error`` and ``curvature_error``: by how much its step misses the sufficient
    decrease and the curvature conditions (0 when it meets them). optax's fields."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """optax's fields: ``learning_rate``, the step size found; ``value`` and ``grad``, the loss
    and its gradient there (what :func:`value_and_grad_from_state` reads); ``info``, the
    search's :class:`ZoomLinesearchInfo`."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates
    info: ZoomLinesearchInfo


@state_class
class _ZoomSearch:
    """The loop carry of one zoom search (optax's ``ZoomLinesearchState``, field for field).

    ``low``/``high`` bracket a step satisfying both conditions with ``f(low) <= f(high)``
    (``low`` may be the larger step); ``cubic_ref`` is the third point of the cubic model;
    ``safe_*`` is the best step seen that meets the decrease condition alone, the fallback."""

    count: jax.Array
    stepsize: jax.Array
    value: jax.Array
    grad: Updates
    slope: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    error: jax.Array
    interval_found: jax.Array
    done: jax.Array
    failed: jax.Array
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array
    value_cubic_ref: jax.Array
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Updates


def _cubicmin(a, fa, fpa, b, fb, c, fc):
    """The minimiser of the cubic through ``(a, fa)``, ``(b, fb)``, ``(c, fc)`` with slope
    ``fpa`` at ``a`` (NaN when it has none, which the caller rejects); scipy's formula."""
    db, dc = b - a, c - a
    denominator = (db * dc) ** 2 * (db - dc)
    d1 = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    rhs = jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc])
    A, B = jnp.dot(d1, rhs, precision=jax.lax.Precision.HIGHEST) / denominator
    return a + (-B + jnp.sqrt(B * B - 3.0 * A * fpa)) / (3.0 * A)


def _quadmin(a, fa, fpa, b, fb):
    """The minimiser of the quadratic through ``(a, fa)``, ``(b, fb)`` with slope ``fpa`` at
    ``a``."""
    db = b - a
    curvature = (fb - fa - fpa * db) / (db**2)
    return a - fpa / (2.0 * curvature)


@transformation("scale_by_zoom_linesearch")
class ScaleByZoomLinesearch(_LineSearch):
    r"""Scales the updates by a step size meeting the strong Wolfe conditions, found by
    bracketing and zooming (Nocedal & Wright's Algorithms 3.5 and 3.6).

    With :math:`\phi(\eta) = f(w + \eta u)` the loss along the incoming updates :math:`u`
    (``value_fn`` at the parameters :math:`w` moved by :math:`\eta u`), the step size
    :math:`\eta` must meet, up to :math:`\epsilon` (``tol``),

    .. math::
        \phi(\eta) \le \phi(0) + c_1\,\eta\,\phi'(0) \quad\text{(sufficient decrease)},
        \qquad |\phi'(\eta)| \le c_2\,|\phi'(0)| \quad\text{(curvature)},

    where :math:`\phi'(\eta) = \mathrm{Re}\langle \nabla f(w + \eta u), u\rangle`. Near a
    minimum, where :math:`\phi(\eta) \le \phi(0) + c_3|\phi(0)|`, the sufficient decrease may
    instead hold in Hager and Zhang's approximate form
    :math:`\phi'(\eta) \le (2 c_1 - 1)\,\phi'(0)`, which float rounding cannot defeat.

    1. *Bracketing*: try :math:`\eta_0` (1, or the previous step size with
       ``initial_guess_strategy="keep"``), then :math:`\eta_{i+1} = \kappa\,\eta_i` (capped
       at ``max_learning_rate``) until a step meets both conditions, breaks the decrease
       condition, does not decrease :math:`\phi` further, or has :math:`\phi' \ge 0`; that
       step and the previous one bracket an acceptable step.
    2. *Zoom*: inside the bracket :math:`[\ell, h]` (:math:`\phi(\ell) \le \phi(h)`) try the
       minimiser of the cubic through :math:`\ell, h` and the previous bracket end, when it
       lies in the middle 60% of the bracket; else the minimiser of the quadratic through
       :math:`\phi(\ell), \phi'(\ell), \phi(h)`, when in the middle 80%; else the midpoint;
       and shrink the bracket with the trial point's value and slope.

    After ``max_linesearch_steps`` evaluations, or when the bracket is narrower than
    ``stepsize_precision`` with a step meeting the decrease condition found, the search
    returns that safe step (the lowest loss among them) when there is one, else the last
    step tried. The output is :math:`\eta u`.

    Args:
      max_linesearch_steps: the most loss-and-gradient evaluations (an int >= 1).
      max_learning_rate: the largest step size tried, or None (default) for no bound.
      tol: :math:`\epsilon \ge 0`, default 0.
      increase_factor: :math:`\kappa > 0`, default 2.
      slope_rtol: :math:`c_1 \ge 0`, default 1e-4.
      curv_rtol: :math:`c_2 \ge 0`, default 0.9 (``inf`` drops the curvature condition).
      approx_dec_rtol: :math:`c_3 \ge 0`, default 1e-6; None keeps the Armijo condition only.
      stepsize_precision: the narrowest bracket searched, default 1e-5.
      initial_guess_strategy: ``"keep"`` (default; for gradient descent) or ``"one"`` (for
        quasi-Newton directions such as L-BFGS's, whose natural step is 1).
      verbose: print a diagnosis when the search fails (default False).

    ``update`` needs ``value=`` (:math:`\phi(0)`), ``grad=`` (:math:`\nabla f(w)`) and
    ``value_fn=`` (:math:`f`); other keyword arguments go to ``value_fn``. The state keeps the
    loss and gradient at the accepted step, so :func:`value_and_grad_from_state` saves one
    gradient evaluation per step.

    Reference: Nocedal & Wright, "Numerical Optimization" (2006), Algorithms 3.5-3.6 and
    eq. (3.7); Hager & Zhang, "Algorithm 851: CG_DESCENT" (2006), eq. (23). Same as
    ``optax.scale_by_zoom_linesearch`` (same state fields, same trial points), except that the
    step size and loss are kept in at least float32 for low-precision parameters and missing
    ``value``/``grad``/``value_fn`` raise a ValueError naming the argument. Differs from the
    book in the approximate decrease condition (Hager and Zhang's), the safeguarded fallback
    step instead of failing, and the cubic through three points (scipy's) instead of the
    book's cubic through two points and their slopes.
    """

    complex_params = True

    max_linesearch_steps: int
    max_learning_rate: float | None = None
    tol: float = 0.0
    increase_factor: float = 2.0
    slope_rtol: float = 1e-4
    curv_rtol: float = 0.9
    approx_dec_rtol: float | None = 1e-6
    stepsize_precision: float = 1e-5
    initial_guess_strategy: str = "keep"
    verbose: bool = False

    def __post_init__(self):
        check_int("max_linesearch_steps", self.max_linesearch_steps, low=1)
        positive: dict[str, Any] = dict(low=0.0, low_open=True, allow_schedule=False)
        nonnegative: dict[str, Any] = dict(low=0.0, allow_schedule=False)
        check_number("max_learning_rate", self.max_learning_rate, allow_none=True, **positive)
        check_number("tol", self.tol, **nonnegative)
        check_number("increase_factor", self.increase_factor, **positive)
        check_number("slope_rtol", self.slope_rtol, **nonnegative)
        check_number("curv_rtol", self.curv_rtol, **nonnegative)
        check_number("approx_dec_rtol", self.approx_dec_rtol, allow_none=True, **nonnegative)
        check_number("stepsize_precision", self.stepsize_precision, **nonnegative)
        if self.initial_guess_strategy not in ("one", "keep"):
            raise ValueError(
                f"initial_guess_strategy must be 'one' or 'keep', got "
                f"{self.initial_guess_strategy!r}"
            )
        check_bool("verbose", self.verbose)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        dtype = scalar_dtype(params)
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.ones((), dtype),
            value=jnp.full((), jnp.inf, dtype),
            grad=_zeros_like_state(params),
            info=ZoomLinesearchInfo(
                num_linesearch_steps=jnp.zeros((), jnp.int32),
                decrease_error=jnp.full((), jnp.inf, dtype),
                curvature_error=jnp.full((), jnp.inf, dtype),
            ),
        )

    # -- the two conditions --------------------------------------------------------------

    def _decrease_error(self, stepsize, value, slope, value_init, slope_init):
        error = value - value_init - self.slope_rtol * stepsize * slope_init
        if self.approx_dec_rtol is not None:
            approximate = slope - (2 * self.slope_rtol - 1.0) * slope_init
            # Only near the minimum, where the loss is within c3 |f(w)| of the start.
            near = value - value_init - self.approx_dec_rtol * jnp.abs(value_init)
            error = jnp.minimum(jnp.maximum(approximate, near), error)
        error = jnp.maximum(error, 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def _curvature_error(self, slope, slope_init):
        error = jnp.maximum(jnp.abs(slope) - self.curv_rtol * jnp.abs(slope_init), 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    # -- one search ------------------------------------------------------------------------

    def _search(self, fn, params, updates, value, grad, guess, dtype):
        value_and_grad = jax.value_and_grad(fn)

        def on_line(stepsize):
            point_value, point_grad = value_and_grad(_add_scale(params, stepsize, updates))
            slope = _real_vdot(jax.tree.map(jnp.conj, point_grad), updates)
            return point_value.astype(dtype), point_grad, slope.astype(dtype)

        slope_init = _real_vdot(updates, grad).astype(dtype)
        value_init = value
        tol, max_steps = self.tol, self.max_linesearch_steps

        def errors(stepsize, v, s):
            d = self._decrease_error(stepsize, v, s, value_init, slope_init)
            c = self._curvature_error(s, slope_init)
            return d, c, jnp.maximum(d, c)

        def bracket(st: _ZoomSearch) -> _ZoomSearch:
            stepsize = jnp.where(st.count == 0, guess, self.increase_factor * st.stepsize)
            if self.max_learning_rate is not None:
                at_max = stepsize >= self.max_learning_rate
                stepsize = jnp.minimum(stepsize, self.max_learning_rate)
            else:
                at_max = jnp.asarray(False)
            stepsize = stepsize.astype(dtype)
            v, g, s = on_line(stepsize)
            d, c, e = errors(stepsize, v, s)
            safe = _where(
                d <= tol,
                (stepsize, v, g),
                (st.safe_stepsize, st.safe_value, st.safe_grad),
            )
            new_is_high = (d > 0.0) | ((v >= st.value) & (st.count > 0))
            new_is_low = (s >= 0.0) & ~new_is_high
            previous, new = (st.stepsize, st.value, st.slope), (stepsize, v, s)
            low = _where(new_is_low, new, previous)
            high = _where(new_is_low, previous, new)
            found = new_is_high | new_is_low | (e <= tol)
            # At the largest step with no bracket, a larger step would be needed for the
            # curvature condition: stop with this one.
            done = (e <= tol) | (at_max & ~found)
            if self.verbose:
                _cond_print(
                    at_max & ~found,
                    "INFO: optax.scale_by_zoom_linesearch:\n"
                    "Value at current params: {value_init}\n"
                    "Slope along update direction: {slope_init}\n"
                    "Stepsize reached: {stepsize}\nDecrease Error: {decrease_error}\n"
                    "Curvature Error: {curvature_error}"
                    + FLAG_INTERVAL_NOT_FOUND
                    + "\n"
                    + FLAG_CURVATURE_COND_NOT_SATISFIED,
                    value_init=value_init,
                    slope_init=slope_init,
                    stepsize=stepsize,
                    decrease_error=d,
                    curvature_error=c,
                )
            return _ZoomSearch(
                count=safe_increment(st.count),
                stepsize=stepsize,
                value=v,
                grad=g,
                slope=s,
                decrease_error=d,
                curvature_error=c,
                error=e,
                interval_found=found,
                done=done,
                failed=(st.count + 1 >= max_steps) & ~done,
                low=low[0],
                value_low=low[1],
                slope_low=low[2],
                high=high[0],
                value_high=high[1],
                slope_high=high[2],
                cubic_ref=low[0],
                value_cubic_ref=low[1],
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def zoom(st: _ZoomSearch) -> _ZoomSearch:
            low, high = st.low, st.high
            width = jnp.abs(high - low)
            left, right = jnp.minimum(low, high), jnp.maximum(low, high)
            cubic = _cubicmin(
                low,
                st.value_low,
                st.slope_low,
                high,
                st.value_high,
                st.cubic_ref,
                st.value_cubic_ref,
            )
            use_cubic = (cubic > left + 0.2 * width) & (cubic < right - 0.2 * width)
            quad = _quadmin(low, st.value_low, st.slope_low, high, st.value_high)
            use_quad = ~use_cubic & (quad > left + 0.1 * width) & (quad < right - 0.1 * width)
            middle = jnp.where(use_cubic, cubic, jnp.where(use_quad, quad, (low + high) / 2.0))
            middle = middle.astype(dtype)
            v, g, s = on_line(middle)
            d, c, e = errors(middle, v, s)
            safe = _where(
                (d <= tol) & (v < st.safe_value),
                (middle, v, g),
                (st.safe_stepsize, st.safe_value, st.safe_grad),
            )
            done = e <= tol
            middle_is_high = (d > 0.0) | (v >= st.value_low)
            low_is_high = (s * (high - low) >= 0.0) & ~middle_is_high
            new, old_low, old_high = (
                (middle, v, s),
                (low, st.value_low, st.slope_low),
                (high, st.value_high, st.slope_high),
            )
            new_high = _where(low_is_high, old_low, _where(middle_is_high, new, old_high))
            new_low = _where(middle_is_high, old_low, new)
            ref = _where(
                middle_is_high | low_is_high,
                (high, st.value_high),
                (low, st.value_low),
            )
            # A bracket narrower than the precision ends the search only once a step with
            # sufficient decrease is in hand: very steep losses need tiny steps.
            stuck = (st.count + 1 >= max_steps) | (
                (width <= self.stepsize_precision) & (safe[0] > 0.0)
            )
            if self.verbose:
                _cond_print(
                    stuck & ~done & (width <= self.stepsize_precision),
                    FLAG_INTERVAL_TOO_SMALL + " Interval length: {interval_length}.",
                    interval_length=width,
                )
            return _ZoomSearch(
                count=safe_increment(st.count),
                stepsize=middle,
                value=v,
                grad=g,
                slope=s,
                decrease_error=d,
                curvature_error=c,
                error=e,
                interval_found=st.interval_found,
                done=done,
                failed=stuck & ~done,
                low=new_low[0],
                value_low=new_low[1],
                slope_low=new_low[2],
                high=new_high[0],
                value_high=new_high[1],
                slope_high=new_high[2],
                cubic_ref=ref[0],
                value_cubic_ref=ref[1],
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def fall_back(st: _ZoomSearch) -> _ZoomSearch:
            # The best step with sufficient decrease, else (nothing finite seen either) the
            # last one tried.
            use_safe = (st.safe_stepsize > 0.0) | jnp.isinf(st.decrease_error)
            stepsize, v, g = _where(
                use_safe,
                (st.safe_stepsize, st.safe_value, st.safe_grad),
                (st.stepsize, st.value, st.grad),
            )
            if self.verbose:
                self._diagnose(st, slope_init)
            return _cast_like(dataclasses.replace(st, stepsize=stepsize, value=v, grad=g), st)

        def step(st: _ZoomSearch) -> _ZoomSearch:
            st = _cast_like(jax.lax.cond(st.interval_found, zoom, bracket, st), st)
            return jax.lax.cond(st.failed, fall_back, lambda x: x, st)

        zero = jnp.zeros((), dtype)
        infinity = jnp.full((), jnp.inf, dtype)
        start = _ZoomSearch(
            count=jnp.zeros((), jnp.int32),
            stepsize=zero,
            value=value,
            grad=grad,
            slope=slope_init,
            decrease_error=infinity,
            curvature_error=infinity,
            error=infinity,
            interval_found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            low=zero,
            value_low=value,
            slope_low=slope_init,
            high=zero,
            value_high=value,
            slope_high=slope_init,
            cubic_ref=zero,
            value_cubic_ref=value,
            safe_stepsize=zero,
            safe_value=value,
            safe_grad=grad,
        )
        return jax.lax.while_loop(lambda st: ~(st.done | st.failed), step, start)

    def _diagnose(self, st: _ZoomSearch, slope_init) -> None:
        """What ``verbose=True`` prints when a search ends without meeting both conditions."""
        _cond_print(
            st.safe_stepsize > 0.0,
            "INFO: optax.scale_by_zoom_linesearch:\n"
            + FLAG_CURVATURE_COND_NOT_SATISFIED
            + " Stepsize ensuring sufficient decrease: {safe_stepsize}.",
            safe_stepsize=st.safe_stepsize,
        )
        no_step = st.safe_stepsize <= 0.0
        descent = slope_init < 0.0
        _cond_print(no_step, FLAG_NO_STEPSIZE_FOUND)
        _cond_print(
            no_step & ~descent,
            FLAG_NOT_A_DESCENT_DIRECTION + "The slope (={slope_init}) at stepsize=0 should be "
            "negative",
            slope_init=slope_init,
        )
        _cond_print(
            no_step & descent,
            "Consider augmenting the maximal number of linesearch iterations.",
        )
        _cond_print(
            no_step & jnp.isinf(st.decrease_error),
            "Cannot even make a step without getting Inf or Nan. The linesearch won't make a "
            "step and the optimizer is stuck.",
        )

    def _step(self, value_fn, updates, learning_rate, params, value, grad, fn_kwargs):
        fn = functools.partial(value_fn, **fn_kwargs)
        dtype = scalar_dtype(params)
        previous = jnp.asarray(learning_rate).astype(dtype)
        guess = previous if self.initial_guess_strategy == "keep" else jnp.ones((), dtype)
        grad = _cast_like(grad, _zeros_like_state(params))
        found = self._search(
            fn, params, updates, jnp.asarray(value).astype(dtype), grad, guess, dtype
        )
        new_state = ScaleByZoomLinesearchState(
            learning_rate=found.stepsize,
            value=found.value,
            grad=found.grad,
            info=ZoomLinesearchInfo(
                num_linesearch_steps=found.count,
                decrease_error=found.decrease_error,
                curvature_error=found.curvature_error,
            ),
        )
        return _scaled(found.stepsize, updates), _cast_like(
            new_state, jax.eval_shape(self.init, params)
        )


scale_by_zoom_linesearch = ScaleByZoomLinesearch


# ---------------------------------------------------------------------------------------------
# Reusing the line search's last evaluation


def value_and_grad_from_state(
    value_fn: Callable[..., jax.Array],
) -> Callable[..., tuple[jax.Array, Updates]]:
    """``jax.value_and_grad(value_fn)``, except that it returns the ``value`` and ``grad`` a
    line search left in the optimizer state (the loss and gradient at the parameters it moved
    to) instead of computing them again; called as ``f(params, *args, state=state,
    **kwargs)``.

    When the stored value is NaN or infinite (a fresh state), it computes them. Same as
    ``optax.value_and_grad_from_state``: only for deterministic losses, where the loss the
    search saw is the loss at the new parameters.

    Raises:
      ValueError: when the state has no ``value`` or ``grad`` (no line search, or a
        backtracking search without ``store_grad=True``).
      KeyError: when it has several (two line searches in one chain).
    """

    def value_and_grad(params: Params, *fn_args, state, **fn_kwargs):
        values = tree_get_all_with_path(state, "value")
        grads = tree_get_all_with_path(state, "grad")
        if len(values) > 1 or len(grads) > 1:
            raise KeyError("several line-search states hold a value or grad in this state")
        value = values[0][1] if values else None
        grad = grads[0][1] if grads else None
        if value is None or grad is None:
            raise ValueError(
                "Value or gradient not found in the state. Make sure that these values are "
                "stored in the state by the optimizer (a line search, with store_grad=True for "
                "the backtracking one)."
            )
        return jax.lax.cond(
            jnp.isfinite(value),
            lambda p, a, k: (value, grad),
            lambda p, a, k: _cast_like(jax.value_and_grad(value_fn)(p, *a, **k), (value, grad)),
            params,
            fn_args,
            fn_kwargs,
        )

    return value_and_grad
