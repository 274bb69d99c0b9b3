"""Weight decay: decoupled (AdamW-style), its optax-compatible name, and the coupled L2 penalty."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    ScalarOrSchedule,
    check_number,
    check_params_match,
    count_of,
    require_params,
    state_class,
    stateless_call,
    transformation,
)
from gradchain.core.masks import resolve_mask
from gradchain.core.numerics import compute_dtype, init_count, leaf_kernel, safe_increment

__all__ = [
    "AddDecayedWeightsState",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "add_l2_penalty",
]


@state_class(extras=("count", "hyperparams"))
class WeightDecayState:
    """``count``: updates done; ``hyperparams``: the weight decay the latest update used."""

    count: jax.Array | None
    hyperparams: dict | None


@transformation("add_decoupled_weight_decay", hyperparams=("weight_decay",))
class AddDecoupledWeightDecay(GradientTransformation):
    r"""Adds decayed weights to the updates: :math:`u = g + \lambda\, p`.

    Placed *after* an adaptive scaling such as ``scale_by_adam`` and *before*
    ``scale_by_learning_rate``, it gives decoupled weight decay (AdamW): the total step is
    :math:`-\eta_t (\hat m/(\sqrt{\hat v}+\epsilon) + \lambda p)`, the decay multiplied by the full
    scheduled learning rate as in PyTorch's AdamW and optax. Placed before the scaling it is a
    coupled L2 penalty instead (see ``add_l2_penalty``).

    Args:
      weight_decay: :math:`\lambda \ge 0` (a float or a schedule), default 0.
      mask: which leaves decay: a pytree of bools (or a prefix of the params' tree), a callable
        ``params -> pytree of bools``, a regular expression over the parameter paths or a
        ``path_mask`` (see :mod:`gradchain.masks`). Leaves where it is False pass through
        unchanged.

    Loshchilov & Hutter (2019) multiply the decay by the schedule multiplier only, not by the
    base learning rate: ``lambda_torch = lambda_paper / lr`` (ALGORITHMS.md §3.2).
    Same as ``optax.add_decayed_weights``, which also returns the updates untouched for a
    constant 0 (the parameters are not read, and an infinite parameter gives no ``0 * inf``).
    """

    complex_params = True

    weight_decay: ScalarOrSchedule = 0.0
    mask: Any = None

    def __post_init__(self):
        check_number("weight_decay", self.weight_decay, low=0.0)

    def init(self, params):
        return WeightDecayState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        if updates is None:
            # optax maps over the updates, and None is a tree without leaves.
            return updates, state
        require_params(params, self.name)
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        wd = hp["weight_decay"]
        selected = resolve_mask(self.mask, params, self.name)

        def decay(g, p, on):
            return g if g is None or not on else _decay_leaf(g, p, wd)

        if self.skips_zero:
            # optax returns the updates untouched for a constant zero: no read of the
            # parameters, and a NaN or infinite parameter does not reach the update as 0 * inf.
            out = updates
        else:
            out = jax.tree.map(decay, updates, params, selected, is_leaf=lambda x: x is None)
        if stateless_call(state):
            return out, state
        return out, WeightDecayState(count=safe_increment(count_of(state)), hyperparams=hp)

    @property
    def skips_zero(self) -> bool:
        """Whether the weight decay is the constant 0 (a number, not a schedule or an array, and
        not live: :func:`tree_set` cannot change it), which optax skips."""
        wd = self.weight_decay
        return (
            isinstance(wd, (int, float))
            and not isinstance(wd, bool)
            and wd == 0
            and not self.live_hyperparams
        )


add_decoupled_weight_decay = AddDecoupledWeightDecay


@leaf_kernel()
def _decay_leaf(g, p, wd):
    dt = compute_dtype(jnp.promote_types(g.dtype, p.dtype))
    return (g.astype(dt) + wd.astype(dt) * p.astype(dt)).astype(g.dtype)


def add_decayed_weights(
    weight_decay: ScalarOrSchedule = 0.0, mask: MaskOrFn = None
) -> AddDecoupledWeightDecay:
    """optax's name for :func:`add_decoupled_weight_decay` (same arguments, same result)."""
    return AddDecoupledWeightDecay(weight_decay=weight_decay, mask=mask)


@transformation("add_l2_penalty", hyperparams=("weight_decay",))
class AddL2Penalty(AddDecoupledWeightDecay):
    r"""Adds the gradient of the L2 penalty :math:`\tfrac{\lambda}{2}\lVert p\rVert^2`:
    :math:`g' = g + \lambda\, p`.

    The arithmetic is that of :class:`add_decoupled_weight_decay`; the difference is where it
    goes. Placed *first*, before an adaptive scaling, the penalty passes through the moments:
    ``chain(add_l2_penalty(wd), adam(lr))`` is "Adam + L2", PyTorch's ``Adam(weight_decay=wd)``
    (ALGORITHMS.md §3.2). There the decay of a weight is divided by the root of its second moment,
    so its effect shrinks as gradients grow: Adam + L2 is *not* AdamW, whose decay
    :math:`\eta\lambda p` does not depend on the gradients (Loshchilov & Hutter, 2019).
    ``chain(add_l2_penalty(wd), sgd(lr, momentum))`` is PyTorch's ``SGD(weight_decay=wd)``.

    Args:
      weight_decay: :math:`\lambda \ge 0` (a float or a schedule); no default.
      mask: which leaves are penalised: a pytree of bools (or a prefix of the params' tree) or a
        callable ``params -> pytree of bools``.

    optax has no separate name for it: ``optax.add_decayed_weights`` placed before the scaling.
    """

    weight_decay: ScalarOrSchedule = (
        dataclasses.field()
    )  # required: the inherited default is dropped
    mask: Any = None


add_l2_penalty = AddL2Penalty

# optax names of the same states.
AddDecayedWeightsState = WeightDecayState
