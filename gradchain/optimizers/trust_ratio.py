"""Layer-wise trust ratios, and the optimizers built on them: LAMB, LARS and Fromage."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_number,
    check_params_match,
    count_of,
    named_optimizer,
    require_params,
    state_class,
    stateless_call,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    compute_dtype,
    init_count,
    leaf_kernel,
    safe_increment,
    safe_norm,
)
from gradchain.optimizers.alias import _argument_names
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.decay import add_decoupled_weight_decay, resolve_mask
from gradchain.transforms.momentum import trace
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByTrustRatioState",
    "fromage",
    "lamb",
    "lars",
    "scale_by_trust_ratio",
]


@state_class(extras=("count", "trust_ratio", "hyperparams"))
class ScaleByTrustRatioState:
    """``count``: updates done; ``trust_ratio``: one scalar per leaf, the ratio the latest update
    was multiplied by (1 for leaves the mask leaves out); ``hyperparams``: as used last."""

    count: jax.Array | None
    trust_ratio: Any
    hyperparams: dict | None


@transformation("scale_by_trust_ratio", hyperparams=("min_norm", "trust_coefficient", "eps"))
class ScaleByTrustRatio(GradientTransformation):
    r"""Rescales each leaf by the ratio of the parameter's norm to the update's norm.

    For every leaf ("layer") separately,

    .. math::
        n_p = \max(\|p\|_2, n_{min}), \quad n_u = \max(\|u\|_2, n_{min}), \qquad
        u \leftarrow \frac{c\, n_p}{n_u + \epsilon}\, u \quad (\text{ratio } 1 \text{ if }
        n_p = 0 \text{ or } n_u = 0).

    Args:
      min_norm: :math:`n_{min} \ge 0`, default 0.
      trust_coefficient: :math:`c \ge 0`, default 1.
      eps: :math:`\epsilon \ge 0`, default 0.
      mask: which leaves are rescaled (a pytree of bools or a callable of the params); others
        pass through with ratio 1. Default: every leaf. (optax wraps the transform in
        ``masked`` instead; the result is the same.)

    The ratios the latest update used are in the state: ``tree_get(state, "trust_ratio")``.
    Same as ``optax.scale_by_trust_ratio``. Reference: You et al. (2017, 2020).
    """

    complex_params = True

    min_norm: ScalarOrSchedule = 0.0
    trust_coefficient: ScalarOrSchedule = 1.0
    eps: ScalarOrSchedule = 0.0
    _: dataclasses.KW_ONLY
    mask: Any = None

    def __post_init__(self):
        check_number("min_norm", self.min_norm, low=0.0)
        check_number("trust_coefficient", self.trust_coefficient, low=0.0)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        ratios = jax.tree.map(lambda _: jnp.ones((), jnp.result_type(float)), params)
        return ScaleByTrustRatioState(
            count=init_count(), trust_ratio=ratios, hyperparams=self.init_hyperparams()
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        selected = resolve_mask(self.mask, params, self.name)

        scalars = (hp["min_norm"], hp["trust_coefficient"], hp["eps"])

        def scaled(u, p, on):
            if not on:
                return u, jnp.ones((), jnp.result_type(float))
            return _trust_ratio_leaf(u, p, *scalars)

        out, ratios = tree_map_multi(scaled, 2, updates, params, selected)
        if stateless_call(state):
            return out, state
        return out, ScaleByTrustRatioState(
            count=safe_increment(count_of(state)), trust_ratio=ratios, hyperparams=hp
        )


scale_by_trust_ratio = ScaleByTrustRatio


@leaf_kernel()
def _trust_ratio_leaf(u, p, min_norm, trust_coefficient, eps):
    """One leaf's update scaled by its trust ratio, and the ratio."""
    dt = compute_dtype(jnp.promote_types(u.dtype, p.dtype))
    real = jnp.finfo(dt).dtype  # norms of complex leaves are real
    min_norm = min_norm.astype(real)
    p_norm = safe_norm(p.astype(dt), min_norm)
    u_norm = safe_norm(u.astype(dt), min_norm)
    r = trust_coefficient.astype(real) * p_norm / (u_norm + eps.astype(real))
    r = jnp.where((p_norm == 0) | (u_norm == 0), 1, r).astype(jnp.result_type(float))
    return (u * r).astype(u.dtype), r


@named_optimizer
def lamb(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-6,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> Parts:
    r"""LAMB: Adam's direction plus decoupled decay, rescaled per layer by the trust ratio.

    ``chain(scale_by_adam(b1, b2, eps, eps_root), add_decoupled_weight_decay(weight_decay,
    mask), scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))``:

    .. math:: r_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon} + \lambda p,
              \qquad p_t = p_{t-1} - \eta_{t-1}\frac{\|p_{t-1}\|}{\|r_t\|}\, r_t

    per leaf. Same as ``optax.lamb``; the paper's optional clipping :math:`\phi` of
    :math:`\|p\|` is the identity here. Reference: You et al., "Large Batch Optimization for
    Deep Learning: Training BERT in 76 minutes" (2020).
    """
    return (
        scale_by_adam(b1, b2, eps, eps_root),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def _mask_or_none(mask):
    # optax's default mask ``True`` selects every leaf: the meaning of ``None`` here.
    return None if mask is True else mask


@named_optimizer
def lars(
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = True,
    trust_coefficient: ScalarOrSchedule = 0.001,
    eps: ScalarOrSchedule = 0.0,
    trust_ratio_mask: MaskOrFn = True,
    momentum: ScalarOrSchedule = 0.9,
    nesterov: bool = False,
) -> Parts:
    r"""LARS: SGD with momentum whose per-layer step is scaled by a trust ratio.

    ``chain(add_decoupled_weight_decay(weight_decay, weight_decay_mask),
    scale_by_trust_ratio(trust_coefficient=c, eps=eps, mask=trust_ratio_mask),
    scale_by_learning_rate(learning_rate), trace(momentum, nesterov))``:

    .. math:: d = g + \lambda p, \quad s = \frac{c\,\|p\|}{\|d\| + \epsilon}, \quad
              b_t = -\eta_{t-1}\, s\, d + \mu\, b_{t-1}, \quad p_t = p_{t-1} + b_t

    per leaf (the learning rate is inside the momentum buffer, as in the paper). Masks default
    to every leaf, biases and norm gains included; excluding them is common practice. Same as
    ``optax.lars``. The paper's local rate divides by :math:`\|g\| + \lambda\|p\|` rather than
    :math:`\|g + \lambda p\|`. Reference: You, Gitman & Ginsburg, "Large Batch Training of
    Convolutional Networks" (2017).
    """
    with _argument_names(decay="momentum"):
        momentum_part = trace(decay=momentum, nesterov=nesterov)
    return (
        add_decoupled_weight_decay(weight_decay, _mask_or_none(weight_decay_mask)),
        scale_by_trust_ratio(
            trust_coefficient=trust_coefficient, eps=eps, mask=_mask_or_none(trust_ratio_mask)
        ),
        scale_by_learning_rate(learning_rate),
        momentum_part,
    )


@state_class(extras=("count", "hyperparams"))
class FromageStepState:
    """``count``: updates done; ``hyperparams``: the learning rate the latest update used."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("fromage_step", hyperparams=("learning_rate",))
class FromageStep(GradientTransformation):
    r"""Fromage's step from a trust-scaled direction :math:`d`:
    :math:`u = (p - \eta\, d)/\sqrt{1+\eta^2} - p`. Needs ``params``."""

    learning_rate: ScalarOrSchedule

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)

    def init(self, params):
        return FromageStepState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        lr = hp["learning_rate"]
        shrink = 1 / jnp.sqrt(1 + lr * lr)

        def step(d, p):
            dt = compute_dtype(jnp.promote_types(d.dtype, p.dtype))
            s = shrink.astype(dt)
            return (-(lr.astype(dt) * s) * d.astype(dt) + (s - 1) * p.astype(dt)).astype(d.dtype)

        out = jax.tree.map(step, updates, params)
        return out, FromageStepState(count=safe_increment(count_of(state)), hyperparams=hp)


@named_optimizer
def fromage(learning_rate: ScalarOrSchedule, min_norm: ScalarOrSchedule = 1e-6) -> Parts:
    r"""Fromage: a step of relative size :math:`\eta` per layer, then a shrink that keeps the
    parameters' norm from growing.

    .. math:: p_t = \frac{p_{t-1} - \eta\, \frac{\lVert p_{t-1}\rVert}{\lVert g_t\rVert}
              g_t}{\sqrt{1+\eta^2}}

    per leaf (norms floored at ``min_norm``). ``chain(scale_by_trust_ratio(min_norm),
    fromage_step(learning_rate))``, where the last transform forms
    :math:`-\eta d/\sqrt{1+\eta^2} + (1/\sqrt{1+\eta^2} - 1)\, p`; optax builds the same
    from ``scale_by_learning_rate`` and ``add_decayed_weights`` with a negative decay. The
    learning rate may be a schedule. Needs ``params``. Reference: Bernstein et al., "On the
    distance between two neural networks and the stability of learning" (2020). Same as
    ``optax.fromage``.
    """
    return (
        scale_by_trust_ratio(min_norm),
        FromageStep(learning_rate),
    )
