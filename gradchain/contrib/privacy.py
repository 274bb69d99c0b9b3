"""Differentially private SGD: per-example clipping, Gaussian noise, then SGD."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_bool,
    check_floating,
    check_number,
    check_tree_match,
    identity,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import compute_dtype
from gradchain.optimizers.alias import _argument_names
from gradchain.transforms.momentum import trace
from gradchain.transforms.noise import as_key
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "DifferentiallyPrivateAggregateState",
    "differentially_private_aggregate",
    "dpsgd",
]


@state_class(extras=("hyperparams",))
class DifferentiallyPrivateAggregateState:
    """``rng_key``: the key the next step's noise is drawn from (a raw ``uint32[2]`` key);
    ``hyperparams``: l2_norm_clip and noise_multiplier as used last."""

    rng_key: jax.Array
    hyperparams: dict | None


@transformation(
    "differentially_private_aggregate", hyperparams=("l2_norm_clip", "noise_multiplier")
)
class DifferentiallyPrivateAggregate(GradientTransformation):
    r"""DP-SGD's aggregation: clips each example's gradient, sums them, adds Gaussian noise
    and divides by the batch size.

    The input is per-example gradients: every leaf has a leading batch axis of size :math:`B`
    (``jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)``), and the output has the
    parameters' shapes. With :math:`g_b` example :math:`b`'s gradient, :math:`\|g_b\|` its
    norm over the whole tree, :math:`C` the clipping norm and :math:`\sigma` the noise
    multiplier:

    .. math::
        \bar g_b = g_b \min\!\Big(1, \frac{C}{\|g_b\|}\Big), \qquad
        u = \frac{1}{B}\Big(\sum_{b=1}^{B} \bar g_b + \sigma C\, z\Big), \qquad
        z \sim \mathcal N(0, I)

    (factor 1 where :math:`\|g_b\| = 0`, and where it is NaN, as in optax: an example with a
    NaN is not clipped, and the NaN reaches only its coordinate of :math:`u`). Each step splits
    the key in the state into :math:`L + 1` keys for :math:`L` leaves: the first is kept for the
    next step, leaf :math:`l` draws its noise from key :math:`l + 1`.

    Args:
      l2_norm_clip: :math:`C \ge 0`, the largest norm an example's gradient keeps.
      noise_multiplier: :math:`\sigma \ge 0`, the noise's standard deviation over :math:`C`.
      key: an int seed or a PRNG key (default: seed 0).
      seed: optax's deprecated name for ``key`` (keyword-only; not both).

    Put it first in a chain: the pieces after it see ordinary (aggregated) updates. Wrappers
    that aggregate gradients themselves (``MultiSteps``, ``apply_every``) would average noise
    already averaged, and undo the privacy accounting.

    Reference: Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016),
    Algorithm 1. Same numbers as ``optax.contrib.differentially_private_aggregate`` with the
    same key: the noise is drawn in the leaf's dtype from the same keys. Differences: the state
    keeps a raw ``uint32[2]`` key where optax keeps a typed key (the same bits; a raw key is a
    plain array that every checkpoint format stores); for bfloat16/float16 gradients the
    norms, the clipped sum and the noise are added in float32 and rounded once (optax computes
    in the leaf's dtype); when ``params`` is given, each leaf must be a batch of that
    parameter's shape, which catches aggregated gradients passed by mistake (optax only checks
    that the leaves share a leading axis); a missing key is seed 0 without optax's warning.
    """

    l2_norm_clip: float | jax.Array
    noise_multiplier: float | jax.Array
    key: Any = None
    _: dataclasses.KW_ONLY
    seed: int | None = None

    def __post_init__(self):
        check_number("l2_norm_clip", self.l2_norm_clip, low=0.0, allow_schedule=False)
        check_number("noise_multiplier", self.noise_multiplier, low=0.0, allow_schedule=False)
        if self.seed is not None:
            warnings.warn(
                'differentially_private_aggregate: "seed" is deprecated (as in optax), use "key"',
                DeprecationWarning,
                stacklevel=3,
            )
            if self.key is not None:
                raise ValueError("differentially_private_aggregate: give key or seed, not both")
        as_key(self._key(), self.name)

    def _key(self):
        key = self.key if self.seed is None else self.seed
        return 0 if key is None else key

    def init(self, params):
        check_floating(params, self.name)
        return DifferentiallyPrivateAggregateState(
            rng_key=as_key(self._key(), self.name), hyperparams=self.init_hyperparams()
        )

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        leaves, treedef = jax.tree.flatten(updates)
        _check_per_example(updates, params, self.name)
        rng_key, *keys = jax.random.split(state.rng_key, len(leaves) + 1)
        new_state = DifferentiallyPrivateAggregateState(rng_key=rng_key, hyperparams=hp)
        if not leaves:
            return updates, new_state
        clip = hp["l2_norm_clip"]
        std = clip * hp["noise_multiplier"]
        batch = leaves[0].shape[0]
        norms = jnp.sqrt(
            sum(
                jnp.sum(jnp.square(g.astype(compute_dtype(g.dtype))), axis=tuple(range(1, g.ndim)))
                for g in leaves
            )
        )
        # C / 0 is inf and keeps the example whole; 0 / 0 (C = 0, a zero gradient) and a NaN
        # norm give factor 1, as in optax.
        factors = jnp.nan_to_num(jnp.minimum(clip / norms, 1.0), nan=1.0)

        def noised(g, k):
            dt = compute_dtype(g.dtype)
            clipped = jnp.tensordot(factors.astype(dt), g.astype(dt), axes=1)
            z = jax.random.normal(k, g.shape[1:], g.dtype).astype(dt)
            return ((clipped + std.astype(dt) * z) / batch).astype(g.dtype)

        return treedef.unflatten([noised(g, k) for g, k in zip(leaves, keys)]), new_state


differentially_private_aggregate = DifferentiallyPrivateAggregate


def _check_per_example(updates, params, name: str) -> None:
    """Each leaf of ``updates`` is a batch along axis 0, one batch size for all, and a batch of
    the parameter's shape where ``params`` is given."""
    found = jax.tree_util.tree_flatten_with_path(updates)[0]
    for path, g in found:
        if jnp.ndim(g) == 0:
            raise ValueError(
                f"{name} expects per-example gradients with a batch axis 0; the update at "
                f"{jax.tree_util.keystr(path)} is a scalar"
            )
    sizes = sorted({g.shape[0] for _, g in found})
    if len(sizes) > 1:
        raise ValueError(
            f"{name} expects per-example gradients with one batch size; the leaves' axis 0 has "
            f"sizes {sizes}"
        )
    if params is None:
        return
    # One example's shapes, without touching the data (zero-size views: nothing is traced).
    example = jax.tree.map(lambda g: np.broadcast_to(np.empty((), bool), g.shape[1:]), updates)
    try:
        check_tree_match(example, params, "updates", "params")
    except ValueError as e:
        raise ValueError(
            f"{name} expects per-example gradients, of shape (batch, *param.shape): {e}"
        ) from None


@named_optimizer
def dpsgd(
    learning_rate: ScalarOrSchedule,
    l2_norm_clip: float | jax.Array,
    noise_multiplier: float | jax.Array,
    seed: int,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
) -> Parts:
    r"""DP-SGD: ``chain(differentially_private_aggregate(l2_norm_clip, noise_multiplier,
    key=seed), trace(momentum, nesterov) or identity(), scale_by_learning_rate(learning_rate))``.

    Takes per-example gradients (a leading batch axis on every leaf, see
    :func:`differentially_private_aggregate`) and returns the step:

    .. math::
        \tilde g_t = \frac1B\Big(\sum_b \bar g_{t,b} + \sigma C z_t\Big), \qquad
        b_t = \tilde g_t + \mu b_{t-1}, \qquad u_t = -\eta_t\, b_t

    (Nesterov: :math:`-\eta_t(\tilde g_t + \mu b_t)`; no momentum: :math:`-\eta_t \tilde g_t`),
    with :math:`\bar g_{t,b}` example :math:`b`'s gradient clipped to norm :math:`C`.

    Args:
      learning_rate: :math:`\eta \ge 0`, a float or a schedule; required.
      l2_norm_clip: :math:`C \ge 0`; required.
      noise_multiplier: :math:`\sigma \ge 0`; required.
      seed: the seed (or PRNG key) of the noise; required.
      momentum: :math:`\mu \in [0, 1]`, or None (default) for no momentum buffer.
      nesterov: Nesterov's form, default False.

    Reference: Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016). Same
    arguments, defaults, state and numbers as ``optax.contrib.dpsgd`` (the state's key is raw,
    see :func:`differentially_private_aggregate`); optax hands ``seed`` to the aggregate's
    deprecated ``seed=`` and warns on every call, gradchain hands it over as ``key``.
    """
    check_bool("nesterov", nesterov)
    try:
        as_key(seed, "dpsgd")
    except ValueError:
        raise ValueError(f"seed must be an int or a PRNG key, got {seed!r}") from None
    aggregate = differentially_private_aggregate(l2_norm_clip, noise_multiplier, key=seed)
    with _argument_names(decay="momentum"):
        averaging = identity() if momentum is None else trace(decay=momentum, nesterov=nesterov)
    return (aggregate, averaging, scale_by_learning_rate(learning_rate))
