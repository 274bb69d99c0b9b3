"""SAM: sharpness-aware minimization around any outer optimizer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    EmptyState,
    GradientTransformation,
    _call_update,
    apply_updates,
    check_bool,
    check_int,
    check_params_match,
    require_params,
    require_values,
    state_class,
    transformation,
)
from gradchain.core.numerics import compute_dtype

__all__ = ["NormalizeState", "SAMState", "normalize", "sam"]

NormalizeState = EmptyState


@transformation("normalize")
class Normalize(GradientTransformation):
    r"""Divides the updates by their global norm: :math:`u = g / \|g\|` (over the whole tree).

    The adversarial step of SAM is ``chain(normalize(), sgd(rho))``: a step of length
    :math:`\rho` up the gradient. A zero gradient stays zero here; optax divides 0 by 0 and
    returns NaN (docs/DIVERGENCES.md).

    Same as ``optax.contrib.normalize`` otherwise; the state is empty.
    """

    complex_params = True

    def init(self, params):
        return NormalizeState()

    def update(self, updates, state, params=None, **extra_args):
        leaves = jax.tree.leaves(updates)
        if not leaves:
            return updates, state
        dtype = jnp.result_type(*[compute_dtype(x.dtype) for x in leaves])
        sq = sum(
            jnp.sum(jnp.square(jnp.abs(x.astype(compute_dtype(x.dtype))))).astype(dtype)
            for x in leaves
        )
        norm = jnp.sqrt(sq).real
        safe = jnp.where(norm == 0, 1, norm)  # a NaN or inf norm still spreads, as in optax
        return jax.tree.map(lambda g: (g / safe.astype(g.dtype)).astype(g.dtype), updates), state


normalize = Normalize


@state_class
class SAMState:
    """``steps_since_sync``: adversarial steps since the last outer step; ``opt_state``: the
    outer optimizer's state; ``adv_state``: the adversarial optimizer's; ``cache``: the
    parameters the adversarial steps started from (None in opaque mode)."""

    steps_since_sync: jax.Array
    opt_state: Any
    adv_state: Any
    cache: Any


def _pick(cond, if_true, if_false):
    # A select, not optax's cond * a + (1 - cond) * b: a non-finite value in the branch not
    # taken (an inf in a skipped adversarial state) must not turn the result into NaN.
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), if_true, if_false)


def _negate(tree):
    return jax.tree.map(lambda x: -x, tree)


@transformation("sam")
class SAM(GradientTransformation):
    r"""Sharpness-aware minimization: the outer optimizer steps with the gradient taken at an
    adversarially perturbed point.

    With :math:`k` = ``sync_period``, each cycle of :math:`k` updates starts at the outer
    parameters :math:`x`, takes :math:`k-1` ascent steps with ``adv_optimizer`` (whose updates
    are negated: it "descends" on :math:`-f`), and at the last the outer optimizer steps from
    :math:`x` with the gradient at the perturbed point:

    .. math::
        \tilde x_0 = x, \quad
        \tilde x_{i+1} = \tilde x_i - \mathrm{adv}(\nabla f(\tilde x_i)) \ (i < k-1), \quad
        x' = x + \mathrm{opt}(\nabla f(\tilde x_{k-1})).

    The paper's SAM is ``sam(opt, chain(normalize(), sgd(rho)), sync_period=2)``:
    :math:`\tilde x = x + \rho\, g/\|g\|`, then the outer step with :math:`\nabla f(\tilde x)`.

    Transparent mode (default): each ``update`` is one of those steps, and the updates move the
    parameters to the perturbed point and back (the training loop computes every gradient).
    ``opaque_mode=True``: each ``update`` runs a whole cycle, calling
    ``grad_fn(params, i)`` for the :math:`k-1` adversarial gradients; the parameters only take
    outer steps (use it when a model keeps statistics such as BatchNorm's).

    Args:
      optimizer: the outer optimizer (any gradient transformation, gradchain's or optax's).
      adv_optimizer: the adversarial one.
      sync_period: :math:`k \ge 1`, default 2.
      reset_state: restart ``adv_optimizer``'s state at each outer step, default True.
      opaque_mode: see above, default False.
      batch_axis_name: in opaque mode, the axis to ``pmean`` the adversarial gradients over
        (inside ``pmap``/``shard_map``), default None.

    Extra keyword arguments of ``update`` (besides ``grad_fn``) reach both inner optimizers.
    State: optax's ``SAMState``. Reference: Foret, Kleiner, Mobahi & Neyshabur,
    "Sharpness-Aware Minimization for Efficiently Improving Generalization" (ICLR 2021),
    Algorithm 1. Same as ``optax.contrib.sam``, except that states and updates are chosen by
    a select rather than optax's arithmetic blend, so a non-finite value in the branch not
    taken stays out.
    """

    optimizer: Any
    adv_optimizer: Any
    sync_period: int = 2
    reset_state: bool = True
    opaque_mode: bool = False
    batch_axis_name: str | None = None

    def __post_init__(self):
        for name in ("optimizer", "adv_optimizer"):
            tx = getattr(self, name)
            if not (hasattr(tx, "init") and hasattr(tx, "update")):
                raise TypeError(f"{name} must be a gradient transformation, got {tx!r}")
        check_int("sync_period", self.sync_period, low=1, what="an int >= 1")
        check_bool("reset_state", self.reset_state)
        check_bool("opaque_mode", self.opaque_mode)
        if self.batch_axis_name is not None and not isinstance(self.batch_axis_name, str):
            raise ValueError(f"batch_axis_name must be a str or None, got {self.batch_axis_name!r}")

    def _copy(self, p):
        require_values(p, self.name)  # transparent mode starts its cycle from these values
        return jnp.array(p, copy=True)

    def init(self, params):
        return SAMState(
            steps_since_sync=jnp.zeros((), jnp.int32),
            opt_state=self.optimizer.init(params),
            adv_state=self.adv_optimizer.init(params),
            cache=None if self.opaque_mode else jax.tree.map(self._copy, params),
        )

    def update(self, updates, state, params=None, *, grad_fn=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        if self.opaque_mode:
            return self._opaque(updates, state, params, grad_fn, extra_args)
        return self._transparent(updates, state, params, extra_args)

    def _transparent(self, updates, state, params, extra_args):
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == self.sync_period - 1
        adv_updates, adv_state = _call_update(
            self.adv_optimizer, updates, state.adv_state, params, extra_args
        )
        adv_updates = _negate(adv_updates)
        opt_updates, opt_state = _call_update(
            self.optimizer, updates, state.opt_state, state.cache, extra_args
        )
        # The outer step is taken from the cached outer parameters: undo the excursion too.
        opt_updates = jax.tree.map(
            lambda c, p, u: (c - p + u).astype(u.dtype), state.cache, params, opt_updates
        )
        if self.reset_state:
            adv_state = _pick(last, self.adv_optimizer.init(params), adv_state)
        else:
            adv_state = _pick(last, state.adv_state, adv_state)
        return _pick(last, opt_updates, adv_updates), SAMState(
            steps_since_sync=(state.steps_since_sync + 1) % self.sync_period,
            opt_state=_pick(last, opt_state, state.opt_state),
            adv_state=adv_state,
            cache=_pick(first, params, state.cache),
        )

    def _opaque(self, updates, state, params, grad_fn, extra_args):
        if grad_fn is None and self.sync_period > 1:
            raise ValueError(
                f"{self.name}: opaque_mode=True needs update(..., grad_fn=f) with f(params, i) "
                "the gradient at params for adversarial step i"
            )
        adv_params, adv_grads, adv_state = params, updates, state.adv_state
        for i in range(self.sync_period - 1):
            adv_updates, adv_state = _call_update(
                self.adv_optimizer, adv_grads, adv_state, adv_params, extra_args
            )
            adv_params = apply_updates(adv_params, _negate(adv_updates))
            adv_grads = grad_fn(adv_params, i)
            if self.batch_axis_name is not None:
                adv_grads = jax.lax.pmean(adv_grads, axis_name=self.batch_axis_name)
        if self.reset_state:
            adv_state = self.adv_optimizer.init(params)
        out, opt_state = _call_update(
            self.optimizer, adv_grads, state.opt_state, params, extra_args
        )
        return out, SAMState(
            steps_since_sync=jnp.zeros((), jnp.int32),
            opt_state=opt_state,
            adv_state=adv_state,
            cache=None,
        )


sam = SAM
