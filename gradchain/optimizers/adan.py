"""Adan: adaptive Nesterov momentum from gradient differences."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_bool,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    count_of,
    named_optimizer,
    require_params,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.masks import resolve_mask
from gradchain.core.numerics import (
    after,
    bias_divisor,
    cast_like,
    compute_dtype,
    debias,
    ema,
    init_count,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByAdanState",
    "adan",
    "scale_by_adan",
]


@state_class(extras=("hyperparams",))
class ScaleByAdanState:
    """``m``, ``v``, ``n``: the moments of the gradient, of its change and of the corrected
    gradient; ``g``: the previous gradient; ``t``: updates done (optax's name for the counter,
    also readable as ``count``); ``hyperparams``: as used last."""

    m: Any
    v: Any
    n: Any
    g: Any
    t: jax.Array
    hyperparams: dict | None

    @property
    def count(self) -> jax.Array:
        return self.t


@transformation("scale_by_adan", hyperparams=("b1", "b2", "b3", "eps", "eps_root"))
class ScaleByAdan(GradientTransformation):
    r"""Rescales updates by Adan's three moments.

    With :math:`\Delta_t = g_t - g_{t-1}` (0 at the first step) and :math:`t` the 1-based step,

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \Delta_t, \\
        n_t = \beta_3 n_{t-1} + (1-\beta_3)\big(g_t + (1-\beta_2)\Delta_t\big)^2, \\
        u_t = \frac{\hat m_t + (1-\beta_2)\hat v_t}{\sqrt{\hat n_t + \epsilon_{root}} + \epsilon},

    hats the bias-corrected moments (:math:`\hat m_t = m_t/(1-\beta_1^t)` and so on).

    Args:
      b1, b2, b3: :math:`\beta_{1,2,3} \in [0, 1)`, defaults 0.98, 0.92, 0.99 (the paper's
        :math:`1-\beta` are 0.02, 0.08, 0.01).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      eps_root: :math:`\epsilon_{root} \ge 0`, default 0.

    Reference: Xie et al., "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing
    Deep Models" (2022), Algorithm 1, with bias correction and :math:`\Delta_1 = 0` as in the
    authors' PyTorch code. Same as ``optax.scale_by_adan``. The moments and the previous gradient
    of bfloat16/float16 parameters are float32.
    """

    b1: ScalarOrSchedule = 0.98
    b2: ScalarOrSchedule = 0.92
    b3: ScalarOrSchedule = 0.99
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0

    def __post_init__(self):
        for name in ("b1", "b2", "b3"):
            check_number(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByAdanState(
            m=moments_like(params),
            v=moments_like(params),
            n=moments_like(params),
            g=moments_like(params),
            t=init_count(),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.m, "updates", "state.m")
        hp = self.current_hyperparams(state)
        b1, b2, b3, eps, eps_root = (hp[k] for k in ("b1", "b2", "b3", "eps", "eps_root"))
        c1, c2, c3 = (self.complement(k, hp) for k in ("b1", "b2", "b3"))
        first = state.t == 0
        t = safe_increment(state.t)
        k_b1, k_b2, k_b3 = (bias_divisor(b, t) for b in (b1, b2, b3))

        def step(g, m, v, n, g_prev):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            diff = jnp.where(first, 0, g32 - g_prev.astype(dt))
            m = ema(m.astype(dt), g32, b1.astype(dt), c1.astype(dt))
            v = ema(v.astype(dt), diff, b2.astype(dt), c2.astype(dt))
            sq = g32 + c2.astype(dt) * diff
            n = ema(n.astype(dt), sq * sq, b3.astype(dt), c3.astype(dt))
            direction = debias(m, k_b1) + c2.astype(dt) * debias(v, k_b2)
            denominator = jnp.sqrt(debias(n, k_b3) + eps_root.astype(dt))
            u = direction / (denominator + eps.astype(dt))
            # The gradient overwrites the previous one in place (a donated state) after v and
            # n, which read the old one: without that order XLA copies the old one first.
            return u.astype(g.dtype), m, v, n, after(after(g32, v), n)

        out, m, v, n, g = tree_map_multi(step, 5, updates, state.m, state.v, state.n, state.g)
        return out, ScaleByAdanState(
            m=cast_like(m, state.m),
            v=cast_like(v, state.v),
            n=cast_like(n, state.n),
            g=cast_like(g, state.g),
            t=t,
            hyperparams=hp,
        )


scale_by_adan = ScaleByAdan


@state_class(extras=("count", "hyperparams"))
class ProximalWeightDecayState:
    """``count``: updates done; ``hyperparams``: weight decay and learning rate as used last."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("proximal_weight_decay", hyperparams=("weight_decay", "learning_rate"))
class ProximalWeightDecay(GradientTransformation):
    r"""The proximal step of an L2 penalty after a step :math:`d` (learning rate included):
    :math:`p' = (p + d)/(1 + \eta\lambda)`, that is :math:`u = (d - \eta\lambda p)/(1 +
    \eta\lambda)`. Leaves the mask leaves out pass :math:`d` through. Needs ``params``."""

    weight_decay: ScalarOrSchedule
    learning_rate: ScalarOrSchedule
    mask: Any = None

    def __post_init__(self):
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("learning_rate", self.learning_rate, low=0.0)

    def init(self, params):
        return ProximalWeightDecayState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        decay = hp["weight_decay"] * hp["learning_rate"]
        selected = resolve_mask(self.mask, params, self.name)

        def step(d, p, on):
            if d is None or not on:
                return d
            dt = compute_dtype(jnp.promote_types(d.dtype, p.dtype))
            c = decay.astype(dt)
            return ((d.astype(dt) - c * p.astype(dt)) / (1 + c)).astype(d.dtype)

        out = jax.tree.map(step, updates, params, selected, is_leaf=lambda x: x is None)
        return out, ProximalWeightDecayState(count=safe_increment(count_of(state)), hyperparams=hp)


@named_optimizer
def adan(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.98,
    b2: ScalarOrSchedule = 0.92,
    b3: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    proximal: bool = False,
) -> Parts:
    r"""Adan with decoupled weight decay.

    ``chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta(u_t + \lambda p_{t-1})`, the authors' ``no_prox=True`` form. The
    paper's (and the authors' default) proximal form divides instead:
    :math:`p_t = (p_{t-1} - \eta u_t)/(1 + \eta\lambda)`; the two differ by
    :math:`O(\eta^2\lambda^2)` per step (ALGORITHMS.md §15 row 28). ``proximal=True``
    (keyword-only) gives the paper's form: ``chain(scale_by_adan(...),
    scale_by_learning_rate(learning_rate), proximal_weight_decay(weight_decay, learning_rate,
    mask))``. Same as ``optax.adan`` by default (note ``eps_root=1e-8`` here, 0 in
    :func:`scale_by_adan`, as in optax). Needs ``params``.
    """
    check_bool("proximal", proximal)
    if proximal:
        return (
            scale_by_adan(b1, b2, b3, eps, eps_root),
            scale_by_learning_rate(learning_rate),
            ProximalWeightDecay(weight_decay, learning_rate, mask),
        )
    return (
        scale_by_adan(b1, b2, b3, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
