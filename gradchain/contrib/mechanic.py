"""Mechanic: learns the scale of any optimizer's updates online (a learning-rate tuner)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    _call_update,
    check_floating,
    check_int,
    check_number,
    check_params_match,
    require_params,
    require_values,
    state_class,
    transformation,
)
from gradchain.core.numerics import float32_or_better, init_count, safe_increment

__all__ = ["MechanicState", "mechanize"]


@state_class(extras=("hyperparams",))
class MechanicState:
    """``base_optimizer_state``: the wrapped optimizer's state; ``count``: updates done;
    ``r``, ``m``, ``v``, ``s``: one entry per :math:`\\beta` (the bettor's reward, the largest
    :math:`|h|`, the second moment of :math:`h`, the scale); ``x0``: the reference point;
    ``hyperparams``: as used last."""

    base_optimizer_state: Any
    count: jax.Array
    r: jax.Array
    m: jax.Array
    v: jax.Array
    s: jax.Array
    x0: Any
    hyperparams: dict | None


def _scalar_dtype(params) -> jnp.dtype:
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    if not dtypes:
        return jnp.dtype(jnp.float32)
    return float32_or_better(min(dtypes, key=lambda d: jnp.finfo(d).bits))


def _sum(fn, *trees, dtype):
    total = jnp.zeros((), dtype)
    for xs in zip(*(jax.tree.leaves(t) for t in trees)):
        dt = float32_or_better(jnp.result_type(*xs))
        total = total + jnp.sum(fn(*[x.astype(dt) for x in xs])).astype(dtype)
    return total


@transformation("mechanize", hyperparams=("weight_decay", "eps"))
class Mechanize(GradientTransformation):
    r"""Mechanic: scales the accumulated steps of ``base_optimizer`` by a learned factor
    :math:`s = \sum_j s_j`, one coin-betting learner per :math:`\beta_j = 1 - 10^{-j}`.

    With :math:`\Delta_t` the sum of the base optimizer's steps so far (the parameters are
    :math:`x_t = x_0 + s_{t-1}\Delta_t`), :math:`g` the gradient and :math:`u_t` the base step:

    .. math::
        \tilde g = g + \lambda\, s\, \frac{\|g\|}{\|x_t\| + \epsilon}\, x_t, \qquad
        h = \langle \tilde g, (x_0 - x_t)/(s + \epsilon)\rangle, \\
        m_j = \max(\beta_j m_j, |h| + \epsilon), \quad
        v_j = \beta_j^2 v_j + h^2, \quad
        r_j = \beta_j r_j + \mathrm{clip}(h, \pm m_j^{old})\, s_j, \\
        s_j = \frac{s_{init} m_j / n + \max(r_j, 0)}{\sqrt{v_j} + \epsilon}, \qquad
        x_{t+1} = x_0 - \big(\textstyle\sum_j s_j\big)\big((x_0 - x_t)/(s + \epsilon) - u_t\big).

    The update is :math:`x_{t+1} - x_t`; :math:`x_0` is the parameters of the first update.
    Use it with a base learning rate (or schedule peak) of 1: Mechanic learns the scale.

    Args:
      base_optimizer: any gradient transformation (gradchain's or optax's); extra ``update``
        arguments reach it.
      weight_decay: :math:`\lambda \ge 0`, default 1e-2 (Mechanic's own, not the base's).
      eps: :math:`\epsilon \ge 0`, default 1e-8.
      s_init: :math:`s_{init} > 0`, default 1e-6 (a plain number).
      num_betas: :math:`n \ge 1`, default 6.

    Scalars in float32 or better (optax: the lowest parameter dtype); ``x0`` keeps the
    parameters' dtype. Reference: Cutkosky, Defazio & Mehta, "Mechanic: A Learning Rate Tuner"
    (NeurIPS 2023), Algorithm 1. Same as ``optax.contrib.mechanize``.
    """

    # Mechanic's own scalars (norms, inner products) are real algebra: no complex parameters,
    # whatever the base optimizer supports.
    complex_params = False

    base_optimizer: Any
    weight_decay: float = 1e-2
    eps: float = 1e-8
    s_init: float = 1e-6
    num_betas: int = 6

    def __post_init__(self):
        tx = self.base_optimizer
        if not (hasattr(tx, "init") and hasattr(tx, "update")):
            raise TypeError(f"base_optimizer must be a gradient transformation, got {tx!r}")
        check_number("weight_decay", self.weight_decay, low=0.0)
        check_number("eps", self.eps, low=0.0)
        check_number("s_init", self.s_init, low=0.0, low_open=True, allow_schedule=False)
        check_int("num_betas", self.num_betas, low=1, what="an int >= 1")

    def _copy_initial(self, p):
        require_values(p, self.name)  # x0 is the parameters' values
        # A strong dtype, as ``update`` writes it: a weakly typed copy would make the second
        # step's jit signature differ from the first's and recompile.
        return jnp.array(p, dtype=jnp.dtype(p.dtype), copy=True)

    def init(self, params):
        check_floating(params, self.name)
        dtype = _scalar_dtype(params)
        n = self.num_betas
        return MechanicState(
            base_optimizer_state=self.base_optimizer.init(params),
            count=init_count(),
            r=jnp.zeros((n,), dtype),
            m=jnp.zeros((n,), dtype),
            v=jnp.zeros((n,), dtype),
            s=jnp.full((n,), self.s_init, dtype),
            x0=jax.tree.map(self._copy_initial, params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        dtype = state.s.dtype
        lam, eps = hp["weight_decay"].astype(dtype), hp["eps"].astype(dtype)
        base_updates, base_state = _call_update(
            self.base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        first = state.count == 0
        x0 = jax.tree.map(lambda p, x: jnp.where(first, p.astype(x.dtype), x), params, state.x0)
        s_sum = jnp.sum(state.s)
        grad_norm = jnp.sqrt(_sum(lambda g: jnp.square(g), updates, dtype=dtype))
        param_norm = jnp.sqrt(_sum(lambda p: jnp.square(p), params, dtype=dtype))
        decay = lam * s_sum * grad_norm / (param_norm + eps)

        def delta_prev(p, x):
            dt = float32_or_better(p.dtype)
            return (x.astype(dt) - p.astype(dt)) / (s_sum + eps).astype(dt)

        prev = jax.tree.map(delta_prev, params, x0)
        h = _sum(
            lambda g, p, d: (g + decay.astype(g.dtype) * p) * d, updates, params, prev, dtype=dtype
        )
        betas = jnp.asarray([1.0 - 0.1**j for j in range(1, self.num_betas + 1)], dtype)
        clipped_h = jnp.clip(h, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas**2 * state.v + h**2
        r = betas * state.r + clipped_h * state.s
        wealth = (self.s_init / self.num_betas) * m + jnp.maximum(r, 0.0)
        s = wealth / (jnp.sqrt(v) + eps)
        scale = jnp.sum(s)

        def step(p, x, d, u):
            dt = float32_or_better(p.dtype)
            new = x.astype(dt) - scale.astype(dt) * (d - u.astype(dt))
            return (new - p.astype(dt)).astype(u.dtype)

        out = jax.tree.map(step, params, x0, prev, base_updates)
        return out, MechanicState(
            base_optimizer_state=base_state,
            count=safe_increment(state.count),
            r=r,
            m=m,
            v=v,
            s=s,
            x0=x0,
            hyperparams=hp,
        )


mechanize = Mechanize
