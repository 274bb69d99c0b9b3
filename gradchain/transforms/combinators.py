"""Combinators for real training: masks, parameter groups, skipping bad steps, accumulation.

Each combinator wraps one or more transformations and is itself a transformation, with optax's
name, arguments and state field names (``masked``, ``partition`` alias ``multi_transform``,
``apply_if_finite``, ``MultiSteps``, ``freeze``, ``set_to_zero``, ``zero_nans``). Masks and labels
take every form described in :mod:`gradchain.masks`: trees of bools, callables, path patterns.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    EmptyState,
    GradientTransformation,
    MaskOrFn,
    Params,
    ShouldSkipUpdateFunction,
    Updates,
    _call_update,
    _path_list,
    check_bool,
    check_dtype,
    check_int,
    check_params_match,
    check_tree_match,
    cond,
    state_class,
    transformation,
)
from gradchain.core.masks import resolve_labels, resolve_mask
from gradchain.core.numerics import safe_increment, zeros_like_param

__all__ = [
    "ApplyIfFiniteState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "PartitionState",
    "ShouldSkipUpdateFunction",
    "ZeroNansState",
    "apply_if_finite",
    "freeze",
    "masked",
    "multi_transform",
    "partition",
    "selective_transform",
    "set_to_zero",
    "skip_large_updates",
    "skip_not_finite",
    "zero_nans",
]


def _require_transformation(tx, what: str) -> None:
    if not (hasattr(tx, "init") and hasattr(tx, "update")):
        raise TypeError(
            f"{what} must be a gradient transformation (with init and update), got {tx!r}"
        )


def _zeros_like_tree(tree):
    return jax.tree.map(jnp.zeros_like, tree)


# ---------------------------------------------------------------------------------------------
# masked


class MaskedNode(NamedTuple):
    """Stands in for a leaf a mask leaves out: an empty pytree, so tree maps skip it."""


def _hide(tree, selected):
    """``tree`` with every part that is not selected replaced by a :class:`MaskedNode`.

    ``selected`` may be a prefix of ``tree``: a whole subtree left out becomes one MaskedNode,
    as optax lays out the state of ``masked`` with a prefix mask.
    """
    return jax.tree.map(lambda on, x: x if on else MaskedNode(), selected, tree)


def _mask_prefix(mask, tree, transform_name: str):
    """The mask as bools in the structure it was given in (a prefix of ``tree``, or the whole
    tree for a callable, a pattern or None), after :func:`resolve_mask` checked it."""
    full = resolve_mask(mask, tree, transform_name)
    if mask is None or callable(mask) or isinstance(mask, (str, re.Pattern)):
        return full
    return jax.tree.map(bool, mask)


def _masked_extra_args(extra_args, updates, selected, enabled: bool):
    if not enabled:
        return extra_args
    structure = jax.tree.structure(updates)
    return {
        k: _hide(v, selected) if jax.tree.structure(v) == structure else v
        for k, v in extra_args.items()
    }


def _update_selected(tx, selected, updates, state, params, extra_args, mask_extra_args):
    """Runs ``tx`` on the selected leaves only; returns its updates there (MaskedNode elsewhere)."""
    return _call_update(
        tx,
        _hide(updates, selected),
        state,
        None if params is None else _hide(params, selected),
        _masked_extra_args(extra_args, updates, selected, mask_extra_args),
    )


def _merge(selected, chosen, updates):
    """``chosen`` where ``selected`` is True, ``updates`` elsewhere."""
    return jax.tree.map(lambda on, new, old: new if on else old, selected, chosen, updates)


@state_class
class MaskedState:
    """``inner_state``: the state of the wrapped transformation, which holds entries for the
    selected leaves only (:class:`MaskedNode` stands in for the others)."""

    inner_state: Any


@transformation("masked")
class Masked(GradientTransformation):
    r"""Applies ``inner`` to the selected leaves; the others pass through unchanged.

    .. math:: u_i = \text{inner}(g)_i \text{ if } \text{mask}_i \text{ else } g_i

    The inner transformation keeps state for the selected leaves only. The usual weight-decay
    mask by path::

        gc.masked(gc.add_decoupled_weight_decay(0.1), gc.path_mask(exclude=r"bias|norm|embed"))

    Args:
      inner: the transformation to apply to the selected leaves.
      mask: which leaves: a pytree of bools (or a prefix of the params' tree), a callable
        ``params -> pytree of bools`` (called with the params in ``init`` and with the updates in
        ``update``, as optax does), a regular expression over the parameter path strings, or a
        :func:`path_mask` (see :mod:`gradchain.masks`). The mask must not depend on traced values.
      mask_compatible_extra_args: also mask the extra ``update`` arguments that have the
        updates' structure (keyword-only, default False).

    Same as ``optax.masked``, with path patterns added.
    """

    inner: Any
    mask: Any
    _: dataclasses.KW_ONLY
    mask_compatible_extra_args: bool = False

    def __post_init__(self):
        _require_transformation(self.inner, "inner")
        check_bool("mask_compatible_extra_args", self.mask_compatible_extra_args)

    def init(self, params):
        if not jax.tree.leaves(params):
            # Nothing to mask: also how optax's tree_map_params asks for the state's layout,
            # with a placeholder node standing for the whole parameter tree.
            return MaskedState(inner_state=self.inner.init(params))
        selected = _mask_prefix(self.mask, params, self.name)
        return MaskedState(inner_state=self.inner.init(_hide(params, selected)))

    def update(self, updates, state, params=None, **extra_args):
        check_params_match(updates, params)
        selected = _mask_prefix(self.mask, updates, self.name)
        inner_updates, inner_state = _update_selected(
            self.inner,
            selected,
            updates,
            state.inner_state,
            params,
            extra_args,
            self.mask_compatible_extra_args,
        )
        return _merge(selected, inner_updates, updates), MaskedState(inner_state=inner_state)


masked = Masked


@transformation("set_to_zero")
class SetToZero(GradientTransformation):
    """Replaces the updates by zeros: ``u = 0``. State: :class:`EmptyState`.

    With ``masked`` or ``partition`` it freezes parameters. Same as ``optax.set_to_zero``.
    """

    complex_params = True

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return _zeros_like_tree(updates), state


set_to_zero = SetToZero


def freeze(mask: MaskOrFn) -> Masked:
    """Sets the updates of the leaves selected by ``mask`` to zero: those parameters stay fixed.

    ``mask`` takes every form :func:`masked` accepts (True freezes a leaf), including a single
    bool for the whole tree. ``freeze(mask)`` is ``masked(set_to_zero(), mask)``; chain it before
    an optimizer to freeze layers while the optimizer still keeps (unused) state for them, or use
    :func:`selective_transform` to keep no state for frozen leaves. Same as ``optax.freeze``.
    """
    return Masked(SetToZero(), mask)


# ---------------------------------------------------------------------------------------------
# partition (parameter groups)


@state_class
class PartitionState:
    """``inner_states``: the state of each group's transformation, by label, in a
    :class:`MaskedState` (optax's layout).

    ``state["decay"]`` (``state.inner_states["decay"].inner_state``) is the state of the group
    labelled ``"decay"``, exactly as its transformation made it, so ``gc.tree_get(state["decay"],
    "mu")`` reads that group's first moment. An integer that is not a label indexes by position,
    as optax's NamedTuple: ``state[0]`` is ``inner_states``.
    """

    inner_states: Mapping

    def __getitem__(self, label):
        if isinstance(label, slice) or (isinstance(label, int) and label not in self.inner_states):
            return (self.inner_states,)[label]
        return self.inner_states[label].inner_state

    def with_group(self, label, group_state) -> PartitionState:
        """This state with the group ``label``'s state replaced by ``group_state``; for example
        ``state.with_group("head", gc.tree_set(state["head"], learning_rate=1e-4))``."""
        if label not in self.inner_states:
            raise KeyError(f"no group labelled {label!r} (labels: {list(self.inner_states)})")
        masked = MaskedState(inner_state=group_state)
        return PartitionState(inner_states={**self.inner_states, label: masked})


@transformation("partition")
class Partition(GradientTransformation):
    r"""Parameter groups: each leaf is updated by the transformation of its label.

    .. math:: u_i = T_{\ell(i)}(g)_i

    PyTorch's parameter groups, each with its own optimizer and hyperparameters::

        tx = gc.partition(
            {"decay": gc.adamw(3e-4, weight_decay=0.1), "no_decay": gc.adam(3e-4)},
            gc.path_labels({r"bias|norm|embed": "no_decay"}, default="decay"),
        )
        state = tx.init(params)
        state["decay"]                            # the AdamW group's own state
        state = tx.reset(state, "decay", params)  # restart that group's moments
        state = state.with_group("no_decay", gc.tree_set(state["no_decay"], learning_rate=1e-4))

    Args:
      transforms: a mapping from label to transformation.
      param_labels: each leaf's label: a pytree of labels (or a prefix of the params' tree) or a
        callable ``params -> pytree of labels`` such as :func:`path_labels`. Every label must be
        a key of ``transforms``.
      mask_compatible_extra_args: also mask the extra ``update`` arguments that have the
        updates' structure (keyword-only, default False).

    Same as ``optax.partition`` (``optax.multi_transform``), state included: ``inner_states``
    holds each group's state wrapped in a ``MaskedState``.
    """

    transforms: Mapping
    param_labels: Any
    _: dataclasses.KW_ONLY
    mask_compatible_extra_args: bool = False

    def __post_init__(self):
        if not isinstance(self.transforms, Mapping) or not self.transforms:
            raise ValueError(
                f"transforms must be a non-empty mapping from label to transformation, got "
                f"{self.transforms!r}"
            )
        for label, tx in self.transforms.items():
            _require_transformation(tx, f"transforms[{label!r}]")
        check_bool("mask_compatible_extra_args", self.mask_compatible_extra_args)

    def labels(self, tree):
        """The label of every leaf of ``tree`` (the params' tree), checked against ``transforms``."""
        labels = resolve_labels(self.param_labels, tree, self.name)
        # A None leaf of the params (no parameter there) has no label to check.
        for path, label in _path_list(labels):
            if label is None:
                continue
            try:
                known = label in self.transforms
            except TypeError:
                known = False
            if not known:
                raise ValueError(
                    f"{self.name}: the parameter {path or '<root>'} has the label {label!r}, which "
                    f"has no transformation (labels with one: {list(self.transforms)})"
                )
        return labels

    def _selected(self, labels, label):
        return jax.tree.map(lambda leaf_label: leaf_label == label, labels)

    def init_group(self, label, params):
        """A fresh state for the group ``label`` (its transformation's ``init`` on its leaves)."""
        if label not in self.transforms:
            raise KeyError(f"no group labelled {label!r} (labels: {list(self.transforms)})")
        selected = self._selected(self.labels(params), label)
        return self.transforms[label].init(_hide(params, selected))

    def init(self, params):
        labels = self.labels(params)
        return PartitionState(
            inner_states={
                label: MaskedState(
                    inner_state=tx.init(_hide(params, self._selected(labels, label)))
                )
                for label, tx in self.transforms.items()
            }
        )

    def reset(self, state: PartitionState, label, params) -> PartitionState:
        """``state`` with the group ``label`` started afresh (moments and counters at zero)."""
        return state.with_group(label, self.init_group(label, params))

    def update(self, updates, state, params=None, **extra_args):
        check_params_match(updates, params)
        labels = self.labels(updates)
        out = updates
        new_states = {}
        for label, tx in self.transforms.items():
            selected = self._selected(labels, label)
            group_updates, group_state = _update_selected(
                tx,
                selected,
                updates,
                state[label],
                params,
                extra_args,
                self.mask_compatible_extra_args,
            )
            new_states[label] = MaskedState(inner_state=group_state)
            out = _merge(selected, group_updates, out)
        return out, PartitionState(inner_states=new_states)


partition = Partition
multi_transform = Partition


@dataclasses.dataclass(frozen=True)
class _FreezeLabels:
    """``"freeze"`` where the mask selects a leaf, ``"train"`` elsewhere (comparable data, so
    equal ``selective_transform`` calls give equal transformations)."""

    freeze_mask: Any

    def __call__(self, tree):
        selected = resolve_mask(self.freeze_mask, tree, "selective_transform")
        return jax.tree.map(lambda frozen: "freeze" if frozen else "train", selected)


def selective_transform(optimizer: GradientTransformation, *, freeze_mask: MaskOrFn) -> Partition:
    """Updates the leaves where ``freeze_mask`` is False with ``optimizer``; keeps the others
    fixed, with no optimizer state for them.

    ``partition({"train": optimizer, "freeze": set_to_zero()}, labels)``, so the optimizer's
    state is ``state["train"]``. Same as ``optax.selective_transform``; ``freeze_mask`` takes
    every form a mask takes.
    """
    return Partition({"train": optimizer, "freeze": SetToZero()}, _FreezeLabels(freeze_mask))


# ---------------------------------------------------------------------------------------------
# Non-finite values


@state_class
class ZeroNansState:
    """``found_nan``: per leaf, whether the latest updates had a NaN there."""

    found_nan: Any


@transformation("zero_nans")
class ZeroNans(GradientTransformation):
    """Replaces NaN entries of the updates by zero: ``u = where(isnan(g), 0, g)``.

    Infinities pass through. The state records, per leaf, whether the latest update had a NaN
    (``found_nan``), for logging. Same as ``optax.zero_nans``.
    """

    def init(self, params):
        return ZeroNansState(found_nan=jax.tree.map(lambda _: jnp.array(False), params))

    def update(self, updates, state, params=None, **extra_args):
        flags = jax.tree.map(lambda _: False, updates)  # a structure check: found_nan is per leaf
        check_tree_match(flags, state.found_nan, "updates", "state.found_nan")
        found = jax.tree.map(lambda g: jnp.any(jnp.isnan(g)), updates)
        out = jax.tree.map(lambda g: jnp.where(jnp.isnan(g), jnp.zeros_like(g), g), updates)
        return out, ZeroNansState(found_nan=found)


zero_nans = ZeroNans


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


@state_class
class ApplyIfFiniteState:
    """``notfinite_count``: non-finite updates in a row (0 after a finite one);
    ``last_finite``: whether the latest updates were finite; ``total_notfinite``: non-finite
    updates since ``init`` (never reset); ``inner_state``: the wrapped transformation's state."""

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: Any


@transformation("apply_if_finite")
class ApplyIfFinite(GradientTransformation):
    r"""Skips steps whose updates contain NaN or Inf: zero updates, inner state unchanged.

    With :math:`n` the number of non-finite updates in a row including this one,

    .. math:: (u, s') = \text{inner}(g, s) \text{ if } g \text{ finite or } n > N
              \text{ else } (0, s)

    so a skipped step leaves the parameters (``p + 0``) and the inner state exactly as they
    were. After :math:`N` skipped steps in a row, non-finite updates are let through (the
    optimizer gives up) until a finite one resets :math:`n` to 0.

    Args:
      inner: the transformation to protect.
      max_consecutive_errors: :math:`N \ge 0`, how many non-finite updates in a row are skipped.

    The counters are in the state, under optax's names: ``notfinite_count``,
    ``total_notfinite``, ``last_finite``. Same as ``optax.apply_if_finite``.
    """

    inner: Any
    max_consecutive_errors: int

    def __post_init__(self):
        _require_transformation(self.inner, "inner")
        check_int("max_consecutive_errors", self.max_consecutive_errors, what="an int >= 0")

    def init(self, params):
        zero = jnp.zeros((), jnp.int32)
        return ApplyIfFiniteState(
            notfinite_count=zero,
            last_finite=jnp.array(True),
            total_notfinite=zero,
            inner_state=self.inner.init(params),
        )

    def update(self, updates, state, params=None, **extra_args):
        finite = _all_finite(updates)
        notfinite_count = jnp.where(finite, 0, safe_increment(state.notfinite_count))
        apply = jnp.logical_or(finite, notfinite_count > self.max_consecutive_errors)

        def inner_update():
            return _call_update(self.inner, updates, state.inner_state, params, extra_args)

        # Zeros shaped like what inner returns, which need not be the updates' structure
        # (lookahead returns LookaheadParams).
        out_shape = jax.eval_shape(inner_update)[0]
        out, inner_state = cond(
            apply,
            inner_update,
            lambda: (
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape),
                state.inner_state,
            ),
        )
        return out, ApplyIfFiniteState(
            notfinite_count=notfinite_count.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=jnp.where(
                finite, state.total_notfinite, safe_increment(state.total_notfinite)
            ),
            inner_state=inner_state,
        )


apply_if_finite = ApplyIfFinite


# ---------------------------------------------------------------------------------------------
# Gradient accumulation


def skip_not_finite(
    updates: Updates, gradient_step: jax.Array, params: Params | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps`: skip micro-batches with NaN or Inf.

    Returns ``(should_skip, {"should_skip": ..., "num_not_finite": ...})``. Same as
    ``optax.skip_not_finite``.
    """
    del gradient_step, params
    counts = [jnp.sum(~jnp.isfinite(x)) for x in jax.tree.leaves(updates)]
    num = jnp.sum(jnp.stack(counts)) if counts else jnp.zeros((), jnp.int32)
    skip = num > 0
    return skip, {"should_skip": skip, "num_not_finite": num}


def skip_large_updates(
    updates: Updates,
    gradient_step: jax.Array,
    params: Params | None,
    max_squared_norm: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A ``should_skip_update_fn`` for :class:`MultiSteps` (bind ``max_squared_norm`` with
    ``functools.partial``): skip micro-batches whose squared global norm is not below it.

    Returns ``(should_skip, {"should_skip": ..., "norm_squared": ...})``; a NaN norm is skipped.
    Same as ``optax.skip_large_updates``.
    """
    del gradient_step, params
    sq = [jnp.sum(jnp.square(x)) for x in jax.tree.leaves(updates)]
    norm_sq = jnp.sum(jnp.stack(sq)) if sq else jnp.zeros(())
    skip = jnp.logical_not(norm_sq < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": norm_sq}


def _never_skip(updates, gradient_step, params):
    return jnp.array(False), ()


@state_class
class MultiStepsState:
    """``mini_step``: micro-batches accumulated since the last real update; ``gradient_step``:
    real updates done; ``inner_opt_state``: the wrapped optimizer's state; ``acc_grads``: the
    one accumulation buffer (mean or sum of the micro-batch gradients so far); ``skip_state``:
    what ``should_skip_update_fn`` reported for the latest micro-batch."""

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: Any
    acc_grads: Any
    skip_state: Any = ()


@transformation("MultiSteps")
class MultiSteps(GradientTransformation):
    r"""Gradient accumulation: one real update of ``opt`` every ``k`` micro-batches.

    With :math:`j` the micro-batch index within the current real step (0-based),

    .. math::
        a_{j} = a_{j-1} + \frac{g_j - a_{j-1}}{j + 1} \;(\text{mean}), \quad
        u = \begin{cases} \text{opt}(a_{k-1}) & j = k - 1 \\ 0 & \text{otherwise} \end{cases}

    and the buffer :math:`a` is cleared after each real update. ``opt`` runs only on the last
    micro-batch of each group (under ``lax.cond``), and the state holds one buffer the size of
    the gradients besides ``opt``'s own state. Since :math:`a_{k-1}` is the mean of the ``k``
    micro-batch gradients, a real update equals one step of ``opt`` on the gradient of the
    concatenated batch (for a loss that averages over examples), up to float rounding, whatever
    ``opt`` is.

    Args:
      opt: the wrapped optimizer.
      every_k_schedule: ``k``, an int >= 1, or a function of the real-update count
        (``gradient_step``) giving ``k``, to grow the batch during training.
      use_grad_mean: average the micro-batch gradients (default) or sum them.
      should_skip_update_fn: ``(updates, gradient_step, params) -> (skip, skip_state)``; a
        skipped micro-batch changes nothing but ``skip_state`` (see :func:`skip_not_finite`).
      accumulator_dtype: dtype of the buffer, default float32.

    Use it as optax's: ``MultiSteps(opt, k).init/.update``, ``.gradient_transformation()``
    (here the object itself), ``.has_updated(state)``, ``.inner_opt``. Same as
    ``optax.MultiSteps``, except that ``opt`` is not evaluated on the other micro-batches.
    """

    opt: Any
    every_k_schedule: Any
    use_grad_mean: bool = True
    should_skip_update_fn: ShouldSkipUpdateFunction | None = None
    accumulator_dtype: Any = jnp.float32

    def __post_init__(self):
        _require_transformation(self.opt, "opt")
        if not callable(self.every_k_schedule):
            check_int(
                "every_k_schedule", self.every_k_schedule, low=1, what="an int >= 1 or a schedule"
            )
        check_bool("use_grad_mean", self.use_grad_mean)
        if self.should_skip_update_fn is not None and not callable(self.should_skip_update_fn):
            raise ValueError(
                f"should_skip_update_fn must be callable or None, got {self.should_skip_update_fn!r}"
            )
        if self.accumulator_dtype is None:
            raise ValueError("accumulator_dtype must be a floating dtype, got None")
        check_dtype("accumulator_dtype", self.accumulator_dtype)

    @property
    def inner_opt(self):
        """The wrapped optimizer."""
        return self.opt

    def gradient_transformation(self) -> MultiSteps:
        """This object: it already is a gradient transformation (optax returns a wrapper)."""
        return self

    def has_updated(self, state: MultiStepsState) -> jax.Array:
        """Whether the latest ``update`` was a real update of ``opt``."""
        return jnp.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def _k(self, gradient_step):
        k = self.every_k_schedule
        return k(gradient_step) if callable(k) else k

    def _skip_fn(self):
        return self.should_skip_update_fn or _never_skip

    def init(self, params):
        gradient_step = jnp.zeros((), jnp.int32)
        zeros = jax.tree.map(zeros_like_param, params)
        _, skip_state = self._skip_fn()(zeros, gradient_step, params)
        return MultiStepsState(
            mini_step=jnp.zeros((), jnp.int32),
            gradient_step=gradient_step,
            inner_opt_state=self.opt.init(params),
            acc_grads=jax.tree.map(lambda p: zeros_like_param(p, self.accumulator_dtype), params),
            skip_state=skip_state,
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.acc_grads, "updates", "state.acc_grads")
        check_params_match(updates, params)
        k = self._k(state.gradient_step)
        skip, skip_state = self._skip_fn()(updates, state.gradient_step, params)
        skip = jnp.asarray(skip)
        if skip.dtype != jnp.bool_ or skip.shape != ():
            raise ValueError(
                f"should_skip_update_fn must return a scalar bool first, got an array of dtype "
                f"{skip.dtype} and shape {skip.shape}"
            )
        n = state.mini_step

        def accumulate(g, acc):
            g = g.astype(acc.dtype)
            return acc + (g - acc) / (n + 1).astype(acc.dtype) if self.use_grad_mean else acc + g

        acc = jax.tree.map(accumulate, updates, state.acc_grads)

        def emit():
            grads = jax.tree.map(lambda a, g: a.astype(g.dtype), acc, updates)
            out, inner = _call_update(self.opt, grads, state.inner_opt_state, params, extra_args)
            cleared = _zeros_like_tree(acc)
            return (
                out,
                inner,
                cleared,
                jnp.zeros((), jnp.int32),
                safe_increment(state.gradient_step),
            )

        out_shape = jax.eval_shape(lambda: emit()[0])

        def hold(acc_grads, mini_step):
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)
            return zeros, state.inner_opt_state, acc_grads, mini_step, state.gradient_step

        def step():
            return cond(n == k - 1, emit, lambda: hold(acc, safe_increment(n)))

        out, inner, acc_grads, mini_step, gradient_step = cond(
            skip, lambda: hold(state.acc_grads, n), step
        )
        return out, MultiStepsState(
            mini_step=mini_step,
            gradient_step=gradient_step,
            inner_opt_state=inner,
            acc_grads=acc_grads,
            skip_state=skip_state,
        )


# optax names of the same states.
MultiTransformState = PartitionState
