"""Adam's relatives: AMSGrad, Adamax, RAdam and NAdam, as atomic transforms and named optimizers.

Each ``scale_by_*`` returns the positive step direction; the named optimizers chain it with
``add_decoupled_weight_decay`` (the ``*w`` variants) and ``scale_by_learning_rate``, exactly as
optax does. Where optax and PyTorch disagree (ALGORITHMS.md §15 rows 8-10) the default follows
optax and a keyword gives PyTorch's convention.
"""

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
    check_bools,
    check_dtype,
    check_floating,
    check_number,
    named_optimizer,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    adam_moments,
    bias_divisor,
    cast_like,
    compute_dtype,
    count_power,
    debias,
    ema,
    init_count,
    moments_like,
    nesterov_debiased,
    nesterov_divisors,
)
from gradchain.transforms.adaptive import (
    adam_step_inputs,
    check_adam_hyperparams,
    init_adam_state,
    scale_by_adam,
    step_moments,
)
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByAmsgradState",
    "adamax",
    "adamaxw",
    "amsgrad",
    "nadam",
    "nadamw",
    "radam",
    "scale_by_adamax",
    "scale_by_amsgrad",
    "scale_by_nadam",
    "scale_by_radam",
]


# ---------------------------------------------------------------------------------------------
# AMSGrad


@state_class(extras=("hyperparams",))
class ScaleByAmsgradState:
    """``count``: updates done; ``mu``, ``nu``: first and second moments; ``nu_max``: the running
    maximum of the (bias-corrected, by default) second moment; ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any
    hyperparams: dict | None


@transformation("scale_by_amsgrad", hyperparams=("b1", "b2", "eps", "eps_root"))
class ScaleByAmsgrad(GradientTransformation):
    r"""Rescales updates by AMSGrad: Adam with a never-decreasing second moment.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        \nu^{max}_t = \max(\nu^{max}_{t-1}, \hat v_t), \qquad
        u_t = \frac{\hat m_t}{\sqrt{\nu^{max}_t + \epsilon_{root}} + \epsilon}

    with :math:`\hat m_t = m_t/(1-\beta_1^t)` and :math:`\hat v_t = v_t/(1-\beta_2^t)` (each
    correction switchable). The default takes the maximum of the *bias-corrected* second moment,
    as optax does.

    Args:
      b1, b2: moment decays in [0, 1), defaults 0.9 and 0.999.
      eps, eps_root: >= 0, added outside / inside the square root (defaults 1e-8, 0).
      mu_dtype, nu_dtype: moment dtypes (default: the parameter's, float32 for bf16/f16).
      bias_correction_mu, bias_correction_nu: apply the corrections (default True). Both False
        is Reddi et al.'s algorithm.
      debias_after_max: PyTorch's ``Adam(amsgrad=True)``: keep the maximum of the *raw*
        :math:`v_t` and debias it afterwards, :math:`u = \hat m/(\sqrt{\nu^{max}_t/(1-\beta_2^t)}
        + \epsilon)`. No optax setting matches PyTorch (ALGORITHMS.md §3.3, §15 row 8).

    Reference: Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond" (2018).
    Same as ``optax.scale_by_amsgrad`` by default.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    mu_dtype: Any = None
    bias_correction_mu: bool = True
    bias_correction_nu: bool = True
    _: dataclasses.KW_ONLY
    debias_after_max: bool = False
    nu_dtype: Any = None

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("nu_dtype", self.nu_dtype)
        check_bools(self, "bias_correction_mu", "bias_correction_nu", "debias_after_max")
        if self.debias_after_max and not self.bias_correction_nu:
            raise ValueError(
                "debias_after_max=True debiases the maximum of the second moment, so it needs "
                "bias_correction_nu=True"
            )

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByAmsgradState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            nu=moments_like(params, self.nu_dtype),
            nu_max=moments_like(params, self.nu_dtype),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        k_b1, k_b2 = bias_divisor(b1, t), bias_divisor(b2, t)

        def step(g, m, v, v_max):
            _, m, v = adam_moments(g, m, v, b1, c1, b2, c2)
            dt = m.dtype
            m_hat = debias(m, k_b1) if self.bias_correction_mu else m
            if self.debias_after_max:
                v_max = jnp.maximum(v_max.astype(dt), v)
                denom = debias(v_max, k_b2)
            else:
                v_eff = debias(v, k_b2) if self.bias_correction_nu else v
                v_max = jnp.maximum(v_max.astype(dt), v_eff)
                denom = v_max
            u = m_hat / (jnp.sqrt(denom + eps_root.astype(dt)) + eps.astype(dt))
            return u.astype(g.dtype), m, v, v_max

        out, mu, nu, nu_max = tree_map_multi(step, 4, updates, state.mu, state.nu, state.nu_max)
        return out, ScaleByAmsgradState(
            count=t,
            mu=cast_like(mu, state.mu),
            nu=cast_like(nu, state.nu),
            nu_max=cast_like(nu_max, state.nu_max),
            hyperparams=hp,
        )


scale_by_amsgrad = ScaleByAmsgrad


@named_optimizer
def amsgrad(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    bias_correction_mu: bool = True,
    bias_correction_nu: bool = True,
    *,
    debias_after_max: bool = False,
    nu_dtype: Any | None = None,
) -> Parts:
    r"""AMSGrad: ``chain(scale_by_amsgrad(...), scale_by_learning_rate(learning_rate))``.

    :math:`p_t = p_{t-1} - \eta_{t-1}\,\hat m_t/(\sqrt{\nu^{max}_t + \epsilon_{root}} + \epsilon)`;
    see :func:`scale_by_amsgrad`. Same as ``optax.amsgrad``; ``debias_after_max=True`` gives
    ``torch.optim.Adam(amsgrad=True)``.
    """
    return (
        scale_by_amsgrad(
            b1,
            b2,
            eps,
            eps_root,
            mu_dtype,
            bias_correction_mu,
            bias_correction_nu,
            debias_after_max=debias_after_max,
            nu_dtype=nu_dtype,
        ),
        scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# Adamax


@transformation("scale_by_adamax", hyperparams=("b1", "b2", "eps"))
class ScaleByAdamax(GradientTransformation):
    r"""Rescales updates by Adamax: Adam with an infinity-norm second moment.

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        \nu_t = \max(|g_t| + \epsilon,\ \beta_2 \nu_{t-1}), \qquad
        u_t = \frac{m_t/(1-\beta_1^t)}{\nu_t}

    The infinity moment needs no bias correction. State: :class:`ScaleByAdamState` with ``nu``
    the infinity moment.

    Args:
      b1, b2: decays in [0, 1), defaults 0.9 and 0.999.
      eps: >= 0, default 1e-8, added to :math:`|g|` inside the maximum (as optax and PyTorch;
        Kingma & Ba's Algorithm 2 has no epsilon).

    Reference: Kingma & Ba (2015), §7.1. Same as ``optax.scale_by_adamax`` and, with the
    learning rate, ``torch.optim.Adamax`` (ALGORITHMS.md §3.5).
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        return init_adam_state(self, params)

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, _, t = adam_step_inputs(self, updates, state)
        b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
        k_b1 = bias_divisor(b1, t)

        def step(g, m, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            m = ema(m.astype(dt), g32, b1.astype(dt), c1.astype(dt))
            v = jnp.maximum(jnp.abs(g32) + eps.astype(dt), b2.astype(dt) * v.astype(dt))
            return (debias(m, k_b1) / v).astype(g.dtype), m, v

        return step_moments(step, updates, state, t, hp)


scale_by_adamax = ScaleByAdamax


@named_optimizer
def adamax(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
) -> Parts:
    r"""Adamax: ``chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))``.

    :math:`p_t = p_{t-1} - \eta_{t-1}\,(m_t/(1-\beta_1^t))/\nu_t`. Same as ``optax.adamax`` and
    ``torch.optim.Adamax`` (whose ``weight_decay`` is a coupled L2 penalty).
    """
    return scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate)


@named_optimizer
def adamaxw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> Parts:
    r"""Adamax with decoupled weight decay.

    ``chain(scale_by_adamax(...), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta_{t-1}\big((m_t/(1-\beta_1^t))/\nu_t + \lambda p_{t-1}\big)`.
    Same as ``optax.adamaxw`` (default :math:`\lambda = 10^{-4}`).
    """
    return (
        scale_by_adamax(b1, b2, eps),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# RAdam


@transformation("scale_by_radam", hyperparams=("b1", "b2", "eps", "eps_root", "threshold"))
class ScaleByRadam(GradientTransformation):
    r"""Rescales updates by Rectified Adam: Adam once the variance estimate is tractable.

    .. math::
        \rho_\infty = \frac{2}{1-\beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t}, \qquad
        r_t = \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}},\\
        u_t = r_t\,\frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}
        \quad\text{if } \rho_t \ge \text{threshold}, \qquad u_t = \hat m_t \text{ otherwise.}

    For :math:`\beta_2 = 0.999` the first rectified step is :math:`t = 6`; earlier steps are
    un-normalised momentum steps. State: :class:`ScaleByAdamState`.

    Args:
      b1, b2: moment decays in [0, 1), defaults 0.9 and 0.999.
      eps, eps_root: >= 0, defaults 1e-8 and 0.
      threshold: :math:`\ge 0`, default 5. Below 4 a rectified step with
        :math:`2 < \rho_t < 4` takes the square root of a negative number (NaN).
      nesterov: use the NAdam-style first moment of :func:`scale_by_adam`.
      strict_threshold: rectify only when :math:`\rho_t >` threshold (PyTorch's ``RAdam``;
        the paper uses :math:`\rho_t > 4`).
      eps_before_bias_correction: PyTorch's and the official code's placement, with
        :math:`\epsilon` added to :math:`\sqrt{v_t}` before bias correction:
        :math:`u = r_t \hat m_t\sqrt{1-\beta_2^t}/(\sqrt{v_t} + \epsilon)`, i.e. an effective
        :math:`\epsilon/\sqrt{1-\beta_2^t}` after it (ALGORITHMS.md §3.6, §15 row 10).
        ``strict_threshold=True, eps_before_bias_correction=True`` is ``torch.optim.RAdam``.

    As in optax, :math:`\rho_\infty` is formed from :math:`1-\beta_2` rounded once from the
    constructor's number while :math:`\beta_2^t` is a float32 power; for :math:`\beta_2 = 0.999`
    that puts :math:`\rho_t` about 0.026 below its exact value (the first rectified step is still
    :math:`t = 6`) and :math:`r_6, r_7` about 0.6% low. float64 has no such offset.

    Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond" (2020).
    Same as ``optax.scale_by_radam`` by default.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    threshold: ScalarOrSchedule = 5.0
    _: dataclasses.KW_ONLY
    nesterov: bool = False
    strict_threshold: bool = False
    eps_before_bias_correction: bool = False

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_number("threshold", self.threshold, low=0.0)
        check_bools(self, "nesterov", "strict_threshold", "eps_before_bias_correction")

    def init(self, params):
        return init_adam_state(self, params)

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        b2t = count_power(b2, t)
        rho_inf = 2.0 / c2 - 1.0
        rho = rho_inf - 2.0 * t * b2t / (1.0 - b2t)
        rectified = rho > hp["threshold"] if self.strict_threshold else rho >= hp["threshold"]
        # Outside the rectified branch rho may make the square root NaN; keep it finite there.
        safe_rho = jnp.where(rectified, rho, rho_inf)
        r = jnp.sqrt(
            (safe_rho - 4.0)
            * (safe_rho - 2.0)
            * rho_inf
            / ((rho_inf - 4.0) * (rho_inf - 2.0) * safe_rho)
        )
        if self.eps_before_bias_correction:
            eps = eps / jnp.sqrt(1.0 - b2t)
        k_b1, k_b2 = bias_divisor(b1, t), bias_divisor(b2, t)
        nk_b1: Any = nesterov_divisors(b1, t) if self.nesterov else None

        def step(g, m, v):
            g32, m, v = adam_moments(g, m, v, b1, c1, b2, c2)
            dt = g32.dtype
            if self.nesterov:
                m_hat = nesterov_debiased(m, g32, b1, c1, *nk_b1)
            else:
                m_hat = debias(m, k_b1)
            v_hat = debias(v, k_b2)
            adaptive = (
                r.astype(dt) * m_hat / (jnp.sqrt(v_hat + eps_root.astype(dt)) + eps.astype(dt))
            )
            return jnp.where(rectified, adaptive, m_hat).astype(g.dtype), m, v

        return step_moments(step, updates, state, t, hp)


scale_by_radam = ScaleByRadam


@named_optimizer
def radam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    threshold: ScalarOrSchedule = 5.0,
    *,
    nesterov: bool = False,
    strict_threshold: bool = False,
    eps_before_bias_correction: bool = False,
) -> Parts:
    r"""RAdam: ``chain(scale_by_radam(...), scale_by_learning_rate(learning_rate))``.

    See :func:`scale_by_radam`. Same as ``optax.radam``; ``strict_threshold=True,
    eps_before_bias_correction=True`` gives ``torch.optim.RAdam``. RAdam's first step is
    :math:`-\eta g_1` (un-normalised).
    """
    return (
        scale_by_radam(
            b1,
            b2,
            eps,
            eps_root,
            threshold,
            nesterov=nesterov,
            strict_threshold=strict_threshold,
            eps_before_bias_correction=eps_before_bias_correction,
        ),
        scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# NAdam


@state_class(extras=("hyperparams",))
class ScaleByNadamState:
    """``count``: updates done; ``mu``, ``nu``: first and second moments; ``mu_product``: the
    product of the momentum coefficients so far (PyTorch's ``mu_product``, 1 at init);
    ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    mu_product: jax.Array
    hyperparams: dict | None


@transformation("scale_by_nadam", hyperparams=("b1", "b2", "eps", "eps_root", "momentum_decay"))
class ScaleByNadam(GradientTransformation):
    r"""Rescales updates by NAdam with PyTorch's warming momentum schedule.

    With :math:`\psi` the momentum decay and :math:`t` the 1-based step,

    .. math::
        \mu_t = \beta_1\big(1 - \tfrac12\, 0.96^{t\psi}\big), \qquad \Pi_t = \Pi_{t-1}\mu_t,\\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2,\\
        u_t = \frac{1}{\sqrt{v_t/(1-\beta_2^t) + \epsilon_{root}} + \epsilon}
        \Big(\frac{1-\mu_t}{1-\Pi_t} g_t + \frac{\mu_{t+1}}{1-\Pi_t\mu_{t+1}} m_t\Big).

    This is ``torch.optim.NAdam`` (ALGORITHMS.md §3.4, §15 row 9). optax's ``nadam`` has a
    constant :math:`\mu_t = \beta_1`, which is ``scale_by_adam(nesterov=True)`` and the limit
    :math:`\psi \to \infty` of this transform; :func:`nadam` uses it unless ``momentum_decay``
    is given. Note that :math:`\psi = 0` gives :math:`\mu_t = \beta_1/2`, not :math:`\beta_1`.

    Args:
      b1, b2: decays in [0, 1), defaults 0.9 and 0.999.
      eps, eps_root: >= 0, defaults 1e-8 and 0 (PyTorch has no ``eps_root``).
      momentum_decay: :math:`\psi \ge 0`, default 4e-3 (PyTorch's).
      mu_dtype, nu_dtype: moment dtypes (default: the parameter's, float32 for bf16/f16).

    Reference: Dozat, "Incorporating Nesterov Momentum into Adam" (2016); Dozat's Algorithm 2
    also multiplies :math:`\hat v` by :math:`\beta_2`, which optax and PyTorch omit.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    momentum_decay: ScalarOrSchedule = 4e-3
    nu_dtype: Any = None

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_number("momentum_decay", self.momentum_decay, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("nu_dtype", self.nu_dtype)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByNadamState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            nu=moments_like(params, self.nu_dtype),
            mu_product=jnp.ones((), jnp.result_type(float)),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        psi = hp["momentum_decay"]
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        # t + 1 in float: the int32 step saturates at 2^31 - 1, where t + 1 would wrap.
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t.astype(psi.dtype) + 1) * psi))
        mu_product = state.mu_product * mu_t
        coef_g = (1.0 - mu_t) / (1.0 - mu_product)
        coef_m = mu_next / (1.0 - mu_product * mu_next)
        k_b2 = bias_divisor(b2, t)

        def step(g, m, v):
            g32, m, v = adam_moments(g, m, v, b1, c1, b2, c2)
            dt = g32.dtype
            denom = jnp.sqrt(debias(v, k_b2) + eps_root.astype(dt)) + eps.astype(dt)
            u = (coef_g.astype(dt) * g32 + coef_m.astype(dt) * m) / denom
            return u.astype(g.dtype), m, v

        return step_moments(
            step, updates, state, t, hp, mu_product=mu_product.astype(state.mu_product.dtype)
        )


scale_by_nadam = ScaleByNadam


def _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay, nesterov):
    if momentum_decay is None:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nu_dtype=nu_dtype, nesterov=nesterov)
    return scale_by_nadam(
        b1, b2, eps, eps_root, mu_dtype, momentum_decay=momentum_decay, nu_dtype=nu_dtype
    )


@named_optimizer
def nadam(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    momentum_decay: ScalarOrSchedule | None = None,
) -> Parts:
    r"""NAdam: Adam with Nesterov momentum.

    By default ``chain(scale_by_adam(..., nesterov=True), scale_by_learning_rate(lr))``, as
    ``optax.nadam``:
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`, so the first
    step is :math:`-\eta\,(1+2\beta_1)/(1+\beta_1)\,\mathrm{sign}(g_1)` with ``eps=0``.

    ``momentum_decay=psi`` (PyTorch's default is 4e-3) uses :func:`scale_by_nadam` instead:
    ``torch.optim.NAdam`` with its warming momentum schedule (ALGORITHMS.md §15 row 9).
    ``nesterov=False`` (optax's switch) gives plain Adam.
    """
    return (
        _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay, nesterov),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def nadamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
    *,
    nesterov: bool = True,
    nu_dtype: Any | None = None,
    momentum_decay: ScalarOrSchedule | None = None,
) -> Parts:
    r"""NAdamW: NAdam with decoupled weight decay.

    ``chain(<nadam scaling>, add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``; see :func:`nadam` for the scaling and the
    ``momentum_decay`` switch. Same as ``optax.nadamw``; with ``momentum_decay`` it is
    ``torch.optim.NAdam(decoupled_weight_decay=True)``.
    """
    return (
        _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, nu_dtype, momentum_decay, nesterov),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
