"""Fenchel-Young losses (Blondel et al., 2020), as in ``optax.losses``."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["make_fenchel_young_loss"]


def make_fenchel_young_loss(
    max_fun: Callable[..., jax.typing.ArrayLike],
) -> Callable[..., jax.Array]:
    """The Fenchel-Young loss ``f(scores) - <targets, scores>`` of a convex ``max_fun``.

    ``max_fun(scores, *args, **kwargs)`` maps a vector to a scalar (``logsumexp`` gives the
    softmax cross-entropy); the returned loss maps over leading dimensions of ``scores`` and
    ``targets`` and returns one value per vector.
    """
    vdot_last = jnp.vectorize(jnp.vdot, signature="(n),(n)->()")
    max_last = jnp.vectorize(max_fun, signature="(n)->()")

    def fenchel_young_loss(
        scores: jax.typing.ArrayLike, targets: jax.typing.ArrayLike, *args: Any, **kwargs: Any
    ) -> jax.Array:
        return max_last(scores, *args, **kwargs) - vdot_last(targets, scores)

    return fenchel_young_loss
