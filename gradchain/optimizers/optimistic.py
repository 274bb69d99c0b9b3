"""Optimistic gradient methods: extrapolate with the change of the gradient (for min-max
games, where plain gradient descent-ascent cycles)."""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_number,
    check_tree_match,
    count_of,
    named_optimizer,
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
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "scale_by_optimistic_gradient",
]


@state_class(extras=("count", "hyperparams"))
class ScaleByOptimisticGradientState:
    """``count``: updates done; ``is_initial_step``: no previous gradient yet;
    ``previous_gradient``: the last incoming updates; ``hyperparams``: alpha and beta."""

    count: jax.Array | None
    is_initial_step: jax.Array
    previous_gradient: Any
    hyperparams: dict | None


@transformation("scale_by_optimistic_gradient", hyperparams=("alpha", "beta"))
class ScaleByOptimisticGradient(GradientTransformation):
    r"""The optimistic update: :math:`u_t = (\alpha + \beta)\, g_t - \beta\, g_{t-1}`.

    At the first step :math:`g_0 = g_1`, so :math:`u_1 = \alpha g_1` (optax issue #1082).

    Args:
      alpha: :math:`\alpha`, the weight of the current gradient, default 1.
      beta: :math:`\beta`, the weight of the gradient's change (the optimism), default 1.

    With :math:`\alpha = \beta = 1` this is optimistic gradient descent,
    :math:`p_{t} = p_{t-1} - \eta(2 g_t - g_{t-1})`. References: Popov, "A modification of the
    Arrow-Hurwicz method for search of saddle points" (1980); Daskalakis et al., "Training GANs
    with Optimism" (2018); Mokhtari et al. (2020). Same as
    ``optax.scale_by_optimistic_gradient``; the previous gradient keeps the parameters' dtype, as
    optax. Linear in the gradients, so complex parameters work as in optax.
    """

    complex_params = True

    alpha: ScalarOrSchedule = 1.0
    beta: ScalarOrSchedule = 1.0

    def __post_init__(self):
        check_number("alpha", self.alpha)
        check_number("beta", self.beta)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByOptimisticGradientState(
            count=init_count(),
            is_initial_step=jnp.array(True),
            previous_gradient=moments_like(params),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.previous_gradient, "updates", "state.previous_gradient")
        hp = self.current_hyperparams(state)

        out, prev = tree_map_multi(
            lambda g, prev: _optimistic_leaf(
                g, prev, state.is_initial_step, hp["alpha"], hp["beta"]
            ),
            2,
            updates,
            state.previous_gradient,
        )
        return out, ScaleByOptimisticGradientState(
            count=safe_increment(count_of(state)),
            is_initial_step=jnp.array(False),
            previous_gradient=cast_like(prev, state.previous_gradient),
            hyperparams=hp,
        )


scale_by_optimistic_gradient = ScaleByOptimisticGradient


@leaf_kernel()
def _optimistic_leaf(g, prev, is_initial, alpha, beta):
    dt = compute_dtype(g.dtype)
    g32 = g.astype(dt)
    alpha, beta = alpha.astype(dt), beta.astype(dt)
    prev = jnp.where(is_initial, g32, prev.astype(dt))
    return ((alpha + beta) * g32 - beta * prev).astype(g.dtype), g32


@named_optimizer
def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule, alpha: ScalarOrSchedule = 1.0, beta: ScalarOrSchedule = 1.0
) -> Parts:
    r"""Optimistic gradient descent:
    :math:`p_t = p_{t-1} - \eta\,((\alpha+\beta) g_t - \beta g_{t-1})`.

    ``chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))``.
    Same as ``optax.optimistic_gradient_descent``.
    """
    return (
        scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def optimistic_adam(
    learning_rate: float,
    optimism: ScalarOrSchedule | None = None,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-08,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
) -> Parts:
    r"""Optimistic Adam, optax's first form (deprecated there too: use
    :func:`optimistic_adam_v2`).

    ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism), scale_by_learning_rate(1))``:
    the learning rate is the optimistic transform's :math:`\alpha`, so it cannot be a schedule.
    ``optimism`` defaults to the learning rate. Same as ``optax.optimistic_adam``, warning
    included. Reference: Daskalakis et al., "Training GANs with Optimism" (2018).
    """
    warnings.warn(
        # optax's words: code written for optax filters or asserts on them.
        "`optimistic_adam` is deprecated, please use `optimistic_adam_v2` instead.",
        DeprecationWarning,
        stacklevel=3,  # the caller of the named_optimizer wrapper
    )
    if callable(learning_rate):
        raise ValueError(
            "optimistic_adam: learning_rate must be a number, not a schedule (it is the "
            "optimistic step's alpha); optimistic_adam_v2 takes a schedule"
        )
    check_number("learning_rate", learning_rate)
    if optimism is None:
        optimism = learning_rate
    check_number("optimism", optimism)
    return (
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha=learning_rate, beta=optimism),
        scale_by_learning_rate(1.0),
    )


@named_optimizer
def optimistic_adam_v2(
    learning_rate: ScalarOrSchedule,
    *,
    alpha: ScalarOrSchedule = 1.0,
    beta: ScalarOrSchedule = 1.0,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-08,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    nesterov: bool = True,
) -> Parts:
    r"""Optimistic Adam: the optimistic update applied to Adam's direction :math:`d_t`,
    :math:`p_t = p_{t-1} - \eta_t((\alpha+\beta) d_t - \beta d_{t-1})`.

    ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))``. Same as
    ``optax.optimistic_adam_v2`` (Nesterov on by default, as there). Reference: Daskalakis et
    al., "Training GANs with Optimism" (2018).
    """
    return (
        scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
        scale_by_optimistic_gradient(alpha, beta),
        scale_by_learning_rate(learning_rate),
    )
