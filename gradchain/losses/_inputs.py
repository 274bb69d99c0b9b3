"""Argument checks shared by the loss functions, with optax's exception types and messages."""

import jax
import jax.numpy as jnp
import numpy as np


def check_subdtype(array, subdtype) -> None:
    """Raises ``TypeError`` unless ``array``'s dtype is a subtype of ``subdtype``."""
    dtype = jax.dtypes.result_type(array)
    if not jnp.issubdtype(dtype, subdtype):
        raise TypeError(
            f"Expected the input to have a dtype that is a subdtype of {subdtype}, "
            f"got {dtype} instead"
        )


def _shape(a) -> tuple[int, ...]:
    return a.shape if hasattr(a, "shape") else np.shape(a)


def check_shapes_equal(a, b) -> None:
    """Raises ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if _shape(a) != _shape(b):
        raise ValueError(f"Shape mismatch: got {_shape(a)} and {_shape(b)}.")


def check_rank(array, rank: int) -> None:
    """Raises ``ValueError`` unless ``array`` has ``rank`` dimensions."""
    if len(_shape(array)) != rank:
        raise ValueError(
            f"Expected the input to have rank {rank}, got {len(_shape(array))} instead"
        )
