"""SM3: a memory-efficient Adagrad that keeps one accumulator per axis slice, not per
coordinate."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    check_tree_match,
    count_of,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    cast_like,
    compute_dtype,
    ema,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
    state_dtype,
    zeros_along,
    zeros_like_param,
)
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleBySM3State",
    "scale_by_sm3",
    "sm3",
]


@state_class(extras=("count", "hyperparams"))
class ScaleBySM3State:
    """``count``: updates done; ``mu``: per leaf, a list of accumulators, one per axis (one for
    the whole leaf when it has fewer than two axes); ``nu``: the momentum; ``hyperparams``: as
    used last."""

    count: jax.Array | None
    mu: Any
    nu: Any
    hyperparams: dict | None


def _accumulators(p):
    dtype = state_dtype(p.dtype)
    ndim = len(p.shape)
    if ndim < 2:
        return [zeros_like_param(p, dtype)]
    return [zeros_along(p, ((i,),), (p.shape[i],), dtype) for i in range(ndim)]


@transformation("scale_by_sm3", hyperparams=("b1", "b2", "eps"))
class ScaleBySM3(GradientTransformation):
    r"""Rescales updates by SM3's cover-set accumulators, then averages them with momentum.

    For a leaf with axes :math:`1..d` (:math:`d \ge 2`) and accumulators :math:`\mu^{(i)}`, one
    number per index along axis :math:`i`:

    .. math::
        \nu_t(j) = c\, g_t(j)^2 + \beta_2 \min_i \mu^{(i)}_{t-1}(j_i), \qquad
        \mu^{(i)}_t(k) = \max_{j : j_i = k} \nu_t(j), \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1)\, g_t / \sqrt{\nu_t + \epsilon} \;
        (0 \text{ where } \nu_t = 0), \qquad u_t = m_t,

    with :math:`c = 1` when :math:`\beta_2 = 1` (Adagrad's sum, the paper's SM3) and
    :math:`1-\beta_2` otherwise. Scalars and vectors keep one accumulator per coordinate.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, the momentum, default 0.9.
      b2: :math:`\beta_2 \in [0, 1]`, default 1.
      eps: :math:`\epsilon \ge 0`, default 1e-8.

    Memory: :math:`\sum_i n_i` accumulator numbers for an :math:`n_1 \times \dots \times n_d` leaf,
    plus the momentum. Reference: Anil et al., "Memory-Efficient Adaptive Optimization" (2019),
    SM3-II. Same as ``optax.scale_by_sm3``, except that optax fails on scalar leaves (an
    IndexError in its update) and keeps state in the parameters' dtype (float32 here for
    bfloat16/float16).
    """

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 1.0
    eps: ScalarOrSchedule = 1e-8

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleBySM3State(
            count=init_count(),
            mu=jax.tree.map(_accumulators, params),
            nu=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "updates", "state.nu")
        hp = self.current_hyperparams(state)
        b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
        c1 = self.complement("b1", hp)
        c2 = jnp.where(b2 == 1, jnp.ones_like(b2), self.complement("b2", hp))

        leaves, treedef = jax.tree.flatten(updates)
        accumulators = treedef.flatten_up_to(state.mu)
        moments = treedef.flatten_up_to(state.nu)
        results = [
            _sm3_leaf(g, a, m, b1, c1, b2, c2, eps)
            for g, a, m in zip(leaves, accumulators, moments)
        ]
        out, mu, nu = (treedef.unflatten([r[k] for r in results]) for k in range(3))
        return out, ScaleBySM3State(
            count=safe_increment(count_of(state)),
            mu=mu,
            nu=cast_like(nu, state.nu),
            hyperparams=hp,
        )


scale_by_sm3 = ScaleBySM3


@leaf_kernel()
def _sm3_leaf(g, accumulators, m, b1, c1, b2, c2, eps):
    dt = compute_dtype(g.dtype)
    g32 = g.astype(dt)
    ndim = g.ndim
    if ndim < 2:
        previous = accumulators[0].astype(dt)
    else:
        expanded = [
            a.astype(dt).reshape([1] * i + [g.shape[i]] + [1] * (ndim - i - 1))
            for i, a in enumerate(accumulators)
        ]
        previous = functools.reduce(jnp.minimum, expanded)
    nu = c2.astype(dt) * g32 * g32 + b2.astype(dt) * previous
    scaled = g32 * jnp.where(nu > 0, jnp.sqrt(1 / (nu + eps.astype(dt))), 0)
    m = ema(m.astype(dt), scaled, b1.astype(dt), c1.astype(dt))
    if ndim < 2:
        new = [nu]
    else:  # nu >= 0, so a floor of 0 only matters for an empty slice
        new = [
            jnp.max(nu, axis=tuple(a for a in range(ndim) if a != i), initial=0)
            for i in range(ndim)
        ]
    new = [n.astype(a.dtype) for n, a in zip(new, accumulators)]
    return m.astype(g.dtype), new, m


@named_optimizer
def sm3(learning_rate: ScalarOrSchedule, momentum: ScalarOrSchedule = 0.9) -> Parts:
    r"""SM3: ``chain(scale_by_sm3(momentum), scale_by_learning_rate(learning_rate))``, see
    :func:`scale_by_sm3`. Same as ``optax.sm3`` (which scales by ``-learning_rate`` and so takes
    no schedule; here a schedule works too)."""
    check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
    return (
        scale_by_sm3(momentum),
        scale_by_learning_rate(learning_rate),
    )
