"""Listwise ranking losses, as in ``optax.losses``: the last axis holds the items of a list."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_subdtype

__all__ = ["ranking_softmax_loss"]


def ranking_softmax_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    where: jax.Array | None = None,
    weights: jax.Array | None = None,
    reduce_fn: Callable[..., jax.Array] | None = jnp.mean,
) -> jax.Array:
    """ListNet's softmax loss (Cao et al., 2007): ``-sum_i y_i log softmax(s)_i`` per list.

    ``where`` masks items out of a list; ``weights`` scale the labels; ``reduce_fn`` (default
    the mean over lists, ignoring fully masked ones) reduces the per-list losses, ``None``
    keeps them (0 for fully masked lists).
    """
    check_subdtype(logits, jnp.floating)
    labels = labels.astype(logits.dtype)
    if where is not None:
        labels = jnp.where(where, labels, jnp.zeros_like(labels))
        logits = jnp.where(where, logits, -jnp.ones_like(logits) * jnp.inf)
    if weights is not None:
        labels *= weights
    loss = -jnp.sum(labels * jax.nn.log_softmax(logits, axis=-1), axis=-1, where=where)
    list_valid = None if where is None else jnp.any(where, axis=-1)
    if reduce_fn is None:
        return loss if list_valid is None else jnp.where(list_valid, loss, 0.0)
    out = reduce_fn(loss, where=list_valid)
    if reduce_fn is jnp.mean:
        # The mean over no valid list is NaN; report 0 unless the losses themselves were NaN.
        out = jnp.where(jnp.isnan(out) & ~jnp.any(jnp.isnan(loss)), 0.0, out)
    return out
