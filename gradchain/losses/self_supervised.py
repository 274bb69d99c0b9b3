"""Self-supervised and metric-learning losses, as in ``optax.losses``."""

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_subdtype
from gradchain.losses.regression import cosine_similarity

__all__ = ["ntxent", "triplet_margin_loss"]


def ntxent(
    embeddings: jax.Array, labels: jax.Array, temperature: jax.typing.ArrayLike = 0.07
) -> jax.Array:
    """Normalized temperature-scaled cross-entropy (SimCLR, Chen et al., 2020).

    For every ordered pair ``(i, j)`` of distinct embeddings with the same label, the
    cross-entropy of picking ``j`` among ``j`` and all embeddings with a different label, by
    cosine similarity over ``temperature``; averaged over the positive pairs.

    Raises:
      ValueError: when ``labels`` and ``embeddings`` differ in their leading dimension.
    """
    check_subdtype(embeddings, jnp.floating)
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            "Labels and embeddings must have the same leading dimension, found "
            f"{labels.shape[0]} for labels and {embeddings.shape[0]} for embeddings."
        )
    sims = (
        cosine_similarity(
            embeddings[None, :, :],
            embeddings[:, None, :],
            epsilon=jnp.finfo(embeddings.dtype).eps,
        )
        / temperature
    )
    same = labels[:, None] == labels[None, :]
    positives = same & ~jnp.eye(same.shape[0], dtype=bool)
    negative_sims = jnp.where(same, -jnp.inf, sims)
    positive_sims = jnp.where(positives, sims, -jnp.inf)
    # Shift by the row maximum for a stable softmax; the shift carries no gradient.
    row_max = jax.lax.stop_gradient(
        jnp.max(jnp.concatenate((negative_sims, positive_sims), axis=-1), axis=1, keepdims=True)
    )
    negative_sims, positive_sims = negative_sims - row_max, positive_sims - row_max
    denominator = jnp.sum(jnp.exp(negative_sims), axis=1, keepdims=True) + jnp.exp(positive_sims)
    log_softmax = positive_sims - jnp.log(denominator)
    return -jnp.where(positives, log_softmax, 0.0).sum() / positives.sum()


def triplet_margin_loss(
    anchors: jax.Array,
    positives: jax.Array,
    negatives: jax.Array,
    axis: int = -1,
    norm_degree: jax.typing.ArrayLike = 2,
    margin: jax.typing.ArrayLike = 1.0,
    eps: jax.typing.ArrayLike = 1e-6,
) -> jax.Array:
    """Triplet margin loss ``max(d(a, p) - d(a, n) + margin, 0)`` (Schroff et al., 2015).

    ``d(x, y) = (sum (x - y)**norm_degree + eps)**(1 / norm_degree)`` over ``axis``; the
    ``eps`` inside the root keeps the gradient finite at ``x = y`` (PyTorch adds it to the
    difference instead).
    """
    check_subdtype(anchors, jnp.floating)
    check_subdtype(positives, jnp.floating)
    check_subdtype(negatives, jnp.floating)

    def distance(x, y):
        return jnp.power(jnp.power(x - y, norm_degree).sum(axis) + eps, 1 / norm_degree)

    return jnp.maximum(distance(anchors, positives) - distance(anchors, negatives) + margin, 0)
