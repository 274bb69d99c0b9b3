"""Wrappers that run a transformation only at the steps a condition picks.

``conditionally_transform`` passes the updates through unchanged at the other steps;
``conditionally_mask`` sets them to zero. Both keep the inner state unchanged when the inner
transformation does not run, and count every call in ``step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    _call_update,
    check_bool,
    cond,
    state_class,
    transformation,
)
from gradchain.core.numerics import init_count, safe_increment

__all__ = [
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "conditionally_mask",
    "conditionally_transform",
]


class ConditionFn(Protocol):
    """``should_transform_fn(step, **extra_args) -> bool``: ``step`` counts the previous calls
    of ``update`` (an int32 scalar); the result is a boolean scalar."""

    def __call__(self, step: jax.Array, **extra_args: Any) -> jax.typing.ArrayLike: ...


def _check_wrapper_args(tx) -> None:
    if not (hasattr(tx.inner, "init") and hasattr(tx.inner, "update")):
        raise TypeError(
            f"inner must be a gradient transformation (with init and update), got {tx.inner!r}"
        )
    if not callable(tx.should_transform_fn):
        raise TypeError(
            "should_transform_fn must be a function of the step counter, got "
            f"{tx.should_transform_fn!r}"
        )
    check_bool("forward_extra_args", tx.forward_extra_args)


def _run_if(tx, updates, inner_state, step, params, extra_args, skipped: Callable):
    """``inner.update`` where ``should_transform_fn(step)`` holds, else ``skipped()``."""
    condition_args = extra_args if tx.forward_extra_args else {}
    run = jnp.asarray(tx.should_transform_fn(step, **condition_args))
    if run.shape != () or not (run.dtype == jnp.bool_ or jnp.issubdtype(run.dtype, jnp.integer)):
        raise ValueError(
            "should_transform_fn must return a boolean scalar, got shape "
            f"{run.shape} and dtype {run.dtype}"
        )

    def inner_update():
        return _call_update(tx.inner, updates, inner_state, params, extra_args)

    return cond(run.astype(bool), inner_update, skipped)


@state_class
class ConditionallyTransformState:
    """``inner_state``: the wrapped transformation's state; ``step``: calls of ``update`` so far
    (int32, saturating)."""

    inner_state: Any
    step: jax.Array


@transformation("conditionally_transform")
class ConditionallyTransform(GradientTransformation):
    r"""Runs ``inner`` at the steps ``should_transform_fn`` picks; the updates pass through
    unchanged at the others.

    With :math:`k` the number of earlier calls of ``update`` (0 at the first),

    .. math:: (u, s') = \text{inner}(g, s) \text{ if } f(k) \text{ else } (g, s)

    Args:
      inner: the transformation to run.
      should_transform_fn: :math:`f`, a function of the int32 step counter :math:`k` returning
        a boolean scalar (``lambda step: step % 10 == 0``).
      forward_extra_args: also pass ``update``'s extra keyword arguments to :math:`f`
        (default False).

    ``inner`` must return updates of the same structure, shapes and dtypes as its input (the
    two branches of a ``lax.cond``). Same as ``optax.conditionally_transform``; use
    :func:`conditionally_mask` for zero updates at the skipped steps.
    """

    inner: Any
    should_transform_fn: Callable
    forward_extra_args: bool = False

    def __post_init__(self):
        _check_wrapper_args(self)

    def init(self, params):
        return ConditionallyTransformState(inner_state=self.inner.init(params), step=init_count())

    def update(self, updates, state, params=None, **extra_args):
        updates, inner_state = _run_if(
            self,
            updates,
            state.inner_state,
            state.step,
            params,
            extra_args,
            lambda: (updates, state.inner_state),
        )
        return updates, ConditionallyTransformState(
            inner_state=inner_state, step=safe_increment(state.step)
        )


conditionally_transform = ConditionallyTransform


@state_class
class ConditionallyMaskState:
    """``step``: calls of ``update`` so far (int32, saturating); ``inner_state``: the wrapped
    transformation's state."""

    step: jax.Array
    inner_state: Any


@transformation("conditionally_mask")
class ConditionallyMask(GradientTransformation):
    r"""Runs ``inner`` at the steps ``should_transform_fn`` picks; the updates are zero at the
    others.

    With :math:`k` the number of earlier calls of ``update`` (0 at the first),

    .. math:: (u, s') = \text{inner}(g, s) \text{ if } f(k) \text{ else } (0, s)

    so a skipped step leaves the parameters (``p + 0``) and the inner state as they were.

    Args:
      inner: the transformation to run.
      should_transform_fn: :math:`f`, a function of the int32 step counter :math:`k` returning
        a boolean scalar.
      forward_extra_args: also pass ``update``'s extra keyword arguments to :math:`f`
        (default False).

    Same as ``optax.conditionally_mask``; the zeros are shaped like ``inner``'s output (which
    is the updates' shape for every transformation but ``lookahead``).
    """

    inner: Any
    should_transform_fn: Callable
    forward_extra_args: bool = False

    def __post_init__(self):
        _check_wrapper_args(self)

    def init(self, params):
        return ConditionallyMaskState(step=init_count(), inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra_args):
        def zeros():
            shape = jax.eval_shape(
                lambda: _call_update(self.inner, updates, state.inner_state, params, extra_args)
            )[0]
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shape), state.inner_state

        updates, inner_state = _run_if(
            self, updates, state.inner_state, state.step, params, extra_args, zeros
        )
        return updates, ConditionallyMaskState(
            step=safe_increment(state.step), inner_state=inner_state
        )


conditionally_mask = ConditionallyMask
