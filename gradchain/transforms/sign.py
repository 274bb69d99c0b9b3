"""The sign of the updates: every coordinate moves by the same amount."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.core.base import EmptyState, GradientTransformation, transformation

__all__ = ["scale_by_sign"]


@transformation("scale_by_sign")
class ScaleBySign(GradientTransformation):
    r"""Replaces each coordinate of the updates by its sign: :math:`u_i = \mathrm{sign}(g_i)`.

    :math:`\mathrm{sign}(0) = 0`; for a complex coordinate the sign is :math:`g_i / |g_i|`
    (``jnp.sign``). A NaN stays NaN. State: :class:`EmptyState`.

    Reference: Bernstein et al., "signSGD: Compressed Optimisation for Non-Convex Problems"
    (2018). Same as ``optax.scale_by_sign``.
    """

    complex_params = True

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return jax.tree.map(jnp.sign, updates), state


scale_by_sign = ScaleBySign
