"""AdEMAMix: Adam with a second, slow momentum mixed into the numerator; its simplified form."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    named_optimizer,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    abs_sq,
    bias_divisor,
    compute_dtype,
    debias,
    ema,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)
from gradchain.scale_out.flat import register_flat_safe
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByAdemamixState",
    "ScaleBySimplifiedAdEMAMixState",
    "ademamix",
    "scale_by_ademamix",
    "scale_by_simplified_ademamix",
    "simplified_ademamix",
]

_LOG_HALF = math.log(0.5)
# The authors' half-life map adds this to beta inside the logarithm (``f(beta, eps=1e-8)``).
_HL_EPS = 1e-8


@state_class(extras=("hyperparams",))
class ScaleByAdemamixState:
    """``count``: updates done; ``count_m2``: updates of the slow EMA (optax keeps both, equal);
    ``m1``, ``m2``: the fast and slow EMAs of the gradient; ``nu``: the EMA of its square;
    ``hyperparams``: as used last."""

    count: jax.Array
    count_m2: jax.Array
    m1: Any
    m2: Any
    nu: Any
    hyperparams: dict | None


def _half_life(one_minus_beta: jax.Array) -> jax.Array:
    r"""The authors' :math:`f(\beta) = \ln(1/2)/\ln(\beta + 10^{-8}) - 1`, from :math:`1-\beta`
    (exact in float32 where :math:`\beta` itself would round away the digits that matter)."""
    return _LOG_HALF / jnp.log1p(_HL_EPS - one_minus_beta) - 1


def _warm_b3(t, b3, c3, c1, warmup: int):
    r"""``(b3_t, 1 - b3_t)``: the authors' ``linear_hl_warmup_scheduler(t, b3, beta_start=b1)``,
    linear in the half-life :math:`f(\beta)` from :math:`f(\beta_1)` to :math:`f(\beta_3)`."""
    a = t.astype(c3.dtype) / warmup
    x = (1 - a) * _half_life(c1) + a * _half_life(c3)
    expo = _LOG_HALF / (x + 1)
    warming = t < warmup
    return jnp.where(warming, jnp.exp(expo), b3), jnp.where(warming, -jnp.expm1(expo), c3)


def _warm_alpha(t, alpha, warmup: int):
    """The authors' ``linear_warmup_scheduler(t, alpha, alpha_start=0)``."""
    return jnp.where(t < warmup, alpha * (t.astype(alpha.dtype) / warmup), alpha)


@transformation("scale_by_ademamix", hyperparams=("b1", "b2", "b3", "alpha", "eps", "eps_root"))
class ScaleByAdemamix(GradientTransformation):
    r"""Rescales updates by AdEMAMix: Adam's numerator plus :math:`\alpha` times a slow EMA.

    With :math:`t` the 1-based step,

    .. math::
        m^{(1)}_t = \beta_1 m^{(1)}_{t-1} + (1-\beta_1) g_t, \quad
        m^{(2)}_t = \beta_3 m^{(2)}_{t-1} + (1-\beta_3) g_t, \quad
        \nu_t = \beta_2 \nu_{t-1} + (1-\beta_2) |g_t|^2, \\
        u_t = \frac{m^{(1)}_t/(1-\beta_1^t) + \alpha\, m^{(2)}_t}
                   {\sqrt{\nu_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    The slow EMA is not bias-corrected, so that it fills slowly. ``b3`` and ``alpha`` may be
    schedules of the 0-based step count (optax's convention), or warmed up as the authors do:

    * ``alpha_warmup=T``: :math:`\alpha_t = \alpha \min(t/T, 1)` (``linear_warmup_scheduler``);
    * ``b3_warmup=T``: :math:`\beta_{3,t} = f^{-1}\big((1-a) f(\beta_1) + a f(\beta_3)\big)`
      with :math:`a = \min(t/T, 1)`, :math:`f(\beta) = \ln\tfrac12/\ln(\beta+10^{-8}) - 1` (the
      half-life in steps) and :math:`f^{-1}(x) = 2^{-1/(x+1)}` (``linear_hl_warmup_scheduler``
      with ``beta_start=b1``).

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      b3: :math:`\beta_3 \in [0, 1)`, default 0.9999 (a number or a schedule).
      alpha: :math:`\alpha \ge 0`, default 6 (a number or a schedule; :func:`ademamix`'s is 5).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      eps_root: :math:`\epsilon_{root} \ge 0`, default 0.
      mu_dtype: dtype of the three moments (default: the parameter's, float32 for bf16/f16).
      alpha_warmup, b3_warmup: keyword-only, steps of the authors' warmups (default None: off).

    Reference: Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older"
    (2024), Algorithm 1; the warmups as in the authors' ``AdEMAMix`` (apple/ml-ademamix), which
    evaluate them at the 1-based step. Same as ``optax.contrib.scale_by_ademamix``, which has no
    warmup arguments (a schedule of the 0-based count for ``b3``/``alpha`` is its way), and keeps
    the moments of bfloat16 parameters in bfloat16.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    b3: Any = 0.9999
    alpha: Any = 6.0
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    alpha_warmup: int | None = None
    b3_warmup: int | None = None

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("b3", self.b3, low=0.0, high=1.0, high_open=True)
        check_number("alpha", self.alpha, low=0.0)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_int("alpha_warmup", self.alpha_warmup, low=1, allow_none=True)
        check_int("b3_warmup", self.b3_warmup, low=1, allow_none=True)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        return ScaleByAdemamixState(
            count=init_count(),
            count_m2=init_count(),
            m1=moments_like(params, self.mu_dtype),
            m2=moments_like(params, self.mu_dtype),
            nu=moments_like(params, self.mu_dtype),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.m1, "updates", "state.m1")
        hp = self.current_hyperparams(state)
        c1, c2, c3 = (self.complement(n, hp) for n in ("b1", "b2", "b3"))
        b3, alpha = hp["b3"], hp["alpha"]
        t = safe_increment(state.count)
        if self.b3_warmup is not None:
            b3, c3 = _warm_b3(t, b3, c3, c1, self.b3_warmup)
        if self.alpha_warmup is not None:
            alpha = _warm_alpha(t, alpha, self.alpha_warmup)
        divisors = (bias_divisor(hp["b1"], t), bias_divisor(hp["b2"], t))
        scalars = (hp["b1"], c1, hp["b2"], c2, b3, c3, alpha, hp["eps"], hp["eps_root"], *divisors)
        out, m1, m2, nu = tree_map_multi(
            lambda g, a, b, v: _ademamix_leaf(g, a, b, v, *scalars),
            4,
            updates,
            state.m1,
            state.m2,
            state.nu,
        )
        return out, ScaleByAdemamixState(
            count=t,
            count_m2=safe_increment(state.count_m2),
            m1=m1,
            m2=m2,
            nu=nu,
            hyperparams=hp,
        )


scale_by_ademamix = ScaleByAdemamix


@leaf_kernel()
def _ademamix_leaf(g, m1, m2, nu, b1, c1, b2, c2, b3, c3, alpha, eps, eps_root, k_b1, k_b2):
    dt = compute_dtype(g.dtype)
    rt = jnp.finfo(dt).dtype
    g32 = g.astype(dt)
    new_m1 = ema(m1.astype(dt), g32, b1.astype(rt), c1.astype(rt))
    new_m2 = ema(m2.astype(dt), g32, b3.astype(rt), c3.astype(rt))
    new_nu = ema(nu.astype(dt), abs_sq(g32), b2.astype(rt), c2.astype(rt))
    num = debias(new_m1, k_b1) + alpha.astype(rt) * new_m2
    den = jnp.sqrt(debias(new_nu, k_b2) + eps_root.astype(rt)) + eps.astype(rt)
    return (
        (num / den).astype(g.dtype),
        new_m1.astype(m1.dtype),
        new_m2.astype(m2.dtype),
        new_nu.astype(nu.dtype),
    )


@named_optimizer
def ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    b3: ScalarOrSchedule = 0.9999,
    alpha: ScalarOrSchedule = 5.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    alpha_warmup: int | None = None,
    b3_warmup: int | None = None,
) -> Parts:
    r"""AdEMAMix: ``chain(scale_by_ademamix(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta_{t-1}(u_t + \lambda p_{t-1})`, :math:`u_t` of
    :func:`scale_by_ademamix`.

    Same as ``optax.contrib.ademamix`` (default :math:`\alpha = 5`, no weight decay) and as the
    authors' PyTorch ``AdEMAMix`` (whose decay is also multiplied by the learning rate); the
    authors' warmups are ``alpha_warmup=`` and ``b3_warmup=`` (the paper warms both up over the
    whole run: ``alpha_warmup = b3_warmup = total steps``).
    """
    return (
        scale_by_ademamix(
            b1,
            b2,
            b3,
            alpha,
            eps,
            eps_root,
            mu_dtype,
            alpha_warmup=alpha_warmup,
            b3_warmup=b3_warmup,
        ),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@state_class(extras=("hyperparams",))
class ScaleBySimplifiedAdEMAMixState:
    """``t``: updates done (optax's name for the count); ``m``: the undamped momentum
    :math:`\\sum_k \\beta_1^{t-k} g_k`; ``n``: the EMA of the squared gradient; ``hyperparams``:
    as used last."""

    t: jax.Array
    m: Any
    n: Any
    hyperparams: dict | None

    @property
    def count(self) -> jax.Array:
        """The step count under gradchain's usual name (schedules are evaluated at it)."""
        return self.t


@transformation(
    "scale_by_simplified_ademamix", hyperparams=("b1", "b2", "alpha", "eps", "eps_root")
)
class ScaleBySimplifiedAdemamix(GradientTransformation):
    r"""Rescales updates by simplified AdEMAMix: one undamped momentum plus :math:`\alpha g_t`.

    With :math:`t` the 1-based step,

    .. math::
        m_t = \beta_1 m_{t-1} + g_t, \qquad
        n_t = \beta_2 n_{t-1} + (1-\beta_2) g_t^2, \qquad
        u_t = \frac{m_t + \alpha g_t}{\sqrt{n_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    :math:`m` is a sum, not an average (no :math:`1-\beta_1` factor, no bias correction): its
    scale :math:`1/(1-\beta_1)` is folded into the learning rate. :math:`\alpha = 0` is Adam with
    learning rate :math:`\eta/(1-\beta_1)` (after the first :math:`1/(1-\beta_1)` steps).

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.99.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.95.
      alpha: :math:`\alpha \ge 0`, default 0 (a number or a schedule of the 0-based count).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      eps_root: :math:`\epsilon_{root} \ge 0`, default 0.

    State: ``t``, ``m``, ``n`` (optax's ``ScaleBySimplifiedAdEMAMixState``), float32 for
    bfloat16/float16 parameters (optax: the parameter's dtype). Reference: Morwani et al.,
    "Connections between Schedule-Free Optimizers, AdEMAMix, and Accelerated SGD Variants"
    (2025). Same as ``optax.contrib.scale_by_simplified_ademamix``.
    """

    b1: ScalarOrSchedule = 0.99
    b2: ScalarOrSchedule = 0.95
    alpha: Any = 0.0
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("alpha", self.alpha, low=0.0)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleBySimplifiedAdEMAMixState(
            t=init_count(),
            m=moments_like(params),
            n=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.m, "updates", "state.m")
        hp = self.current_hyperparams(state)
        t = safe_increment(state.t)
        k_b2 = bias_divisor(hp["b2"], t)
        scalars = (hp["b1"], hp["b2"], hp["alpha"], hp["eps"], hp["eps_root"], k_b2)
        out, m, n = tree_map_multi(
            lambda g, m, n: _simplified_leaf(g, m, n, *scalars), 3, updates, state.m, state.n
        )
        return out, ScaleBySimplifiedAdEMAMixState(t=t, m=m, n=n, hyperparams=hp)


scale_by_simplified_ademamix = ScaleBySimplifiedAdemamix
# Both act on each coordinate alone: a flat buffer gives the numbers of the tree.
register_flat_safe(ScaleByAdemamix, ScaleBySimplifiedAdemamix)


@leaf_kernel()
def _simplified_leaf(g, m, n, b1, b2, alpha, eps, eps_root, k_b2):
    dt = compute_dtype(g.dtype)
    g32 = g.astype(dt)
    g2 = g32 * g32
    new_m = g32 + b1.astype(dt) * m.astype(dt)
    # optax's ``lerp(b2, g^2, n)``, in its order of operations.
    new_n = g2 + b2.astype(dt) * (n.astype(dt) - g2)
    den = jnp.sqrt(debias(new_n, k_b2) + eps_root.astype(dt)) + eps.astype(dt)
    u = (new_m + alpha.astype(dt) * g32) / den
    return u.astype(g.dtype), new_m.astype(m.dtype), new_n.astype(n.dtype)


@named_optimizer
def simplified_ademamix(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.99,
    b2: ScalarOrSchedule = 0.95,
    alpha: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> Parts:
    r"""Simplified AdEMAMix: ``chain(scale_by_simplified_ademamix(...),
    add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))``, see
    :func:`scale_by_simplified_ademamix`. Same as ``optax.contrib.simplified_ademamix``.
    """
    return (
        scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
