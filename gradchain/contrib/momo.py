"""MoMo: SGD-momentum and Adam with a Polyak-type step size from a model of the loss.

Both need the loss of the step: ``update(grads, state, params, value=loss)``. The updates are the
finished step (the learning rate is a cap on the adaptive step size inside them).
"""

# No ``from __future__ import annotations``: ``momo`` and ``momo_adam`` are the classes, and
# their signature must show ``learning_rate: ScalarOrSchedule`` as the object, not a string
# (optax's tests read the annotation to decide whether a schedule is accepted).
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_bool,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    require_params,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    cast_like,
    compute_dtype,
    count_power,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)

__all__ = ["MomoAdamState", "MomoState", "momo", "momo_adam"]

# optax's threshold below which the model's slope counts as zero (no step): float64's epsilon.
_TINY = float(np.finfo(np.float64).eps)


def _scalar_dtype(params) -> jnp.dtype:
    """The lowest-precision leaf's dtype promoted to float32 (optax keeps it unpromoted)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    if not dtypes:
        return jnp.dtype(jnp.float32)
    return compute_dtype(min(dtypes, key=lambda d: jnp.finfo(d).bits))


@leaf_kernel("dtype")
def _leaf_vdot(x, y, dtype):
    dt = jnp.promote_types(compute_dtype(x.dtype), compute_dtype(y.dtype))
    return jnp.sum(x.astype(dt) * y.astype(dt)).astype(dtype)


def _vdot(tree_x, tree_y, dtype) -> jax.Array:
    total = jnp.zeros((), dtype)
    for x, y in zip(jax.tree.leaves(tree_x), jax.tree.leaves(tree_y)):
        total = total + _leaf_vdot(x, y, dtype=jnp.dtype(dtype))
    return total


def _require_value(value, name: str):
    if value is None:
        raise ValueError(
            f"{name}: update needs the loss of this step, value=loss (from jax.value_and_grad)"
        )


def _check_common(tx) -> None:
    check_number("learning_rate", tx.learning_rate, low=0.0)
    check_number("lower_bound", tx.lower_bound)
    check_number("weight_decay", tx.weight_decay, low=0.0)
    check_bool("adapt_lower_bound", tx.adapt_lower_bound)


def _model_init(tx, params) -> dict:
    """The state fields both MoMo variants share: the model's scalars, count and hyperparams."""
    check_floating(params, tx.name)
    dtype = _scalar_dtype(params)
    hp = tx.init_hyperparams()
    return dict(
        barf=jnp.zeros((), dtype),
        gamma=jnp.zeros((), dtype),
        lb=hp["lower_bound"].astype(dtype),
        count=init_count(),
        hyperparams=hp,
    )


def _model_inputs(tx, updates, state, params, value):
    """Checks a MoMo step's inputs; its hyperparameters and the dtype of its scalars."""
    require_params(params, tx.name)
    _require_value(value, tx.name)
    check_tree_match(updates, state.exp_avg, "updates", "state.exp_avg")
    check_params_match(updates, params)
    return tx.current_hyperparams(state), state.barf.dtype


def _polyak_step(tx, hp, barf, gamma, iprod, slope_sq, lb, bc1):
    r"""The step size :math:`\tau`, the lower bound it used and the next lower bound, with
    :math:`bc_1 = 1` for MoMo (no bias correction) and :math:`1-\beta_1^t` for MoMo-Adam."""
    alpha, lam, lower = hp["learning_rate"], hp["weight_decay"], hp["lower_bound"]
    dtype = barf.dtype
    alpha, lam, lower = alpha.astype(dtype), lam.astype(dtype), lower.astype(dtype)
    shrink = 1 + alpha * lam
    if tx.adapt_lower_bound:
        cap = shrink * (barf - gamma) + iprod
        this_lb = jnp.where(
            cap < shrink * bc1 * lb, jnp.maximum(cap / (2 * bc1 * shrink), lower), lb
        )
    else:
        this_lb = lb
    t1 = jnp.maximum(shrink * (barf - bc1 * this_lb - gamma) + iprod, 0.0) / slope_sq
    t1 = jnp.where(slope_sq <= _TINY, 0.0, t1)
    tau = jnp.minimum(alpha / bc1, t1)
    if tx.adapt_lower_bound:
        new_lb = jnp.maximum(((barf + iprod - gamma) - 0.5 * tau * slope_sq) / bc1, lower)
    else:
        new_lb = lb
    return tau, alpha * lam / shrink, new_lb


# ---------------------------------------------------------------------------------------------
# MoMo


@state_class(extras=("hyperparams",))
class MomoState:
    """``exp_avg``: the gradients' average :math:`d`; ``barf``: the losses' average
    :math:`\\bar f`; ``gamma``: the average of :math:`\\langle g, x\\rangle`; ``lb``: the loss's
    lower bound :math:`f_*`; ``count``: updates done; ``hyperparams``: as used last."""

    exp_avg: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array
    hyperparams: dict | None


@transformation("momo", hyperparams=("learning_rate", "beta", "lower_bound", "weight_decay"))
class Momo(GradientTransformation):
    r"""MoMo: SGD with momentum whose step is the Polyak step of a momentum model of the loss.

    With :math:`\beta_t = 0` at the first update and :math:`\beta` after, :math:`\alpha_t` the
    learning rate, :math:`f_t` the loss (``value``) and :math:`f_*` the lower bound:

    .. math::
        \bar f_t = \beta_t \bar f_{t-1} + (1-\beta_t) f_t, \quad
        d_t = \beta_t d_{t-1} + (1-\beta_t) g_t, \quad
        \gamma_t = \beta_t \gamma_{t-1} + (1-\beta_t)\langle g_t, x_t\rangle, \\
        \tau_t = \min\Big(\alpha_t,\ \frac{\big((1+\alpha_t\lambda)(\bar f_t - f_* - \gamma_t)
        + \langle d_t, x_t\rangle\big)_+}{\|d_t\|^2}\Big), \qquad
        u_t = -\frac{\alpha_t\lambda}{1+\alpha_t\lambda}\, x_t - \tau_t d_t

    (:math:`\tau_t = 0` while :math:`\|d_t\|^2 \le 2.2\cdot 10^{-16}`). With
    ``adapt_lower_bound`` :math:`f_*` is re-estimated every step as in the paper's MoMo*.

    Args:
      learning_rate: :math:`\alpha \ge 0`, the cap of the step size, default 1.
      beta: :math:`\beta \in [0, 1)`, default 0.9.
      lower_bound: :math:`f_*`, default 0 (a lower bound of the loss).
      weight_decay: :math:`\lambda \ge 0`, default 0.
      adapt_lower_bound: default False.

    The scalars are float32 or better (optax keeps them in the lowest parameter dtype).
    Reference: Schaipp, Ohana, Eickenberg, Defazio & Gower, "MoMo: Momentum Models for
    Adaptive Learning Rates" (ICML 2024), Algorithms 1 and 3. Same as ``optax.contrib.momo``
    (the whole optimizer: no learning rate follows it).
    """

    learning_rate: ScalarOrSchedule = 1.0
    beta: float = 0.9
    lower_bound: float = 0.0
    weight_decay: float = 0.0
    adapt_lower_bound: bool = False

    def __post_init__(self):
        _check_common(self)
        check_number("beta", self.beta, low=0.0, high=1.0, high_open=True)

    def init(self, params):
        return MomoState(exp_avg=moments_like(params), **_model_init(self, params))

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        hp, dtype = _model_inputs(self, updates, state, params, value)
        bt = jnp.where(state.count == 0, 0.0, hp["beta"]).astype(dtype)
        barf = bt * state.barf + (1 - bt) * jnp.asarray(value).astype(dtype)
        exp_avg = jax.tree.map(lambda d, g: _momo_ema(d, g, bt), state.exp_avg, updates)
        gamma = bt * state.gamma + (1 - bt) * _vdot(updates, params, dtype)
        slope_sq = _vdot(exp_avg, exp_avg, dtype)
        iprod = _vdot(exp_avg, params, dtype)
        tau, decay, lb = _polyak_step(
            self, hp, barf, gamma, iprod, slope_sq, state.lb, jnp.ones((), dtype)
        )
        out = _decayed_steps(exp_avg, params, updates, decay, tau)
        return out, MomoState(
            exp_avg=cast_like(exp_avg, state.exp_avg),
            barf=barf,
            gamma=gamma,
            lb=lb,
            count=safe_increment(state.count),
            hyperparams=hp,
        )


@leaf_kernel()
def _decayed_leaf(d, p, g, decay, tau):
    dt = d.dtype
    return (-decay.astype(dt) * p.astype(dt) - tau.astype(dt) * d).astype(g.dtype)


def _decayed_steps(directions, params, updates, decay, tau):
    r"""Per leaf :math:`-\frac{\alpha\lambda}{1+\alpha\lambda} x - \tau d`, in the updates' dtypes."""
    return jax.tree.map(
        lambda d, p, g: _decayed_leaf(d, p, g, decay, tau), directions, params, updates
    )


momo = Momo


@leaf_kernel()
def _momo_ema(d, g, bt):
    return bt.astype(d.dtype) * d + (1 - bt).astype(d.dtype) * g.astype(d.dtype)


# ---------------------------------------------------------------------------------------------
# MoMo-Adam


@state_class(extras=("hyperparams",))
class MomoAdamState:
    """``exp_avg``, ``exp_avg_sq``: Adam's moments; ``barf``, ``gamma``, ``lb``, ``count``: as
    :class:`MomoState`; ``hyperparams``: as used last."""

    exp_avg: Any
    exp_avg_sq: Any
    barf: jax.Array
    gamma: jax.Array
    lb: jax.Array
    count: jax.Array
    hyperparams: dict | None


@transformation(
    "momo_adam",
    hyperparams=("learning_rate", "b1", "b2", "eps", "lower_bound", "weight_decay"),
)
class MomoAdam(GradientTransformation):
    r"""MoMo-Adam: Adam whose step is the Polyak step of a momentum model of the loss in
    Adam's preconditioned geometry.

    With :math:`t` the 1-based step, :math:`D_t = \epsilon + \sqrt{v_t/(1-\beta_2^t)}` and
    :math:`b_t = 1 - \beta_1^t`:

    .. math::
        \bar f_t = \beta_1 \bar f_{t-1} + (1-\beta_1) f_t, \quad
        d_t = \beta_1 d_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \gamma_t = \beta_1 \gamma_{t-1} + (1-\beta_1)\langle g_t, x_t\rangle, \qquad
        \tau_t = \min\Big(\frac{\alpha_t}{b_t},\ \frac{\big((1+\alpha_t\lambda)
        (\bar f_t - b_t f_* - \gamma_t) + \langle d_t, x_t\rangle\big)_+}
        {\langle d_t, d_t/D_t\rangle}\Big), \\
        u_t = -\frac{\alpha_t\lambda}{1+\alpha_t\lambda}\, x_t - \tau_t\, d_t / D_t.

    Args:
      learning_rate: :math:`\alpha \ge 0`, default 1e-2.
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      lower_bound, weight_decay, adapt_lower_bound: as :class:`Momo`.

    Moments keep the parameters' dtype, as optax (float32 under :func:`with_float32_state`). Reference: Schaipp et al. (ICML
    2024), Algorithm 2 (MoMo-Adam). Same as ``optax.contrib.momo_adam`` (the whole optimizer).
    """

    learning_rate: ScalarOrSchedule = 1e-2
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    lower_bound: float = 0.0
    weight_decay: float = 0.0
    adapt_lower_bound: bool = False

    def __post_init__(self):
        _check_common(self)
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)

    def init(self, params):
        return MomoAdamState(
            exp_avg=moments_like(params),
            exp_avg_sq=moments_like(params),
            **_model_init(self, params),
        )

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        hp, dtype = _model_inputs(self, updates, state, params, value)
        b1, b2 = hp["b1"].astype(dtype), hp["b2"].astype(dtype)
        c1, c2 = self.complement("b1", hp).astype(dtype), self.complement("b2", hp).astype(dtype)
        t = safe_increment(state.count)
        barf = b1 * state.barf + c1 * jnp.asarray(value).astype(dtype)

        bc2 = (1 - count_power(hp["b2"], t)).astype(dtype)
        eps = hp["eps"].astype(dtype)
        exp_avg, exp_avg_sq, direction = tree_map_multi(
            lambda g, m, v: _momo_adam_leaf(g, m, v, b1, c1, b2, c2, eps, bc2),
            3,
            updates,
            state.exp_avg,
            state.exp_avg_sq,
        )
        slope_sq = _vdot(exp_avg, direction, dtype)
        gamma = b1 * state.gamma + c1 * _vdot(updates, params, dtype)
        iprod = _vdot(exp_avg, params, dtype)
        bc1 = (1 - count_power(hp["b1"], t)).astype(dtype)
        tau, decay, lb = _polyak_step(self, hp, barf, gamma, iprod, slope_sq, state.lb, bc1)
        out = _decayed_steps(direction, params, updates, decay, tau)
        return out, dataclasses.replace(
            state,
            exp_avg=cast_like(exp_avg, state.exp_avg),
            exp_avg_sq=cast_like(exp_avg_sq, state.exp_avg_sq),
            barf=barf,
            gamma=gamma,
            lb=lb,
            count=t,
            hyperparams=hp,
        )


momo_adam = MomoAdam


@leaf_kernel()
def _momo_adam_leaf(g, m, v, b1, c1, b2, c2, eps, bc2):
    r"""Adam's moments and the preconditioned direction :math:`m / (\epsilon + \sqrt{v/bc_2})`."""
    dt = m.dtype
    g = g.astype(dt)
    m = b1.astype(dt) * m + c1.astype(dt) * g
    v = b2.astype(dt) * v + c2.astype(dt) * g * g
    return m, v, m / (eps.astype(v.dtype) + jnp.sqrt(v / bc2))
