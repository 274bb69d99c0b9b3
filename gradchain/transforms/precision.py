"""The precision of the state: optax's by default, float32 for low-precision parameters on
request.

By default every transformation keeps its state in the dtype of the parameter it mirrors and
computes in that dtype, as optax does (a bfloat16 parameter gets a bfloat16 Adam ``mu`` and
``nu``), so that a shared name gives optax's trajectory in bfloat16 too. :func:`with_float32_state`
is gradchain's option for any transformation: its state and arithmetic in float32 for bfloat16
and float16 leaves (ALGORITHMS.md §14: a bfloat16 second moment with ``b2 = 0.999`` never decays).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import GradientTransformation, OptState, Params, Updates, transformation

__all__ = ["with_float32_state"]


def _is_low_precision(dtype) -> bool:
    dtype = jnp.dtype(dtype)
    return jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32


def _upcast_leaf(x):
    """``x`` in float32 when it is a bfloat16/float16 array or ``ShapeDtypeStruct``; else as is."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or not _is_low_precision(dtype):
        return x
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=x.sharding)
    return jnp.asarray(x).astype(jnp.float32)


def _upcast(tree):
    return None if tree is None else jax.tree.map(_upcast_leaf, tree)


def _downcast(new, *references):
    """``new`` (the inner updates) leaf by leaf in the dtype of the first of ``references`` (the
    updates given, then the parameters) of its structure, where that leaf is low precision.

    The parameters serve when the updates come out in another container than they went in
    (``lookahead`` takes a gradient and returns updates of ``LookaheadParams``)."""

    def down(n, o):
        dtype = getattr(o, "dtype", None)
        if dtype is None or not _is_low_precision(dtype) or getattr(n, "dtype", dtype) == dtype:
            return n
        return n.astype(dtype)

    structure = jax.tree.structure(new)
    for reference in references:
        if reference is not None and jax.tree.structure(reference) == structure:
            return jax.tree.map(down, new, reference)
    return new


@transformation("with_float32_state")
class WithFloat32State(GradientTransformation):
    r"""``inner`` run in float32 for bfloat16 and float16 leaves: state and arithmetic.

    .. math:: (u, s_{t+1}) = \mathrm{inner.update}(\mathrm{f32}(g), s_t, \mathrm{f32}(p)),
              \qquad \text{returned: } \mathrm{cast}(u, \mathrm{dtype}(g))

    ``init`` gives ``inner`` the parameters upcast to float32 (``ShapeDtypeStruct`` s too), so
    every moment, accumulator and copy of a low-precision parameter is float32; ``update``
    hands it the gradients and parameters upcast and rounds the updates back to each gradient's
    dtype once, at the end. float32, float64, integer and complex leaves pass through as they
    are. The state is ``inner``'s state, in ``inner``'s layout (nothing is added), so it
    reads, checkpoints and ``tree_get`` s as ``inner``'s; it holds float32 where the default
    holds the parameter's dtype.

    This is gradchain's low-precision policy (ALGORITHMS.md §14), an option: by default every
    transformation keeps optax's dtypes (the parameter's) and arithmetic. It works on any
    transformation, gradchain's or optax's, and costs 4 bytes per state element where the
    default costs 2. An explicit dtype argument (``mu_dtype=``, ``accumulator_dtype=``) of the
    inner transformation still wins over it.
    """

    inner: Any

    def init(self, params: Params) -> OptState:
        return self.inner.init(_upcast(params))

    def update(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args
    ) -> tuple[Updates, OptState]:
        new, state = self.inner.update(_upcast(updates), state, _upcast(params), **extra_args)
        return _downcast(new, updates, params), state

    def laid_out(self, state):
        # The state is ``inner``'s, already in ``inner``'s layout.
        return state


def with_float32_state(tx: Any) -> WithFloat32State:
    """``tx`` with its state and arithmetic in float32 for bfloat16 and float16 parameters
    (see :class:`WithFloat32State`): gradchain's low-precision option, optax's dtypes being the
    default."""
    return WithFloat32State(tx)
