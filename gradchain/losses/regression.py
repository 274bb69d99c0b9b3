"""Regression losses and similarities, as in ``optax.losses``; elementwise unless they reduce
over ``axis``."""

import jax
import jax.numpy as jnp

from gradchain.losses._inputs import check_shapes_equal, check_subdtype

__all__ = [
    "cosine_distance",
    "cosine_similarity",
    "huber_loss",
    "l2_loss",
    "log_cosh",
    "squared_error",
]

Axis = int | tuple[int, ...] | None


def _errors(predictions, targets):
    return predictions if targets is None else predictions - targets


def squared_error(predictions: jax.Array, targets: jax.Array | None = None) -> jax.Array:
    """``(predictions - targets)**2`` elementwise (``predictions**2`` without targets).

    Unlike PyTorch's ``MSELoss`` there is no 1/2 and no mean; shapes must match exactly.
    """
    check_subdtype(predictions, jnp.floating)
    if targets is not None:
        check_shapes_equal(predictions, targets)
    return _errors(predictions, targets) ** 2


def l2_loss(predictions: jax.Array, targets: jax.Array | None = None) -> jax.Array:
    """Half the squared error, ``0.5 * (predictions - targets)**2``."""
    return 0.5 * squared_error(jnp.asarray(predictions), targets)


def huber_loss(
    predictions: jax.Array, targets: jax.Array | None = None, *, delta: jax.typing.ArrayLike = 1.0
) -> jax.Array:
    """Huber loss: ``e**2 / 2`` for ``|e| <= delta``, ``delta * (|e| - delta / 2)`` beyond."""
    check_subdtype(predictions, jnp.floating)
    abs_errors = jnp.abs(_errors(predictions, targets))
    quadratic = jnp.minimum(abs_errors, delta)
    return 0.5 * quadratic**2 + delta * (abs_errors - quadratic)


def log_cosh(predictions: jax.Array, targets: jax.Array | None = None) -> jax.Array:
    """``log(cosh(e))``, computed as ``logaddexp(e, -e) - log 2`` so it never overflows."""
    check_subdtype(predictions, jnp.floating)
    errors = _errors(predictions, targets)
    return jnp.logaddexp(errors, -errors) - jnp.log(2.0).astype(errors.dtype)


def cosine_similarity(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: Axis = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """``<a, b> / (||a|| ||b||)`` over ``axis``, each squared norm clipped below at ``epsilon``."""
    check_subdtype(predictions, jnp.floating)
    check_subdtype(targets, jnp.floating)

    def unit(x):
        sq = jnp.square(x).sum(axis=axis, where=where, keepdims=True)
        return x / jnp.sqrt(sq.clip(epsilon))

    return (unit(predictions) * unit(targets)).sum(axis=axis, where=where)


def cosine_distance(
    predictions: jax.Array,
    targets: jax.Array,
    *,
    epsilon: jax.typing.ArrayLike = 0.0,
    axis: Axis = -1,
    where: jax.Array | None = None,
) -> jax.Array:
    """``1 - cosine_similarity``."""
    check_subdtype(predictions, jnp.floating)
    check_subdtype(targets, jnp.floating)
    return 1.0 - cosine_similarity(predictions, targets, epsilon=epsilon, axis=axis, where=where)
