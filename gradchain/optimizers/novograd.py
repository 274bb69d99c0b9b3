"""NovoGrad: a layer-wise second moment (one number per leaf) and momentum on the normalized
gradient."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_dtype,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    named_optimizer,
    require_params,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    abs_sq,
    cast_like,
    compute_dtype,
    ema,
    init_count,
    moments_like,
    safe_increment,
)
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByNovogradState",
    "novograd",
    "scale_by_novograd",
]


@state_class(extras=("hyperparams",))
class ScaleByNovogradState:
    """``count``: updates done; ``mu``: the momentum; ``nu``: one second moment per leaf (a
    scalar); ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict | None


@transformation("scale_by_novograd", hyperparams=("b1", "b2", "eps", "eps_root", "weight_decay"))
class ScaleByNovograd(GradientTransformation):
    r"""Rescales updates by NovoGrad's layer-wise normalization, with momentum.

    For each leaf ("layer") separately, with :math:`t` the 1-based step,

    .. math::
        v_1 = \lVert g_1 \rVert^2, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2)\lVert g_t \rVert^2,
        \\
        d_t = \frac{g_t}{\sqrt{v_t + \epsilon_{root}} + \epsilon} + \lambda p_{t-1}, \qquad
        m_1 = d_1, \quad m_t = \beta_1 m_{t-1} + d_t, \qquad u_t = m_t.

    Args:
      b1: :math:`\beta_1 \in [0, 1]`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.25.
      eps: :math:`\epsilon \ge 0`, default 1e-8 (:func:`novograd`: 1e-6).
      eps_root: :math:`\epsilon_{root} \ge 0`, default 0.
      weight_decay: :math:`\lambda \ge 0`, default 0 (decay inside the momentum, as in the
        paper).
      mu_dtype: dtype of the momentum (default: the parameter's, float32 for bf16/f16).

    Needs ``params``. Reference: Ginsburg et al., "Stochastic Gradient Methods with Layer-wise
    Adaptive Moments for Training of Deep Networks" (2019), Algorithm 1. Same as
    ``optax.scale_by_novograd``, complex parameters included (:math:`\lVert g\rVert^2` sums
    :math:`|g_i|^2`). The norm is accumulated in float32 or better.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.25
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    weight_decay: ScalarOrSchedule = 0.0
    mu_dtype: Any = None

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        nu = jax.tree.map(lambda p: jnp.zeros((), compute_dtype(p.dtype)), params)
        return ScaleByNovogradState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            nu=nu,
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        b1, b2, eps, eps_root, wd = (hp[k] for k in ("b1", "b2", "eps", "eps_root", "weight_decay"))
        c2 = self.complement("b2", hp)
        first = state.count == 0

        def step(g, p, m, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            square = jnp.sum(abs_sq(g32))
            v = jnp.where(first, square, ema(v.astype(dt), square, b2.astype(dt), c2.astype(dt)))
            d = g32 / (jnp.sqrt(v + eps_root.astype(dt)) + eps.astype(dt))
            d = d + wd.astype(dt) * p.astype(dt)
            m = jnp.where(first, d, b1.astype(dt) * m.astype(dt) + d)
            return m.astype(g.dtype), m, v

        out, mu, nu = tree_map_multi(step, 3, updates, params, state.mu, state.nu)
        return out, ScaleByNovogradState(
            count=safe_increment(state.count),
            mu=cast_like(mu, state.mu),
            nu=cast_like(nu, state.nu),
            hyperparams=hp,
        )


scale_by_novograd = ScaleByNovograd


@named_optimizer
def novograd(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.25,
    eps: ScalarOrSchedule = 1e-6,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
) -> Parts:
    r"""NovoGrad: ``chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
    scale_by_learning_rate(learning_rate))``, see :func:`scale_by_novograd`. Same as
    ``optax.novograd``. Needs ``params``."""
    return (
        scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
        scale_by_learning_rate(learning_rate),
    )
