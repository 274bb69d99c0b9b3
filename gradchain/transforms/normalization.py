"""Reshaping the updates by their own statistics or the parameters' norms: centring, dividing by
the update norm, multiplying by the parameter block norm."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    check_number,
    check_params_match,
    count_of,
    require_params,
    state_class,
    transformation,
)
from gradchain.core.numerics import compute_dtype, init_count, safe_increment, safe_norm
from gradchain.transforms.clipping import global_norm

__all__ = ["centralize", "normalize_by_update_norm", "scale_by_param_block_norm"]


@state_class(extras=("count", "hyperparams"))
class HyperparamsState:
    """``count``: updates done; ``hyperparams``: the values the latest update used."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("centralize")
class Centralize(GradientTransformation):
    r"""Gradient centralization: subtracts from each leaf of two or more axes its mean over all
    axes but the first.

    .. math:: u_{i,\cdot} = g_{i,\cdot} - \operatorname{mean}_{j} g_{i,j}

    Scalars and vectors pass through unchanged. The mean and the difference are formed in
    float32 or better and rounded once. State: :class:`EmptyState`.

    Reference: Yong et al., "Gradient Centralization: A New Optimization Technique for Deep
    Neural Networks" (2020). Same as ``optax.centralize`` (which subtracts in the leaf's dtype,
    one more rounding for bfloat16 leaves).
    """

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        def centre(g):
            if g.ndim < 2:
                return g
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            return (g32 - g32.mean(tuple(range(1, g.ndim)), keepdims=True)).astype(g.dtype)

        return jax.tree.map(centre, updates), state


centralize = Centralize


@transformation("normalize_by_update_norm", hyperparams=("scale_factor", "eps"))
class NormalizeByUpdateNorm(GradientTransformation):
    r"""Divides all updates by their global norm: :math:`u = s\, g / (\lVert g \rVert + \epsilon)`.

    The norm is over the whole tree (as :func:`global_norm`), accumulated in float32 or better.

    Args:
      scale_factor: :math:`s`, the norm of the result (up to :math:`\epsilon`), default 1.
      eps: :math:`\epsilon \ge 0`, default 1e-6, keeps a zero update finite.

    Same as ``optax.normalize_by_update_norm``.
    """

    scale_factor: ScalarOrSchedule = 1.0
    eps: ScalarOrSchedule = 1e-6

    def __post_init__(self):
        check_number("scale_factor", self.scale_factor)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        return HyperparamsState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        hp = self.current_hyperparams(state)
        norm = global_norm(updates)
        denominator = (norm + hp["eps"].astype(norm.dtype)) / hp["scale_factor"].astype(norm.dtype)

        def scale(g):
            dt = jnp.promote_types(g.dtype, norm.dtype)
            return (g.astype(dt) / denominator.astype(dt)).astype(g.dtype)

        return jax.tree.map(scale, updates), HyperparamsState(
            count=safe_increment(count_of(state)), hyperparams=hp
        )


normalize_by_update_norm = NormalizeByUpdateNorm


@transformation("scale_by_param_block_norm", hyperparams=("min_scale",))
class ScaleByParamBlockNorm(GradientTransformation):
    r"""Multiplies each leaf of the updates by the norm of its parameter block:
    :math:`u = g \cdot \max(\lVert p \rVert_2, s_{\min})`.

    The norm is over the whole leaf, in float32 or better. Needs ``params``.

    Args:
      min_scale: :math:`s_{\min} \ge 0`, default 1e-3: the factor of an all-zero parameter.

    Same as ``optax.scale_by_param_block_norm``. Adafactor's parameter scaling uses the RMS
    instead (:func:`scale_by_param_block_rms`).
    """

    min_scale: ScalarOrSchedule = 1e-3

    def __post_init__(self):
        check_number("min_scale", self.min_scale, low=0.0)

    def init(self, params):
        return HyperparamsState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)

        def scale(g, p):
            dt = compute_dtype(jnp.promote_types(g.dtype, p.dtype))
            factor = safe_norm(p.astype(dt), hp["min_scale"].astype(dt))
            return (g.astype(dt) * factor).astype(g.dtype)

        out = jax.tree.map(scale, updates, params)
        return out, HyperparamsState(count=safe_increment(count_of(state)), hyperparams=hp)


scale_by_param_block_norm = ScaleByParamBlockNorm
