"""MARS: AdamW on a variance-reduced, norm-clipped gradient (the MARS-AdamW variant)."""

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
    check_bool,
    check_dtype,
    check_floating,
    check_number,
    check_tree_match,
    named_optimizer,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    after,
    bias_divisor,
    compute_dtype,
    debias,
    ema,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["ScaleByMarsState", "mars", "scale_by_mars"]


@state_class(extras=("hyperparams",))
class ScaleByMarsState:
    """``count``: updates done; ``mu``, ``nu``: the moments of the corrected gradient;
    ``last_grad``: the previous gradient :math:`g_{t-1}`; ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    last_grad: Any
    hyperparams: dict | None


@transformation(
    "scale_by_mars", hyperparams=("b1", "b2", "eps", "gamma", "max_norm", "b1_1d", "b2_1d")
)
class ScaleByMars(GradientTransformation):
    r"""Rescales updates by MARS-AdamW: Adam's moments of a variance-reduced gradient.

    With :math:`t` the 1-based step and :math:`g_0 = 0`, per leaf (matrices, and every leaf with
    ``optimize_1d=True``),

    .. math::
        c_t = g_t + \gamma\frac{\beta_1}{1-\beta_1}(g_t - g_{t-1}), \qquad
        c_t \leftarrow c_t / \max(1, \lVert c_t \rVert_2) \;\text{(the leaf's norm, at most
        ``max_norm``)}, \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) c_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) c_t^2, \qquad
        u_t = \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon}.

    :math:`c_t` approximates the STORM estimator :math:`g_t + \gamma\tfrac{\beta_1}{1-\beta_1}
    (\nabla f(x_t, \xi_t) - \nabla f(x_{t-1}, \xi_t))` with the previous step's gradient (the
    paper's MARS-approx). With ``optimize_1d=False`` (the authors' default) leaves with fewer
    than two axes get plain Adam with :math:`\beta_{1,1d}, \beta_{2,1d}` instead.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.95.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.99.
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      gamma: :math:`\gamma \ge 0`, the scale of the correction, default 0.025.
      mu_dtype: dtype of the moments and the previous gradient (default: the parameter's,
        float32 for bf16/f16).
      max_norm: keyword-only, :math:`> 0`, the clip of :math:`\lVert c_t\rVert`, default 1.
      optimize_1d: keyword-only, default False: MARS on matrices only, Adam on the rest.
      b1_1d, b2_1d: keyword-only, Adam's decays on the other leaves, default 0.9, 0.95.

    Reference: Yuan et al., "MARS: Unleashing the Power of Variance Reduction for Training Large
    Models" (2024), Algorithm 2 (MARS-AdamW), and the authors' ``MARS`` (AGI-Arena/MARS,
    ``mars_type="mars-adamw"``, ``is_approx=True``), whose defaults these are. The authors'
    optimizer gives the other leaves their own learning rate (``lr_1d``, default the same 3e-3)
    and weight decay (``weight_decay_1d=0.1``): in gradchain, that is a ``partition`` of two
    :func:`mars` chains or a decay ``mask``. optax has no counterpart.
    """

    b1: ScalarOrSchedule = 0.95
    b2: ScalarOrSchedule = 0.99
    eps: ScalarOrSchedule = 1e-8
    gamma: ScalarOrSchedule = 0.025
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    max_norm: ScalarOrSchedule = 1.0
    optimize_1d: bool = False
    b1_1d: ScalarOrSchedule = 0.9
    b2_1d: ScalarOrSchedule = 0.95

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_number("gamma", self.gamma, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_number("max_norm", self.max_norm, low=0.0, low_open=True)
        check_bool("optimize_1d", self.optimize_1d)
        check_number("b1_1d", self.b1_1d, low=0.0, high=1.0, high_open=True)
        check_number("b2_1d", self.b2_1d, low=0.0, high=1.0, high_open=True)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByMarsState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            nu=moments_like(params, self.mu_dtype),
            last_grad=moments_like(params, self.mu_dtype),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        t = safe_increment(state.count)
        mars = (hp["b1"], self.complement("b1", hp), hp["b2"], self.complement("b2", hp))
        adam = (
            hp["b1_1d"],
            self.complement("b1_1d", hp),
            hp["b2_1d"],
            self.complement("b2_1d", hp),
        )
        # The bias corrections' divisors, formed once per step rather than once per leaf.
        mars_k = (bias_divisor(hp["b1"], t), bias_divisor(hp["b2"], t))
        adam_k = (bias_divisor(hp["b1_1d"], t), bias_divisor(hp["b2_1d"], t))

        def step(g, m, v, prev):
            if self.optimize_1d or jnp.ndim(g) >= 2:
                scalars = (hp["eps"], hp["gamma"], hp["max_norm"], *mars_k)
                return _mars_leaf(g, m, v, prev, *mars, *scalars)
            return _adam_leaf(g, m, v, *adam, hp["eps"], *adam_k) + (g.astype(prev.dtype),)

        out, mu, nu, last = tree_map_multi(step, 4, updates, state.mu, state.nu, state.last_grad)
        return out, ScaleByMarsState(count=t, mu=mu, nu=nu, last_grad=last, hyperparams=hp)


scale_by_mars = ScaleByMars


def _adam_step(c, m, v, b1, c1, b2, c2, eps, k_b1, k_b2):
    dt = c.dtype
    m = ema(m.astype(dt), c, b1.astype(dt), c1.astype(dt))
    v = ema(v.astype(dt), c * c, b2.astype(dt), c2.astype(dt))
    u = debias(m, k_b1) / (jnp.sqrt(debias(v, k_b2)) + eps.astype(dt))
    return u, m, v


@leaf_kernel()
def _mars_leaf(g, m, v, prev, b1, c1, b2, c2, eps, gamma, max_norm, k_b1, k_b2):
    dt = compute_dtype(g.dtype)
    g32 = g.astype(dt)
    c = g32 + (gamma.astype(dt) * b1.astype(dt) / c1.astype(dt)) * (g32 - prev.astype(dt))
    norm = jnp.sqrt(jnp.sum(c * c))
    c = jnp.where(norm > max_norm.astype(dt), c * (max_norm.astype(dt) / norm), c)
    u, new_m, new_v = _adam_step(c, m, v, b1, c1, b2, c2, eps, k_b1, k_b2)
    # The gradient overwrites the previous one in place (a donated state) once ``c``, the last
    # reader of the old one, is in memory: without that order XLA copies the old one first.
    last = after(g32, c)
    return u.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype), last.astype(prev.dtype)


@leaf_kernel()
def _adam_leaf(g, m, v, b1, c1, b2, c2, eps, k_b1, k_b2):
    g32 = g.astype(compute_dtype(g.dtype))
    u, new_m, new_v = _adam_step(g32, m, v, b1, c1, b2, c2, eps, k_b1, k_b2)
    return u.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)


@named_optimizer
def mars(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    gamma: ScalarOrSchedule = 0.025,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    mu_dtype: Any | None = None,
    *,
    max_norm: ScalarOrSchedule = 1.0,
    optimize_1d: bool = False,
    b1_1d: ScalarOrSchedule = 0.9,
    b2_1d: ScalarOrSchedule = 0.95,
) -> Parts:
    r"""MARS-AdamW: ``chain(scale_by_mars(...), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta_{t-1}(u_t + \lambda p_{t-1})`, :math:`u_t` of
    :func:`scale_by_mars`. Defaults as the authors' ``MARS`` (lr 3e-3 there); their decay is
    :math:`p(1-\eta\lambda)` before the step, the same parameters.
    """
    return (
        scale_by_mars(
            b1,
            b2,
            eps,
            gamma,
            mu_dtype,
            max_norm=max_norm,
            optimize_1d=optimize_1d,
            b1_1d=b1_1d,
            b2_1d=b2_1d,
        ),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
