"""Learning-rate-free Adam: Prodigy and D-Adaptation estimate the step size ``d`` as they go.

Both keep a scalar ``d`` (an under-estimate of the distance to the solution, growing from
``estim_lr0``) in the state as optax's ``estim_lr``, readable with
``tree_get(state, "estim_lr")``. The ``learning_rate`` is a multiplier of ``d`` (1 by
default; a schedule from 1 down to 0 is the recommended use) and enters the estimate itself, so
unlike other transforms these carry it inside and return the finished descent step: the named
optimizers are one transformation, with optax's ``ProdigyState`` and ``DAdaptAdamWState``.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_bools,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    require_params,
    require_values,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    after,
    cast_like,
    count_power,
    ema,
    float32_or_better,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
    stored,
)

__all__ = [
    "DAdaptAdamWState",
    "ProdigyState",
    "ScaleByDAdaptAdamWState",
    "ScaleByProdigyState",
    "dadapt_adamw",
    "prodigy",
    "scale_by_dadapt_adamw",
    "scale_by_prodigy",
]


def _tree_sum(fn, *trees):
    """``sum over leaves of sum(fn(*leaf arrays))`` in float32 or better."""
    leaves = [jax.tree.leaves(t) for t in trees]
    sums = []
    for xs in zip(*leaves):
        dt = float32_or_better(jnp.result_type(*[x.dtype for x in xs]))
        sums.append(jnp.sum(fn(*[x.astype(dt) for x in xs]), dtype=dt))
    return sum(sums[1:], sums[0]) if sums else jnp.zeros((), jnp.float32)


def _check_betas(tx):
    if not (isinstance(tx.betas, (tuple, list)) and len(tx.betas) == 2):
        raise ValueError(f"betas must be a pair (b1, b2), got {tx.betas!r}")
    check_number("betas[0]", tx.betas[0], low=0.0, high=1.0, high_open=True)
    check_number("betas[1]", tx.betas[1], low=0.0, high=1.0, high_open=True)


def _adam_bias_correction(tx, b1, b2, t):
    r""":math:`\sqrt{1-\beta_2^t}/(1-\beta_1^t)` when ``tx.bias_correction``, else 1."""
    if not tx.bias_correction:
        return jnp.ones((), b1.dtype)
    return jnp.sqrt(1 - count_power(b2, t)) / (1 - count_power(b1, t))


def _step_inputs(tx, updates, state, params):
    """What both estimators' ``update`` starts from: ``(hp, c1, c2, t, dlr)``.

    Checks the updates against the state and the parameters; ``hp`` are the live
    hyperparameters, ``c1``, ``c2`` the complements :math:`1-\\beta_1`, :math:`1-\\beta_2`, ``t``
    the 1-based step and ``dlr`` the step size :math:`d\\,\\eta` times Adam's bias correction.
    """
    require_params(params, tx.name)
    check_tree_match(updates, state.exp_avg, "updates", "state.exp_avg")
    check_params_match(updates, params)
    hp = tx.current_hyperparams(state)
    c1, c2 = tx.complement("b1", hp), tx.complement("b2", hp)
    t = safe_increment(state.count)
    dlr = state.estim_lr * hp["learning_rate"] * _adam_bias_correction(tx, hp["b1"], hp["b2"], t)
    return hp, c1, c2, t, dlr


def _next_state(state, t, hp, mu, nu, s, d, numerator):
    """``state`` after a step: the new moments and sum ``s`` cast back to their dtypes, the new
    estimate ``d`` and numerator, the count and the hyperparameters used."""
    return dataclasses.replace(
        state,
        exp_avg=cast_like(mu, state.exp_avg),
        exp_avg_sq=cast_like(nu, state.exp_avg_sq),
        grad_sum=cast_like(s, state.grad_sum),
        estim_lr=d,
        numerator_weighted=numerator.astype(state.numerator_weighted.dtype),
        count=t,
        hyperparams=hp,
    )


# ---------------------------------------------------------------------------------------------
# Prodigy


@state_class(extras=("hyperparams",))
class ProdigyState:
    """optax's ``ProdigyState``: ``exp_avg``, ``exp_avg_sq``: Adam's moments of
    :math:`d\\,g`; ``grad_sum``: the weighted gradient sum :math:`s`; ``params0``: the initial
    parameters; ``estim_lr``: the current step-size estimate :math:`d`; ``numerator_weighted``:
    the weighted :math:`\\sum \\langle g, p_0 - p\\rangle`; ``count``: updates done;
    ``hyperparams`` (extra): as used last."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    params0: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array
    hyperparams: dict | None


ScaleByProdigyState = ProdigyState


@transformation(
    "scale_by_prodigy",
    hyperparams=(
        "learning_rate",
        "b1",
        "b2",
        "b3",
        "eps",
        "estim_lr0",
        "estim_lr_coef",
        "weight_decay",
    ),
)
class ScaleByProdigy(GradientTransformation):
    r"""Prodigy: Adam whose step size :math:`d` is estimated from the distance travelled.

    With :math:`t` the 1-based step, :math:`\eta_t` the learning-rate multiplier, :math:`d_0`
    = ``estim_lr0`` and :math:`b_t = \sqrt{1-\beta_2^t}/(1-\beta_1^t)` (1 without bias
    correction):

    .. math::
        \delta = d\,\eta_t\, b_t, \qquad
        r \leftarrow \beta_3 r + \tfrac{d}{d_0}\,\delta\,\langle g, p_0 - p\rangle, \qquad
        s \leftarrow \beta_3 s + \tfrac{d}{d_0}\,\delta\, g,\\
        m \leftarrow \beta_1 m + (1-\beta_1)\, d\, g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, d^2 g^2,\\
        d' = \max\big(d,\ c\, r/\|s\|_1\big), \qquad
        u = -\delta\,\Big(\frac{m}{\sqrt v + d'\epsilon} + \lambda p\Big)

    (the step uses the old :math:`d` in :math:`\delta` and the new :math:`d'` in the
    epsilon, as the reference). With ``safeguard_warmup`` the :math:`s` increment is
    :math:`\tfrac{d}{d_0} d\, g`. While :math:`\|s\|_1 = 0` (only zero gradients so far) ``d``
    stays put; optax divides 0 by 0 there and returns NaN.

    Args:
      learning_rate: :math:`\eta \ge 0`, the multiplier of ``d``, default 1 (a schedule from 1
        to 0 is the recommended use).
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1), default (0.9, 0.999).
      beta3: :math:`\beta_3 \in [0, 1)`, default :math:`\sqrt{\beta_2}` (taken at construction).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      estim_lr0: :math:`d_0 > 0`, the initial estimate, default 1e-6.
      estim_lr_coef: :math:`c > 0`, multiplies the estimate, default 1 (the reference's
        ``d_coef``).
      weight_decay: decoupled :math:`\lambda \ge 0`, multiplied by :math:`\delta`, default 0.
      safeguard_warmup: see above.
      bias_correction: True (optax, always) applies :math:`b_t`; False is the reference
        ``prodigyopt.Prodigy`` default ``use_bias_correction=False`` (ALGORITHMS.md §7.1,
        §15 row 17).

    ``tree_get(state, "estim_lr")`` is the current estimate. Memory: four arrays per parameter
    (:math:`m, v, s, p_0`). The reference's ``growth_rate`` (default inf) is not offered.

    Reference: Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free
    Learner" (2024). Same as ``optax.contrib.prodigy`` by default.
    """

    learning_rate: ScalarOrSchedule = 1.0
    betas: tuple = (0.9, 0.999)
    beta3: float | None = None
    eps: ScalarOrSchedule = 1e-8
    estim_lr0: ScalarOrSchedule = 1e-6
    estim_lr_coef: ScalarOrSchedule = 1.0
    weight_decay: ScalarOrSchedule = 0.0
    safeguard_warmup: bool = False
    _: dataclasses.KW_ONLY
    bias_correction: bool = True

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        _check_betas(self)
        check_number("beta3", self.beta3, low=0.0, high=1.0, high_open=True, allow_none=True)
        check_number("eps", self.eps, low=0.0)
        check_number("estim_lr0", self.estim_lr0, low=0.0, low_open=True)
        check_number("estim_lr_coef", self.estim_lr_coef, low=0.0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_bools(self, "safeguard_warmup", "bias_correction")

    b1 = property(lambda self: self.betas[0])
    b2 = property(lambda self: self.betas[1])

    @property
    def b3(self):
        if self.beta3 is not None:
            return self.beta3
        b2 = self.b2
        return (lambda count: jnp.sqrt(b2(count))) if callable(b2) else b2**0.5

    def _copy_initial(self, p):
        require_values(p, self.name)  # it keeps a copy of the initial parameters
        # A copy, not an alias: a step that donates the params' buffers must not free params0.
        return jnp.array(p, copy=True)

    def init(self, params):
        check_floating(params, self.name)
        hp = self.init_hyperparams()
        return ProdigyState(
            exp_avg=moments_like(params, float32=True),
            exp_avg_sq=moments_like(params, float32=True),
            grad_sum=moments_like(params, float32=True),
            params0=jax.tree.map(self._copy_initial, params),
            estim_lr=hp["estim_lr0"],
            numerator_weighted=jnp.zeros_like(hp["estim_lr0"]),
            count=init_count(),
            hyperparams=hp,
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t, dlr = _step_inputs(self, updates, state, params)
        b1, b2, b3 = hp["b1"], hp["b2"], hp["b3"]
        d0, lam = hp["estim_lr0"], hp["weight_decay"]
        d = state.estim_lr
        s_coef = (d / d0) * (d if self.safeguard_warmup else dlr)

        correlation = _tree_sum(lambda g, p0, p: g * (p0 - p), updates, state.params0, params)
        numerator = b3 * state.numerator_weighted + (d / d0) * dlr * correlation

        scalars = (d, b1, c1, b2, c2, b3, s_coef)
        mu, nu, s = tree_map_multi(
            lambda g, m, v, s: _prodigy_moments(g, m, v, s, *scalars),
            3,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            state.grad_sum,
        )
        s_l1 = _tree_sum(jnp.abs, s)
        estimate = hp["estim_lr_coef"] * numerator / jnp.where(s_l1 > 0, s_l1, 1)
        new_d = jnp.where(s_l1 > 0, jnp.maximum(d, estimate), d).astype(state.estim_lr.dtype)

        eps = new_d * hp["eps"]
        out = jax.tree.map(
            lambda g, m, v, p: _prodigy_step(g, m, v, p, dlr, eps, lam), updates, mu, nu, params
        )
        return out, _next_state(state, t, hp, mu, nu, s, new_d, numerator)


scale_by_prodigy = ScaleByProdigy


@leaf_kernel()
def _prodigy_moments(g, m, v, s, d, b1, c1, b2, c2, b3, s_coef):
    """One leaf of Prodigy's moments: ``m``, ``v`` of ``d g`` and the weighted sum ``s``."""
    dt = float32_or_better(g.dtype)
    dg = d.astype(dt) * g.astype(dt)
    m = ema(m.astype(dt), dg, b1.astype(dt), c1.astype(dt))
    v = ema(v.astype(dt), dg * dg, b2.astype(dt), c2.astype(dt))
    s = b3.astype(dt) * s.astype(dt) + s_coef.astype(dt) * g.astype(dt)
    return m, v, s


@leaf_kernel()
def _prodigy_step(g, m, v, p, dlr, eps, lam):
    """One leaf of Prodigy's update, with ``eps`` already scaled by the new ``d``."""
    dt = float32_or_better(g.dtype)
    u = dlr.astype(dt) * (m / (jnp.sqrt(v) + eps.astype(dt)) + lam.astype(dt) * p.astype(dt))
    return (-u).astype(g.dtype)


@transformation("prodigy", hyperparams=ScaleByProdigy.hyperparams)
class Prodigy(ScaleByProdigy):
    """:func:`scale_by_prodigy` under optax's name: the whole optimizer, one transformation
    with one :class:`ProdigyState`, as ``optax.contrib.prodigy``."""


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    beta3: float | None = None,
    eps: ScalarOrSchedule = 1e-8,
    estim_lr0: ScalarOrSchedule = 1e-6,
    estim_lr_coef: ScalarOrSchedule = 1.0,
    weight_decay: ScalarOrSchedule = 0.0,
    safeguard_warmup: bool = False,
    *,
    bias_correction: bool = True,
) -> Prodigy:
    """Prodigy: learning-rate-free AdamW; see :func:`scale_by_prodigy` (the whole optimizer).

    Same arguments, defaults and state (:class:`ProdigyState`) as ``optax.contrib.prodigy``;
    ``bias_correction=False`` gives ``prodigyopt.Prodigy``'s default. The estimate is
    ``tree_get(state, "estim_lr")``.
    """
    return Prodigy(
        learning_rate,
        betas,
        beta3,
        eps,
        estim_lr0,
        estim_lr_coef,
        weight_decay,
        safeguard_warmup,
        bias_correction=bias_correction,
    )


# Annotations resolved, as optax's: code inspecting the signature (optax's tests pass a schedule
# where learning_rate is annotated ScalarOrSchedule) reads types, not the strings PEP 563 leaves.
prodigy.__signature__ = inspect.signature(prodigy, eval_str=True)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# D-Adaptation AdamW


@state_class(extras=("hyperparams",))
class DAdaptAdamWState:
    """optax's ``DAdaptAdamWState``: ``exp_avg``: the first moment (of :math:`\\delta g`);
    ``exp_avg_sq``: the second moment; ``grad_sum``: the weighted gradient sum :math:`s`;
    ``estim_lr``: the current step-size estimate :math:`d`; ``numerator_weighted``: the weighted
    :math:`\\sum\\delta\\langle g, s/(\\sqrt v+\\epsilon)\\rangle`; ``count``: updates done;
    ``hyperparams`` (extra): as used last."""

    exp_avg: Any
    exp_avg_sq: Any
    grad_sum: Any
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array
    hyperparams: dict | None


ScaleByDAdaptAdamWState = DAdaptAdamWState


@transformation(
    "scale_by_dadapt_adamw",
    hyperparams=("learning_rate", "b1", "b2", "eps", "estim_lr0", "weight_decay"),
)
class ScaleByDAdaptAdamW(GradientTransformation):
    r"""D-Adaptation Adam: Adam whose step size :math:`d` grows to the distance to the solution.

    With :math:`\sigma = \sqrt{\beta_2}`, :math:`\eta_t` the learning-rate multiplier and
    :math:`b_t = \sqrt{1-\beta_2^t}/(1-\beta_1^t)` (1 without bias correction):

    .. math::
        \delta = d\,\eta_t\, b_t, \qquad
        r \leftarrow \sigma r + (1-\sigma)\,\delta\,\big\langle g, s/(\sqrt{v}+\epsilon)\big\rangle
        \quad(s, v \text{ before this step}),\\
        m \leftarrow \beta_1 m + (1-\beta_1)\,\delta\, g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\, g^2, \qquad
        s \leftarrow \sigma s + (1-\sigma)\,\delta\, g,\\
        d' = \max\big(d,\ r/((1-\sigma)\|s\|_1)\big), \qquad
        u = -\Big(\frac{m}{\sqrt v + \epsilon} + \lambda\,\delta\, p\Big).

    While :math:`\|s\|_1 = 0` ``d`` stays put (optax returns NaN there).

    Args:
      learning_rate: :math:`\eta \ge 0`, the multiplier of ``d``, default 1.
      betas: :math:`(\beta_1, \beta_2)`, each in [0, 1), default (0.9, 0.999).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      estim_lr0: :math:`d_0 > 0`, the initial estimate, default 1e-6.
      weight_decay: :math:`\lambda \ge 0`, default 0.
      bias_correction: True (optax, always) applies :math:`b_t`; False is the reference
        ``dadaptation.DAdaptAdam`` default (ALGORITHMS.md §7.3, §15 row 17).
      decouple: True (optax, always) decays as above; False is the reference default, a
        coupled L2 penalty: :math:`g \leftarrow g + \lambda p` before everything else.

    ``tree_get(state, "estim_lr")`` is the current estimate. Memory: three arrays per parameter.

    Reference: Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation" (2023).
    Same as ``optax.contrib.dadapt_adamw`` by default.
    """

    learning_rate: ScalarOrSchedule = 1.0
    betas: tuple = (0.9, 0.999)
    eps: ScalarOrSchedule = 1e-8
    estim_lr0: ScalarOrSchedule = 1e-6
    weight_decay: ScalarOrSchedule = 0.0
    _: dataclasses.KW_ONLY
    bias_correction: bool = True
    decouple: bool = True

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        _check_betas(self)
        check_number("eps", self.eps, low=0.0)
        check_number("estim_lr0", self.estim_lr0, low=0.0, low_open=True)
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_bools(self, "bias_correction", "decouple")

    b1 = property(lambda self: self.betas[0])
    b2 = property(lambda self: self.betas[1])

    def init(self, params):
        check_floating(params, self.name)
        hp = self.init_hyperparams()
        return DAdaptAdamWState(
            exp_avg=moments_like(params, float32=True),
            exp_avg_sq=moments_like(params, float32=True),
            grad_sum=moments_like(params, float32=True),
            estim_lr=hp["estim_lr0"],
            numerator_weighted=jnp.zeros_like(hp["estim_lr0"]),
            count=init_count(),
            hyperparams=hp,
        )

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t, dlr = _step_inputs(self, updates, state, params)
        b1, b2, eps, lam = hp["b1"], hp["b2"], hp["eps"], hp["weight_decay"]
        sb2 = jnp.sqrt(b2)
        d = state.estim_lr
        if not self.decouple:
            updates = jax.tree.map(
                lambda g, p: (g + lam.astype(g.dtype) * p.astype(g.dtype)).astype(g.dtype),
                updates,
                params,
            )

        correlation = _tree_sum(
            lambda g, s, v: g * s / (jnp.sqrt(v) + eps.astype(v.dtype)),
            updates,
            state.grad_sum,
            state.exp_avg_sq,
        )
        numerator = sb2 * state.numerator_weighted + (1 - sb2) * dlr * correlation

        scalars = (dlr, b1, c1, b2, c2, sb2, (1 - sb2) * dlr, numerator)
        mu, nu, s = tree_map_multi(
            lambda g, m, v, s: _dadapt_moments(g, m, v, s, *scalars),
            3,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
            state.grad_sum,
        )
        s_l1 = _tree_sum(jnp.abs, s)
        estimate = numerator / ((1 - sb2) * jnp.where(s_l1 > 0, s_l1, 1))
        new_d = jnp.where(s_l1 > 0, jnp.maximum(d, estimate), d).astype(state.estim_lr.dtype)
        decay = lam * dlr if self.decouple else jnp.zeros_like(lam)

        out = jax.tree.map(
            lambda g, m, v, p: _dadapt_step(g, m, v, p, eps, decay), updates, mu, nu, params
        )
        return out, _next_state(state, t, hp, mu, nu, s, new_d, numerator)


scale_by_dadapt_adamw = ScaleByDAdaptAdamW


@leaf_kernel()
def _dadapt_moments(g, m, v, s, dlr, b1, c1, b2, c2, sb2, s_coef, numerator):
    """One leaf of D-Adaptation's moments; ``s_coef`` is :math:`(1-\\sqrt{\beta_2})\\,d\\eta`.

    ``v`` and ``s`` overwrite their old values in place (a donated state) after ``numerator``,
    the sum that reads the old ones, is formed: without that order XLA copies both first.
    """
    dt = float32_or_better(g.dtype)
    g32 = g.astype(dt)
    done = jnp.broadcast_to(numerator.astype(dt), g32.shape)
    m = ema(m.astype(dt), dlr.astype(dt) * g32, b1.astype(dt), c1.astype(dt))
    # Stored: read back by the update, not recomputed there from the old v.
    v = stored(after(ema(v.astype(dt), g32 * g32, b2.astype(dt), c2.astype(dt)), done), g32)
    s = after(sb2.astype(dt) * s.astype(dt) + s_coef.astype(dt) * g32, done)
    return m, v, s


@leaf_kernel()
def _dadapt_step(g, m, v, p, eps, decay):
    dt = float32_or_better(g.dtype)
    u = m / (jnp.sqrt(v) + eps.astype(dt)) + decay.astype(dt) * p.astype(dt)
    return (-u).astype(g.dtype)


@transformation("dadapt_adamw", hyperparams=ScaleByDAdaptAdamW.hyperparams)
class DAdaptAdamW(ScaleByDAdaptAdamW):
    """:func:`scale_by_dadapt_adamw` under optax's name: the whole optimizer, one transformation
    with one :class:`DAdaptAdamWState`, as ``optax.contrib.dadapt_adamw``."""


def dadapt_adamw(
    learning_rate: ScalarOrSchedule = 1.0,
    betas: tuple[ScalarOrSchedule, ScalarOrSchedule] = (0.9, 0.999),
    eps: ScalarOrSchedule = 1e-8,
    estim_lr0: ScalarOrSchedule = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    *,
    bias_correction: bool = True,
    decouple: bool = True,
) -> DAdaptAdamW:
    """D-Adaptation AdamW; see :func:`scale_by_dadapt_adamw` (the whole optimizer).

    Same arguments, defaults and state (:class:`DAdaptAdamWState`) as
    ``optax.contrib.dadapt_adamw``; ``bias_correction=False, decouple=False`` gives
    ``dadaptation.DAdaptAdam``'s defaults. The estimate is ``tree_get(state, "estim_lr")``.
    """
    return DAdaptAdamW(
        learning_rate,
        betas,
        eps,
        estim_lr0,
        weight_decay,
        bias_correction=bias_correction,
        decouple=decouple,
    )


dadapt_adamw.__signature__ = inspect.signature(dadapt_adamw, eval_str=True)  # type: ignore[attr-defined]
