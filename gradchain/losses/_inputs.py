"""Argument checks shared by the loss functions, with optax's exception types and messages."""

import jax
import jax.numpy as jnp
import numpy as np


def check_subdtype(array: jax.typing.ArrayLike, subdtype: jax.typing.DTypeLike) -> None:
    """Raises ``TypeError`` unless ``array``'s dtype is a subtype of ``subdtype``."""
    dtype = jax.dtypes.result_type(array)
    if not jnp.issubdtype(dtype, subdtype):
        raise TypeError(
            f"Expected the input to have a dtype that is a subdtype of {subdtype}, "
            f"got {dtype} instead"
        )


def _shape(a: jax.typing.ArrayLike) -> tuple[int, ...]:
    return a.shape if hasattr(a, "shape") else np.shape(a)


def check_shapes_equal(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if _shape(a) != _shape(b):
        raise ValueError(f"Shape mismatch: got {_shape(a)} and {_shape(b)}.")


def check_rank(array: jax.typing.ArrayLike, rank: int) -> None:
    """Raises ``ValueError`` unless ``array`` has ``rank`` dimensions."""
    if len(_shape(array)) != rank:
        raise ValueError(
            f"Expected the input to have rank {rank}, got {len(_shape(array))} instead"
        )
