"""COCOB: learning-rate-free descent by continuous coin betting, one bettor per coordinate."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    check_params_match,
    check_tree_match,
    named_optimizer,
    require_params,
    require_values,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import cast_like, compute_dtype, leaf_kernel, moments_like
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["COCOBState", "cocob", "scale_by_cocob"]


@state_class(extras=("hyperparams",))
class COCOBState:
    """``init_particles``: the initial parameters :math:`p_0`; ``cumulative_gradients``: the
    negated gradient sum :math:`C`; ``scale``: the largest :math:`|g|` seen, :math:`L`;
    ``subgradients``: the sum of :math:`|g|`, :math:`G`; ``reward``: the bettor's wealth
    :math:`R`; ``hyperparams``: as used last."""

    init_particles: Any
    cumulative_gradients: Any
    scale: Any
    subgradients: Any
    reward: Any
    hyperparams: dict | None


@transformation("scale_by_cocob", hyperparams=("alpha",))
class ScaleByCOCOB(GradientTransformation):
    r"""COCOB-Backprop: each coordinate bets a fraction of its wealth on the gradient's sign.

    Per coordinate, with :math:`p_0` the initial parameter and :math:`L_0 = \epsilon`,
    :math:`C_0 = G_0 = R_0 = 0`:

    .. math::
        L_t = \max(L_{t-1}, |g_t|), \qquad G_t = G_{t-1} + |g_t|, \qquad
        C_t = C_{t-1} - g_t, \\
        R_t = \max\big(R_{t-1} - g_t\,(p_t - p_0),\ 0\big), \\
        p_{t+1} = p_0 + \frac{C_t\,(L_t + R_t)}{L_t \max(G_t + L_t,\ \alpha L_t)}, \qquad
        u_t = p_{t+1} - p_t.

    The update is the finished step (no learning rate follows it); ``alpha`` caps the bet in
    the first steps, while :math:`G_t < (\alpha - 1) L_t`.

    Args:
      alpha: :math:`\alpha > 0`, default 100 (the paper's).
      eps: :math:`\epsilon > 0`, the initial :math:`L`, default 1e-8 (used by ``init`` only, a
        plain number).

    State: optax's ``COCOBState`` fields; the statistics keep the parameters' dtype
    (float32 under ``with_float32_state``), :math:`p_0` keeps the parameters' dtype. Reference: Orabona & Tommasi,
    "Training Deep Networks without Learning Rates Through Coin Betting" (NeurIPS 2017),
    Algorithm 2 (COCOB-Backprop). Same as ``optax.contrib.scale_by_cocob``; the paper starts
    :math:`L` at a small positive value too.
    """

    alpha: ScalarOrSchedule = 100.0
    eps: float = 1e-8

    def __post_init__(self):
        check_number("alpha", self.alpha, low=0.0, low_open=True)
        check_number("eps", self.eps, low=0.0, low_open=True, allow_schedule=False)

    def _copy_initial(self, p):
        require_values(p, self.name)  # betting is relative to the initial parameters
        return jnp.array(p, copy=True)

    def init(self, params):
        check_floating(params, self.name)
        return COCOBState(
            init_particles=jax.tree.map(self._copy_initial, params),
            cumulative_gradients=moments_like(params),
            scale=moments_like(params, fill=self.eps),
            subgradients=moments_like(params),
            reward=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.scale, "updates", "state.scale")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        alpha = hp["alpha"]
        out, c, l, g, r = tree_map_multi(
            lambda *xs: _cocob_leaf(*xs, alpha),
            5,
            updates,
            params,
            state.init_particles,
            state.cumulative_gradients,
            state.scale,
            state.subgradients,
            state.reward,
        )
        return out, COCOBState(
            init_particles=state.init_particles,
            cumulative_gradients=cast_like(c, state.cumulative_gradients),
            scale=cast_like(l, state.scale),
            subgradients=cast_like(g, state.subgradients),
            reward=cast_like(r, state.reward),
            hyperparams=hp,
        )


scale_by_cocob = ScaleByCOCOB


@leaf_kernel()
def _cocob_leaf(g, p, p0, c, scale, subgrad, reward, alpha):
    dt = compute_dtype(g.dtype)
    g32, p32, p0 = g.astype(dt), p.astype(dt), p0.astype(dt)
    scale = jnp.maximum(scale.astype(dt), jnp.abs(g32))
    subgrad = subgrad.astype(dt) + jnp.abs(g32)
    reward = jnp.maximum(reward.astype(dt) - g32 * (p32 - p0), 0)
    c = c.astype(dt) - g32
    bet = c / (scale * jnp.maximum(subgrad + scale, alpha.astype(dt) * scale))
    u = p0 + bet * (scale + reward) - p32
    return u.astype(g.dtype), c, scale, subgrad, reward


@named_optimizer
def cocob(
    learning_rate: ScalarOrSchedule = 1.0,
    alpha: ScalarOrSchedule = 100.0,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
) -> Parts:
    r"""COCOB: ``chain(add_decayed_weights(weight_decay, mask), scale_by_learning_rate(
    learning_rate, flip_sign=False), scale_by_cocob(alpha, eps))``, see :func:`scale_by_cocob`.

    The learning rate (1 by default, the algorithm needs none) multiplies the gradients the
    bettors see, and the weight decay is a coupled L2 penalty. Same arguments and defaults as
    ``optax.contrib.cocob``.
    """
    return (
        add_decayed_weights(weight_decay, mask),
        scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_cocob(alpha, eps),
    )
