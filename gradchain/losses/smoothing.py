"""Label smoothing, as in ``optax.losses``."""

from typing import cast

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_subdtype

__all__ = ["smooth_labels"]


def smooth_labels(
    labels: jax.Array,
    alpha: jax.typing.ArrayLike,
    *,
    axis: int | tuple[int, ...] | None = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """``(1 - alpha) * labels + alpha / K`` (Szegedy et al., 2016), ``K`` the number of classes
    along ``axis`` (or the number of unmasked ones when ``where`` is given)."""
    check_subdtype(labels, jnp.floating)
    classes = jnp.size(labels, axis) if where is None else jnp.sum(where, axis, keepdims=True)
    return cast(jax.Array, (1.0 - alpha) * labels + alpha / classes)
