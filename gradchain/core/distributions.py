"""The diagonal Gaussian that search and perturbation methods sample from: optax's
``multi_normal``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.scipy.stats
import numpy as np

__all__ = ["MultiNormalDiagFromLogScale", "multi_normal"]


class MultiNormalDiagFromLogScale:
    r"""A Gaussian with independent coordinates, parameterised by its mean and log scale.

    .. math:: x = \mu + e^{s} \odot \varepsilon, \quad \varepsilon \sim \mathcal N(0, I),
              \qquad \log p(x) = \sum_i \log \mathcal N(x_i; \mu_i, e^{2 s_i})

    ``loc`` (:math:`\mu`) and ``log_scale`` (:math:`s`) broadcast against each other; their
    broadcast shape is the event shape, over which :meth:`log_prob` sums. optax's class of the
    same name (``optax._src.utils``), with the same attributes.
    """

    def __init__(self, loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike):
        loc_shape, scale_shape = np.shape(loc), np.shape(log_scale)
        try:
            self._param_shape = jax.lax.broadcast_shapes(loc_shape, scale_shape)
        except ValueError:
            raise ValueError(
                f"Incompatible shapes for broadcasting: loc has shape {loc_shape} and log_scale "
                f"has shape {scale_shape}"
            ) from None
        self._mean = jnp.asarray(loc)
        self._log_scale = jnp.asarray(log_scale)
        self._scale = jnp.exp(self._log_scale)

    def sample(self, shape: Sequence[int], key: jax.Array) -> jax.Array:
        """Samples of shape ``(*shape, *event_shape)``."""
        sample_shape = tuple(shape) + tuple(self._param_shape)
        return jax.random.normal(key, shape=sample_shape) * self._scale + self._mean

    def log_prob(self, x: jax.typing.ArrayLike) -> jax.Array:
        """The log density of ``x``, summed over the event axes."""
        log_prob = jax.scipy.stats.norm.logpdf(x, loc=self._mean, scale=self._scale)
        axes = tuple(-(i + 1) for i in range(len(self._param_shape)))
        return jnp.sum(log_prob, axis=axes)

    @property
    def log_scale(self) -> jax.Array:
        return self._log_scale

    @property
    def params(self) -> list[jax.Array]:
        """``[loc, log_scale]``, the differentiable parameters."""
        return [self._mean, self._log_scale]


def multi_normal(
    loc: jax.typing.ArrayLike, log_scale: jax.typing.ArrayLike
) -> MultiNormalDiagFromLogScale:
    """A diagonal Gaussian of mean ``loc`` and scale ``exp(log_scale)`` (see
    :class:`MultiNormalDiagFromLogScale`). Same as ``optax.multi_normal``."""
    return MultiNormalDiagFromLogScale(loc, log_scale)
