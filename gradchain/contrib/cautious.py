"""Cautious optimizers: keep only the coordinates where the update agrees with the gradient."""

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
    _call_update,
    check_bool,
    check_floating,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import leaf_kernel
from gradchain.optimizers.lion import scale_by_lion
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["CautiousState", "cautious", "cautious_adamw", "cautious_lion"]


@state_class
class CautiousState:
    """``inner_state``: the state of the wrapped transformation (the mask keeps nothing)."""

    inner_state: Any


@transformation("cautious")
class Cautious(GradientTransformation):
    r"""Masks the updates of ``inner`` where they disagree in sign with the gradient.

    With :math:`u_t` the update of ``inner`` and :math:`g_t` the incoming gradient, per leaf of
    :math:`d` coordinates,

    .. math::
        \phi_t = \mathbb{1}[u_t \odot g_t > 0], \qquad
        \tilde u_t = u_t \odot \phi_t \cdot \frac{d}{\textstyle\sum_i \phi_{t,i} + 1},

    so a coordinate whose momentum points against the current gradient does not move this step,
    and the surviving ones are scaled up so that the update keeps its size. The state of
    ``inner`` is updated as without the mask.

    Args:
      inner: a transformation whose updates point along the gradient (a ``scale_by_*``
        transformation such as :func:`scale_by_adam` or :func:`scale_by_lion`). Weight decay
        belongs after the mask (as in :func:`cautious_adamw`): inside it, the decay of a
        coordinate would be masked with its gradient step.
      descent: keyword-only, default False. True when ``inner``'s updates already point
        downhill (a whole optimizer ending in ``scale_by_learning_rate``): the mask keeps
        :math:`u_t \odot g_t < 0` instead.

    Reference: Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of
    Code" (2024), Algorithm 1 and the authors' code (kyleliang919/C-Optim:
    ``mask = (exp_avg * grad > 0); mask = mask * (mask.numel() / (mask.sum() + 1))``, one
    normalization per parameter tensor, which this follows: :math:`\phi` is strict, a zero
    product is masked). optax has no counterpart.
    """

    inner: GradientTransformation
    _: dataclasses.KW_ONLY
    descent: bool = False

    complex_params = False

    def __post_init__(self):
        if not isinstance(self.inner, GradientTransformation) and not (
            hasattr(self.inner, "init") and hasattr(self.inner, "update")
        ):
            raise ValueError(f"inner must be a gradient transformation, got {self.inner!r}")
        check_bool("descent", self.descent)

    def init(self, params):
        check_floating(params, self.name)
        return CautiousState(inner_state=self.inner.init(params))

    def update(self, updates, state, params=None, **extra_args):
        inner_updates, inner_state = _call_update(
            self.inner, updates, state.inner_state, params, extra_args
        )
        sign = -1.0 if self.descent else 1.0
        masked = jax.tree.map(lambda u, g: _cautious_leaf(u, g, sign), inner_updates, updates)
        return masked, CautiousState(inner_state=inner_state)


cautious = Cautious


@leaf_kernel("sign")
def _cautious_leaf(u, g, sign: float):
    """The masked, rescaled update of one leaf (the mask's count is exact in float32 up to
    2^24 coordinates per leaf, and within one rounding beyond)."""
    u32 = u.astype(jnp.float32)
    keep = (sign * u32 * g.astype(jnp.float32)) > 0
    scale = keep.size / (jnp.sum(keep, dtype=jnp.float32) + 1)
    # A product, as the authors' ``u * mask``: a NaN update stays NaN (a ``where`` would hide it
    # as a zero step while the NaN sits in the inner state).
    return (u32 * (keep * scale)).astype(u.dtype)


@named_optimizer
def cautious_adamw(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    eps_root: ScalarOrSchedule = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-4,
    mask: MaskOrFn = None,
) -> Parts:
    r"""Cautious AdamW (C-AdamW): ``chain(cautious(scale_by_adam(b1, b2, eps, eps_root,
    mu_dtype)), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:

    .. math:: p_t = p_{t-1} - \eta_{t-1}\big(\tilde u_t + \lambda p_{t-1}\big)

    with :math:`\tilde u_t` Adam's update masked by :func:`cautious`. The authors' ``AdamW``
    (C-Optim) applies the decay as :math:`p (1 - \eta\lambda)` before the step, the same
    parameters; defaults as :func:`adamw`'s (optax's).
    """
    return (
        cautious(scale_by_adam(b1, b2, eps, eps_root, mu_dtype)),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


@named_optimizer
def cautious_lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> Parts:
    r"""Cautious Lion (C-Lion): ``chain(cautious(scale_by_lion(b1, b2, mu_dtype)),
    add_decoupled_weight_decay(weight_decay, mask), scale_by_learning_rate(learning_rate))``:
    the sign update of :func:`lion` where it agrees with the gradient, scaled by
    :math:`d/(\text{kept} + 1)`, plus the decay. Defaults as :func:`lion`'s (optax's).
    """
    return (
        cautious(scale_by_lion(b1, b2, mu_dtype)),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
