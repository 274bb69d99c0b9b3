"""Annealed Gaussian noise added to the updates."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_number,
    state_class,
    transformation,
)
from gradchain.core.numerics import compute_dtype, init_count, safe_increment

__all__ = [
    "AddNoiseState",
    "add_noise",
]


def as_key(key, name: str) -> jax.Array:
    """A raw ``uint32[2]`` PRNG key from an int seed, a raw key or a typed key.

    States keep raw keys: plain arrays that every checkpoint format stores; they draw the same
    numbers as the typed key of the same seed.
    """
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.PRNGKey(key)
    # A seed as a 0-d integer array: what inject_hyperparams makes of key=0, traced under jit.
    if (
        isinstance(key, (jax.Array, np.ndarray))
        and key.shape == ()
        and jnp.issubdtype(key.dtype, jnp.integer)
    ):
        return jax.random.PRNGKey(key)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,):
        return key
    raise ValueError(f"{name}: key must be None, an int or a PRNG key, got {key!r}")


@state_class(extras=("hyperparams",))
class AddNoiseState:
    """``count``: updates done; ``rng_key``: the key the next noise is drawn from;
    ``hyperparams``: eta and gamma as used last."""

    count: jax.Array
    rng_key: jax.Array
    hyperparams: dict | None


@transformation("add_noise", hyperparams=("eta", "gamma"))
class AddNoise(GradientTransformation):
    r"""Adds Gaussian noise whose variance decays with the step number:

    .. math::
        u_t = g_t + \sigma_t\, z_t, \qquad \sigma_t^2 = \frac{\eta}{t^{\gamma}}, \qquad
        z_t \sim \mathcal N(0, I),

    with :math:`t` the 1-based step number. Each step splits the key in the state: one half is
    kept for the next step, the other is split into one key per leaf.

    Args:
      eta: :math:`\eta \ge 0`, the initial variance.
      gamma: :math:`\gamma \ge 0`, the decay exponent (the paper uses 0.55).
      key: an int seed or a PRNG key (default: seed 0).
      seed: optax's deprecated name for ``key`` (keyword-only; not both).

    Reference: Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep
    Networks" (2015). Same numbers as ``optax.add_noise`` with the same key for float32 updates;
    for bfloat16/float16 updates the noise is drawn and added in float32 before rounding once
    (optax draws it in the leaf's dtype).
    """

    eta: ScalarOrSchedule
    gamma: ScalarOrSchedule
    key: Any = None
    _: dataclasses.KW_ONLY
    seed: Any = None

    def __post_init__(self):
        check_number("eta", self.eta, low=0.0)
        check_number("gamma", self.gamma, low=0.0)
        if self.seed is not None:
            warnings.warn(
                'add_noise: "seed" is deprecated (as in optax), use "key"',
                DeprecationWarning,
                stacklevel=3,
            )
            if self.key is not None:
                raise ValueError("add_noise: give key or seed, not both")
        as_key(self._key(), self.name)

    def _key(self):
        key = self.key if self.seed is None else self.seed
        return 0 if key is None else key

    def init(self, params):
        return AddNoiseState(
            count=init_count(),
            rng_key=as_key(self._key(), self.name),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        t = safe_increment(state.count)
        std = jnp.sqrt(hp["eta"] / t.astype(hp["eta"].dtype) ** hp["gamma"])
        rng_key, sample_key = jax.random.split(state.rng_key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sample_key, len(leaves))

        def noisy(g, k):
            dt = compute_dtype(g.dtype)
            z = jax.random.normal(k, g.shape, dt)
            return (g.astype(dt) + std.astype(dt) * z).astype(g.dtype)

        out = treedef.unflatten([noisy(g, k) for g, k in zip(leaves, keys)])
        return out, AddNoiseState(count=t, rng_key=rng_key, hyperparams=hp)


add_noise = AddNoise
