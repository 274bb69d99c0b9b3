"""MADGRAD: momentumized, adaptive, dual-averaged gradient descent."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
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
from gradchain.core.numerics import (
    cast_like,
    compute_dtype,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decayed_weights

__all__ = ["MadgradState", "madgrad", "scale_by_madgrad"]


@state_class(extras=("hyperparams",))
class MadgradState:
    """``count``: updates done; ``grad_sum_sq``: the weighted sum of squared gradients
    :math:`v`; ``s``: the weighted sum of gradients; ``x0``: the initial parameters;
    ``hyperparams``: as used last."""

    count: jax.Array
    grad_sum_sq: Any
    s: Any
    x0: Any
    hyperparams: dict | None


@transformation("scale_by_madgrad", hyperparams=("learning_rate", "momentum", "eps"))
class ScaleByMadgrad(GradientTransformation):
    r"""MADGRAD's step: dual averaging with a cube-root preconditioner, then momentum as an
    average of iterates.

    With :math:`k` the 0-based update number and :math:`\eta_k` the learning rate:

    .. math::
        \lambda_k = (\eta_k + \epsilon)\sqrt{k+1}, \qquad
        s_k = s_{k-1} + \lambda_k g_k, \qquad
        v_k = v_{k-1} + \lambda_k g_k^2, \\
        z_{k+1} = x_0 - \frac{s_k}{\sqrt[3]{v_k} + \epsilon}, \qquad
        x_{k+1} = (1-\mu)\, z_{k+1} + \mu\, x_k, \qquad u_k = x_{k+1} - x_k.

    The learning rate is inside (the update is the finished step): it weighs each gradient in
    the dual averages, so it cannot be factored out.

    Args:
      learning_rate: :math:`\eta \ge 0` or a schedule of the update number; required.
      momentum: :math:`\mu \in [0, 1)`, default 0.9.
      eps: :math:`\epsilon \ge 0`, default 1e-6.

    State: optax's ``MadgradState``; the sums keep the parameters' dtype (float32 under
    ``with_float32_state``), ``x0`` keeps the parameters' dtype. Reference: Defazio & Jelassi, "Adaptivity without
    Compromise: A Momentumized, Adaptive, Dual Averaged Gradient Method for Stochastic
    Optimization" (JMLR 2022), Algorithm 1; the authors' ``madgrad.MADGRAD`` adds
    :math:`\epsilon` to the learning rate the same way. Same as
    ``optax.contrib.scale_by_madgrad``.
    """

    learning_rate: ScalarOrSchedule
    momentum: ScalarOrSchedule = 0.9
    eps: ScalarOrSchedule = 1e-6

    def __post_init__(self):
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)

    def _copy_initial(self, p):
        require_values(p, self.name)  # dual averaging steps from the initial parameters
        return jnp.array(p, copy=True)

    def init(self, params):
        check_floating(params, self.name)
        return MadgradState(
            count=init_count(),
            grad_sum_sq=moments_like(params),
            s=moments_like(params),
            x0=jax.tree.map(self._copy_initial, params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.s, "updates", "state.s")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        eps, mom = hp["eps"], hp["momentum"]
        # k + 1 formed in float: in int32 it would wrap to a negative at the counter's limit.
        k = state.count.astype(hp["eps"].dtype)
        lamb = (hp["learning_rate"] + eps) * jnp.sqrt(k + 1)
        out, v, s = tree_map_multi(
            lambda g, p, v, s, x0: _madgrad_leaf(g, p, v, s, x0, lamb, mom, eps),
            3,
            updates,
            params,
            state.grad_sum_sq,
            state.s,
            state.x0,
        )
        return out, MadgradState(
            count=safe_increment(state.count),
            grad_sum_sq=cast_like(v, state.grad_sum_sq),
            s=cast_like(s, state.s),
            x0=state.x0,
            hyperparams=hp,
        )


scale_by_madgrad = ScaleByMadgrad


@leaf_kernel()
def _madgrad_leaf(g, p, v, s, x0, lamb, mom, eps):
    dt = compute_dtype(g.dtype)
    g32, p32, lamb = g.astype(dt), p.astype(dt), lamb.astype(dt)
    v = v.astype(dt) + lamb * g32 * g32
    s = s.astype(dt) + lamb * g32
    z = x0.astype(dt) - s / (jnp.cbrt(v) + eps.astype(dt))
    mom = mom.astype(dt)
    u = (1 - mom) * z + mom * p32 - p32
    return u.astype(g.dtype), v, s


@named_optimizer
def madgrad(
    learning_rate: ScalarOrSchedule,
    momentum: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 1e-6,
) -> Parts:
    r"""MADGRAD: ``chain(add_decayed_weights(weight_decay), scale_by_madgrad(learning_rate,
    momentum, eps))``, see :func:`scale_by_madgrad`.

    The weight decay is a coupled L2 penalty (it enters the dual averages), as in the
    authors' default (``decouple_decay=False``). Same arguments and defaults as
    ``optax.contrib.madgrad``.
    """
    return (
        add_decayed_weights(weight_decay),
        scale_by_madgrad(learning_rate, momentum, eps),
    )
