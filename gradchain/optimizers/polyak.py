"""The Polyak step size: the step that would reach a known minimum value on a linear model of
the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MissingArgumentError,
    Parts,
    ScalarOrSchedule,
    check_number,
    count_of,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import init_count, safe_increment
from gradchain.optimizers.alias import sgd
from gradchain.transforms.clipping import global_norm

__all__ = ["polyak_sgd", "scale_by_polyak"]

_VARIANTS = ("sps", "sps+")


@state_class(extras=("count", "step_size", "hyperparams"))
class ScaleByPolyakState:
    """``count``: updates done; ``step_size``: the Polyak step the latest update used, for
    logging; ``hyperparams``: as used last."""

    count: jax.Array | None
    step_size: jax.Array | None
    hyperparams: dict | None


@transformation("scale_by_polyak", hyperparams=("f_min", "max_learning_rate", "eps"))
class ScaleByPolyak(GradientTransformation):
    r"""Scales the updates by the (capped) Polyak step size; ``update`` needs ``value=``, the
    loss at the current parameters.

    .. math::
        \gamma_t = \min\!\Big(\frac{f(p_t) - f^*}{\lVert g_t \rVert^2 + \epsilon},
        \gamma_{\max}\Big), \qquad u_t = \gamma_t\, g_t,

    with :math:`\gamma_t = 0` where :math:`\lVert g_t\rVert^2 + \epsilon` is below float64's
    machine epsilon. ``variant="sps+"`` clips the gap :math:`f(p_t) - f^*` at 0 from below.
    The norm is over the whole tree.

    Args:
      f_min: :math:`f^*`, a lower bound on the loss, default 0.
      max_learning_rate: :math:`\gamma_{\max} \ge 0`, default 1.
      eps: :math:`\epsilon \ge 0`, default 0.
      variant: ``"sps"`` (default) or ``"sps+"``.

    Reference: Loizou et al., "Stochastic Polyak Step-size for SGD" (2021), SPS_max; Polyak
    (1987). Same as ``optax.scale_by_polyak``; the step used is kept in the state
    (``tree_get(state, "step_size")``).
    """

    f_min: ScalarOrSchedule = 0.0
    max_learning_rate: ScalarOrSchedule = 1.0
    eps: ScalarOrSchedule = 0.0
    variant: str = "sps"

    def __post_init__(self):
        check_number("f_min", self.f_min)
        check_number("max_learning_rate", self.max_learning_rate, low=0.0)
        check_number("eps", self.eps, low=0.0)
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {self.variant!r}")

    def init(self, params):
        return ScaleByPolyakState(
            count=init_count(),
            step_size=jnp.zeros((), jnp.float32),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, *, value=None, **extra_args):
        if value is None:
            raise MissingArgumentError(
                f"{self.name} needs the loss: call update(updates, state, params, value=loss)"
            )
        hp = self.current_hyperparams(state)
        norm = global_norm(updates)
        square = norm * norm
        gap = jnp.asarray(value - hp["f_min"]).astype(square.dtype)
        if self.variant == "sps+":
            gap = jnp.maximum(gap, 0)
        denominator = square + hp["eps"].astype(square.dtype)
        ratio = jnp.minimum(gap / denominator, hp["max_learning_rate"].astype(square.dtype))
        step = jnp.where(denominator <= jnp.finfo(float).eps, 0, ratio)

        def scale(g):
            dt = jnp.promote_types(g.dtype, step.dtype)
            return (step.astype(dt) * g.astype(dt)).astype(g.dtype)

        out = jax.tree.map(scale, updates)
        return out, ScaleByPolyakState(
            count=safe_increment(count_of(state)),
            step_size=step.astype(jnp.float32),
            hyperparams=hp,
        )


scale_by_polyak = ScaleByPolyak


@named_optimizer
def polyak_sgd(
    max_learning_rate: ScalarOrSchedule = 1.0,
    scaling: ScalarOrSchedule = 1.0,
    f_min: ScalarOrSchedule = 0.0,
    eps: ScalarOrSchedule = 0.0,
    variant: str = "sps",
) -> Parts:
    r"""SGD with the Polyak step size: ``chain(sgd(scaling), scale_by_polyak(f_min,
    max_learning_rate, eps, variant))``; ``update`` needs ``value=`` (the loss).

    The step is computed from the *scaled* gradient :math:`-c\,g`, so the parameters move by
    :math:`-\min\big((f - f^*)/(c\lVert g\rVert^2 + \epsilon/c),\ c\,\gamma_{\max}\big)\, g`:
    ``scaling`` :math:`c` divides the Polyak step, as the paper's :math:`c` in SPS, and
    multiplies the cap. Same as ``optax.polyak_sgd``.
    """
    check_number("scaling", scaling, low=0.0)
    return (
        sgd(learning_rate=scaling),
        scale_by_polyak(f_min, max_learning_rate, eps, variant),
    )
