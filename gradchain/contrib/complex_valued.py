"""Complex parameters as pairs of real ones, for optimizers written for real numbers."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import GradientTransformation, _call_update, state_class, transformation

__all__ = ["SplitRealAndImaginaryState", "split_real_and_imaginary"]


class SplitRealAndImaginaryArrays(NamedTuple):
    """The real and imaginary parts of a complex leaf, two real leaves (a pytree node)."""

    real: Any
    imaginary: Any


def _split(x):
    if jnp.iscomplexobj(x):
        return SplitRealAndImaginaryArrays(jnp.real(x), jnp.imag(x))
    return x


def _merge(x):
    if isinstance(x, SplitRealAndImaginaryArrays):
        return jax.lax.complex(x.real, x.imaginary)
    return x


def _is_pair(x) -> bool:
    return isinstance(x, SplitRealAndImaginaryArrays)


@state_class
class SplitRealAndImaginaryState:
    """``inner_state``: the inner transformation's state, over the split parameters."""

    inner_state: Any


@transformation("split_real_and_imaginary")
class SplitRealAndImaginary(GradientTransformation):
    r"""Runs ``inner`` on every complex leaf :math:`z = a + ib` as the two real leaves
    :math:`(a, b)`, and merges its two updates back: :math:`u_z = u_a + i\,u_b`.

    An optimizer with a per-coordinate second moment then sees :math:`a` and :math:`b` as
    separate coordinates (:math:`v_a = \mathrm{EMA}(g_a^2)`, :math:`v_b = \mathrm{EMA}(g_b^2)`)
    rather than optax's complex convention of one :math:`\mathrm{EMA}(|g|^2)` per complex
    coordinate. Real leaves pass through as they are.

    Args:
      inner: any gradient transformation (gradchain's or optax's); the extra ``update``
        arguments reach it.

    State: optax's ``SplitRealAndImaginaryState``. Same as
    ``optax.contrib.split_real_and_imaginary``.
    """

    complex_params = True

    inner: Any

    def __post_init__(self):
        if not (hasattr(self.inner, "init") and hasattr(self.inner, "update")):
            raise TypeError(f"inner must be a gradient transformation, got {self.inner!r}")

    def init(self, params):
        return SplitRealAndImaginaryState(self.inner.init(jax.tree.map(_split, params)))

    def update(self, updates, state, params=None, **extra_args):
        split_params = None if params is None else jax.tree.map(_split, params)
        out, inner_state = _call_update(
            self.inner, jax.tree.map(_split, updates), state.inner_state, split_params, extra_args
        )
        return jax.tree.map(_merge, out, is_leaf=_is_pair), SplitRealAndImaginaryState(inner_state)


split_real_and_imaginary = SplitRealAndImaginary
