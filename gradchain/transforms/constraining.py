"""Constraints on the parameters, enforced through the updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    EmptyState,
    GradientTransformation,
    check_params_match,
    require_params,
    transformation,
)

__all__ = [
    "NonNegativeParamsState",
    "keep_params_nonnegative",
]

# optax's name for the state of keep_params_nonnegative, which keeps nothing.
NonNegativeParamsState = EmptyState


@transformation("keep_params_nonnegative")
class KeepParamsNonnegative(GradientTransformation):
    r"""Changes the updates so that no parameter becomes negative:
    :math:`u = -p` where :math:`p + g < 0`, else :math:`u = g`.

    A parameter the update would push below zero lands exactly on zero. Put it last in a chain
    (after the learning rate), where the updates are the steps ``apply_updates`` adds; it assumes
    the parameters start non-negative. Needs ``params``. State: :class:`EmptyState`.

    Same as ``optax.keep_params_nonnegative``.
    """

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)

        def keep(g, p):
            dt = jnp.promote_types(g.dtype, p.dtype)
            return jnp.where(p.astype(dt) + g.astype(dt) < 0, -p, g).astype(g.dtype)

        return jax.tree.map(keep, updates, params), state


keep_params_nonnegative = KeepParamsNonnegative
