"""optax's ``contrib.reduce_on_plateau``: scale the updates down when the loss stops improving."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MissingArgumentError,
    check_int,
    check_number,
    cond,
    transformation,
)
from gradchain.core.numerics import safe_increment
from gradchain.schedules.schedule import ReduceOnPlateau

__all__ = ["ReduceLROnPlateau", "ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    """optax's state, field for field and in its order.

    ``scale``: the factor the updates are multiplied by; ``best_value``: the lowest averaged
    loss so far; ``plateau_count``: accumulations without improvement; ``cooldown_count``:
    accumulations left before plateaus count again; ``count``: losses averaged in the current
    accumulation; ``avg_value``: their mean.
    """

    scale: jax.Array
    best_value: jax.Array
    plateau_count: jax.Array
    cooldown_count: jax.Array
    count: jax.Array  # type: ignore[assignment]  # optax's field name shadows tuple.count
    avg_value: jax.Array


_RULES = ("optax", "gradchain")


@transformation("reduce_on_plateau")
class ReduceLROnPlateau(GradientTransformation):
    r"""Scales the updates down by ``factor`` when the loss stops improving (optax's rule).

    ``update(updates, state, params, value=loss)`` takes the loss. Every ``accumulation_size``
    updates, the mean :math:`\bar L` of the losses passed is compared with the best mean so far
    :math:`L^*`; it improves when :math:`\bar L < (1 - r_{tol}) L^* - a_{tol}`. After
    ``patience`` accumulations without improvement the scale becomes
    :math:`\max(s\,\gamma, s_{min})` and the next ``cooldown`` accumulations do not count. The
    updates are :math:`u = s\,g`; place it after the optimizer:
    ``chain(adam(lr), reduce_on_plateau())``.

    Args:
      factor: :math:`\gamma \in (0, 1)`, default 0.1.
      patience: accumulations without improvement before a reduction, an integer
        :math:`\ge 1`; default 10.
      rtol: relative improvement :math:`r_{tol} \in [0, 1]`, default 1e-4.
      atol: absolute improvement :math:`a_{tol} \ge 0`, default 0 (not both 0).
      cooldown: accumulations to wait after a reduction, integer :math:`\ge 0`; default 0.
      accumulation_size: losses averaged per comparison, integer :math:`\ge 1`; default 1.
      min_scale: :math:`s_{min} \ge 0`, default 0.
      rule: keyword-only. ``"optax"`` (default): this transformation, with optax's state
        :class:`ReduceLROnPlateauState` (so optax code that builds, unpacks or indexes the state
        works) and optax's arithmetic on constant arguments. ``"gradchain"``: gradchain 0.1's
        :class:`~gradchain.schedules.schedule.ReduceOnPlateau`, whose float arguments are
        schedulable and, under ``with_live_hyperparams``, changeable with ``tree_set`` and whose state counts
        updates in ``count`` and the accumulation in ``accumulation_count``.

    Same as ``optax.contrib.reduce_on_plateau`` except: the scale and the averages are kept in
    float32 or wider (optax: the parameters' lowest and highest dtypes, so bfloat16
    parameters get a bfloat16 scale); the updates keep their dtype; invalid arguments raise a
    ``ValueError`` naming them, and a missing or non-scalar ``value`` is a ``ValueError``
    (optax: a ``TypeError`` from the missing keyword). PyTorch's ``ReduceLROnPlateau`` reduces
    after *more than* ``patience`` bad epochs: its ``patience=p`` is ``patience=p + 1`` here.

    Reference: optax.contrib.reduce_on_plateau; Keras/PyTorch ReduceLROnPlateau.
    """

    factor: float = 0.1
    patience: int = 10
    rtol: float = 1e-4
    atol: float = 0.0
    cooldown: int = 0
    accumulation_size: int = 1
    min_scale: float = 0.0

    def __post_init__(self):
        _check_arguments(self)

    def init(self, params) -> ReduceLROnPlateauState:
        # optax keeps the scale in the parameters' lowest dtype and the losses in their highest;
        # here both are at least float32 (and real), the losses in float64 when any parameter is.
        widths = {
            jnp.promote_types(
                jnp.finfo(jnp.result_type(p)).dtype if _is_float(p) else jnp.float32, jnp.float32
            )
            for p in jax.tree.leaves(params)
        } or {jnp.promote_types(jnp.asarray(0.0).dtype, jnp.float32)}
        low, high = min(widths, key=lambda d: d.itemsize), max(widths, key=lambda d: d.itemsize)
        zero = jnp.zeros((), jnp.int32)
        return ReduceLROnPlateauState(
            scale=jnp.ones((), low),
            best_value=jnp.full((), jnp.inf, high),
            plateau_count=zero,
            cooldown_count=zero,
            count=zero,
            avg_value=jnp.zeros((), high),
        )

    def _new_plateau(self, state: ReduceLROnPlateauState) -> ReduceLROnPlateauState:
        # One comparison of the accumulated mean with the best: optax's _update_scale.
        improved = state.avg_value < (1 - self.rtol) * state.best_value - self.atol
        best = jnp.where(improved, state.avg_value, state.best_value).astype(state.best_value.dtype)
        plateau = jnp.where(improved, 0, safe_increment(state.plateau_count))
        cooling = state.cooldown_count > 0
        reduce = ~cooling & (plateau == self.patience)
        scale = jnp.maximum(
            jnp.where(reduce, state.scale * self.factor, state.scale), self.min_scale
        )
        return ReduceLROnPlateauState(
            scale=jnp.where(cooling, state.scale, scale).astype(state.scale.dtype),
            best_value=best,
            plateau_count=jnp.where(cooling | reduce, 0, plateau).astype(jnp.int32),
            cooldown_count=jnp.where(
                cooling, state.cooldown_count - 1, jnp.where(reduce, self.cooldown, 0)
            ).astype(jnp.int32),
            count=jnp.zeros((), jnp.int32),
            avg_value=jnp.zeros((), state.avg_value.dtype),
        )

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        value = _scalar_loss(value)
        # A state built with optax's class of the same fields is taken as it is.
        state = ReduceLROnPlateauState(*state)
        dt = state.avg_value.dtype
        count = safe_increment(state.count)
        avg = ((state.count * state.avg_value + value.astype(dt)) / count).astype(dt)
        state = state._replace(count=count, avg_value=avg)
        state = cond(count == self.accumulation_size, self._new_plateau, lambda s: s, state)
        scaled = jax.tree.map(lambda g: g * state.scale.astype(jnp.result_type(g)), updates)
        return scaled, state


def _is_float(p) -> bool:
    return jnp.issubdtype(jnp.result_type(p), jnp.inexact)


def _check_arguments(tx) -> None:
    check_number("factor", tx.factor, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int("patience", tx.patience, low=1)
    check_number("rtol", tx.rtol, low=0.0, high=1.0)
    check_number("atol", tx.atol, low=0.0)
    if tx.rtol == 0 and tx.atol == 0:
        raise ValueError("rtol and atol are both 0: at least one must be positive")
    check_int("cooldown", tx.cooldown, low=0)
    check_int("accumulation_size", tx.accumulation_size, low=1)
    check_number("min_scale", tx.min_scale, low=0.0)


def _scalar_loss(value) -> jax.Array:
    if value is None:
        raise MissingArgumentError(
            "reduce_on_plateau needs the loss: call update(updates, state, params, "
            "value=loss) (a chain passes value= on to it)"
        )
    value = jnp.asarray(value)
    if value.ndim != 0:
        raise ValueError(f"reduce_on_plateau: value must be a scalar loss, got shape {value.shape}")
    return value


def reduce_on_plateau(
    factor: float = 0.1,
    patience: int = 10,
    rtol: float = 1e-4,
    atol: float = 0.0,
    cooldown: int = 0,
    accumulation_size: int = 1,
    min_scale: float = 0.0,
    *,
    rule: str = "optax",
) -> GradientTransformation:
    """optax's ``reduce_on_plateau`` (see :class:`ReduceLROnPlateau`); ``rule="gradchain"``
    gives gradchain 0.1's variant, whose hyperparameters can be live."""
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    args: dict[str, Any] = dict(
        factor=factor,
        patience=patience,
        rtol=rtol,
        atol=atol,
        cooldown=cooldown,
        accumulation_size=accumulation_size,
        min_scale=min_scale,
    )
    if rule == "gradchain":
        return ReduceOnPlateau(**args)
    return ReduceLROnPlateau(**args)
