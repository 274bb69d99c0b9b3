r"""Flat buffers: one contiguous buffer per dtype instead of one array per parameter.

A model of thousands of small parameter arrays makes thousands of small kernels: XLA compiles
every distinct one (minutes for a few thousand leaves) and launches every one at every step,
which on a CPU costs more than the arithmetic. PyTorch's fused and multi-tensor optimizers, and
its FSDP ``FlatParameter``, answer with flat buffers; so does this module, in two ways.

**Flat parameters** (:func:`flat_layout`): keep the parameters themselves in one buffer per
dtype (per label, if masks must tell leaves apart) and let the model cut them with
``layout.unravel``. The optimizer is then any gradchain optimizer over a dict of a few buffers:
its step compiles and runs as for a single array, whatever the number of leaves, and the
gradient of ``unravel`` is a single concatenation.

**Flat optimizer state** (:func:`flatten`): keep the parameter tree, and run a transformation
over flat buffers inside the step. ``flatten(tx)`` splits ``tx`` (a transformation or a chain,
nested chains included) in two:

* the leading part runs on the flat buffers. It must consist of transformations that act on
  each coordinate alone or through a global reduction (Adam's moments and its AMSGrad, Adamax,
  NAdam and RAdam variants, RMS, Adagrad, Lion, momentum, ``clip_by_global_norm``), for which a flat buffer and a tree give the same numbers (up to
  the order of the norm's sum);
* the trailing transformations that keep no per-parameter state (weight decay, learning rate,
  scaling) run on the tree, after the updates are cut back: they need the parameters, which
  then need not be concatenated, their per-leaf masks work as usual, and they fuse into the
  caller's ``apply_updates``. One kernel per leaf remains: the one that writes it.

Transformations that look at a whole leaf (Adafactor's factored moments, block-wise RMS
clipping, trust ratios, 8-bit block quantization) would compute something else on a flat buffer;
``flatten`` refuses them when it is built. :func:`register_flat_safe` admits further
coordinate-wise transformations.

Either way the state keeps its names: ``tree_get(state, "mu")`` is ``{"float32": <every
moment>}``, and ``layout.view(state)`` shows it with the parameters' structure (for
``flatten(tx)``, ``tx.layout(params).view(state)``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    Chain,
    ChainState,
    GradientTransformation,
    Identity,
    Params,
    PyTree,
    _call_update,
    _child_name,
    check_floating,
    check_int,
    check_tree_match,
    state_class,
    transformation,
)
from gradchain.core.masks import path_string, resolve_labels, resolve_mask
from gradchain.optimizers.adabelief import ScaleByBelief
from gradchain.optimizers.adadelta import ScaleByAdaDelta
from gradchain.optimizers.adagrad import ScaleByRss
from gradchain.optimizers.adam_variants import (
    ScaleByAdamax,
    ScaleByAmsgrad,
    ScaleByNadam,
    ScaleByRadam,
)
from gradchain.optimizers.adan import ScaleByAdan
from gradchain.optimizers.lion import ScaleByLion
from gradchain.optimizers.optimistic import ScaleByOptimisticGradient
from gradchain.optimizers.rprop import ScaleByRprop
from gradchain.optimizers.yogi import ScaleByYogi
from gradchain.transforms.accumulation import ApplyEveryTransformation
from gradchain.transforms.adaptive import ScaleByAdam, ScaleByRms, ScaleByStddev
from gradchain.transforms.clipping import Clip, ClipByGlobalNorm
from gradchain.transforms.decay import AddDecoupledWeightDecay, AddL2Penalty
from gradchain.transforms.momentum import Ema, Trace
from gradchain.transforms.normalization import NormalizeByUpdateNorm
from gradchain.transforms.scaling import Scale, ScaleByLearningRate, ScaleBySchedule
from gradchain.transforms.sign import ScaleBySign

__all__ = ["FlatLayout", "FlatState", "flat_layout", "flatten", "register_flat_safe"]

# Coordinate-wise transformations whose state holds no per-parameter arrays: they can run on the
# tree after the flat part, where masks and the parameters are at hand.
_PER_LEAF: set[type] = {
    AddDecoupledWeightDecay,
    AddL2Penalty,
    Clip,
    Identity,
    Scale,
    ScaleByLearningRate,
    ScaleBySchedule,
    ScaleBySign,
}
# Transformations that give the same numbers on a flat buffer as on a tree: they act on each
# coordinate alone or through reductions over all leaves together.
_FLAT_SAFE: set[type] = _PER_LEAF | {
    ClipByGlobalNorm,
    Ema,
    ScaleByAdam,
    ScaleByRms,
    ScaleByStddev,
    Trace,
    ScaleByAdamax,
    ScaleByAmsgrad,
    ScaleByLion,
    ScaleByNadam,
    ScaleByRadam,
    ScaleByRss,
    ApplyEveryTransformation,
    NormalizeByUpdateNorm,
    ScaleByAdaDelta,
    ScaleByAdan,
    ScaleByBelief,
    ScaleByOptimisticGradient,
    ScaleByRprop,
    ScaleByYogi,
}


def register_flat_safe(*classes: type, stateless: bool = False) -> None:
    """Declares transformation classes safe to run on flat buffers.

    A class qualifies when its update acts on each coordinate alone, or through reductions over
    all coordinates of all leaves (a global norm), so that a concatenation of the leaves gives the
    same numbers. ``stateless=True`` further declares that its state holds no per-parameter
    arrays, so that :func:`flatten` may run it on the tree after the flat part.
    """
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, GradientTransformation)):
            raise TypeError(
                f"register_flat_safe expects gradchain transformation classes, got {cls!r}"
            )
        _FLAT_SAFE.add(cls)
        if stateless:
            _PER_LEAF.add(cls)


# ---------------------------------------------------------------------------------------------
# Layout: which slice of which flat buffer each leaf occupies


class _Slot(NamedTuple):
    name: str  # the buffer holding the leaf
    shape: tuple
    dtype: str
    whole: bool  # the leaf is the buffer, unchanged
    path: str  # its path string, for messages


@dataclasses.dataclass(frozen=True)
class FlatLayout:
    """Where each leaf of a parameter tree lives: in a flat buffer shared with the other leaves
    of its dtype (and label), or, for a leaf of at least ``min_size`` elements, in its own
    array, unchanged.

    Made by :func:`flat_layout`; static and hashable, so it can be closed over by a jitted
    function. Shared buffers are named by dtype (``"float32"``), or ``"<label>/<dtype>"`` with
    labels; a leaf kept whole is named by its path string (``"wte"``, ``"h/0/attn/w"``).
    """

    treedef: Any
    slots: tuple  # per leaf, in tree order: _Slot
    buffers: tuple  # per buffer, in name order: (name, shape)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.buffers)

    def _leaves(self, tree, what: str):
        try:
            return self.treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"flat layout: {what} does not have the layout's structure: {e}"
            ) from None

    def ravel(self, tree) -> dict:
        """``{name: buffer}``: the leaves of each shared buffer flattened and concatenated in
        tree order; a leaf kept whole as it is."""
        parts: dict[str, list] = {name: [] for name in self.names}
        for slot, leaf in zip(self.slots, self._leaves(tree, "the tree")):
            parts[slot.name].append(leaf if slot.whole else jnp.reshape(leaf, (-1,)))
        return {name: xs[0] if len(xs) == 1 else jnp.concatenate(xs) for name, xs in parts.items()}

    def abstract(self, tree) -> dict:
        """The buffers of ``tree`` (arrays or ``ShapeDtypeStruct``) as ``ShapeDtypeStruct``,
        without computing them; a leaf kept whole is passed as it is, with its sharding."""
        dtypes = {slot.name: slot.dtype for slot in self.slots}
        out = {name: jax.ShapeDtypeStruct(shape, dtypes[name]) for name, shape in self.buffers}
        for slot, leaf in zip(self.slots, self._leaves(tree, "the tree")):
            if slot.whole:
                out[slot.name] = leaf
        return out

    def unravel(self, flat: dict):
        """The tree back from its buffers (each keeps its dtype).

        A shared buffer is cut with one ``lax.split``, whose derivative is one concatenation:
        a loss of ``unravel(flat)`` has its gradient with respect to ``flat`` in one piece.
        """
        pieces = {}
        for name, _ in self.buffers:
            slots = [slot for slot in self.slots if slot.name == name]
            if slots[0].whole:
                pieces[name] = iter([flat[name]])
                continue
            sizes = [int(np.prod(slot.shape)) for slot in slots]
            pieces[name] = iter(
                [x.reshape(slot.shape) for x, slot in zip(jax.lax.split(flat[name], sizes), slots)]
            )
        return self.treedef.unflatten([next(pieces[slot.name]) for slot in self.slots])

    def is_flat(self, x) -> bool:
        """Whether ``x`` is a dict of buffers of this layout (of any dtypes)."""
        return (
            isinstance(x, dict)
            and tuple(sorted(x)) == self.names
            and all(np.shape(x[name]) == shape for name, shape in self.buffers)
        )

    def view(self, state):
        """``state`` with every dict of buffers of this layout shown as a tree of the parameters'
        structure: ``tree_get(layout.view(state), "mu")["layer"]["w"]``. For reading only."""
        return jax.tree.map(
            lambda x: self.unravel(x) if self.is_flat(x) else x, state, is_leaf=self.is_flat
        )

    def mask(self, mask) -> dict:
        """A per-leaf ``mask`` (any form ``adamw``'s mask takes) as ``{buffer name: bool}``.

        Raises:
          ValueError: naming two leaves of one buffer that the mask tells apart (label the
            leaves by the mask when making the layout).
        """
        like = self.treedef.unflatten([jax.ShapeDtypeStruct(s.shape, s.dtype) for s in self.slots])
        selected = resolve_mask(mask, like, "mask")
        out: dict[Any, Any] = {}
        first: dict[Any, Any] = {}
        for slot, on in zip(self.slots, jax.tree.leaves(selected)):
            name, path = slot.name, slot.path
            if name in out and out[name] != on:
                chosen, other = (path, first[name]) if on else (first[name], path)
                raise ValueError(
                    f"the mask selects {chosen} but not {other}, which share the flat buffer "
                    f"{name!r}; make the layout with labels that separate them"
                )
            out.setdefault(name, on)
            first.setdefault(name, path)
        return out


def flat_layout(
    params: Params,
    labels: PyTree | Callable[[Params], PyTree] | None = None,
    min_size: int | None = None,
) -> FlatLayout:
    """The layout of ``params`` in flat buffers: one per dtype, or per (label, dtype).

    Keeping parameters flat is the fastest way to train a model of many small arrays: the
    optimizer then sees a few large buffers (one kernel each, whatever the number of leaves),
    and the model reads its arrays with ``unravel``::

        layout = gc.flat_layout(params, labels=gc.path_labels({"bias|norm": "no_decay"}, "decay"))
        flat = layout.ravel(params)
        tx = gc.adamw(1e-3, weight_decay=0.1, mask=layout.mask(gc.path_mask(exclude="bias|norm")))
        grads = jax.grad(lambda f: loss(layout.unravel(f), batch))(flat)

    Args:
      params: the parameter tree (arrays or ``ShapeDtypeStruct``).
      labels: optional labels separating leaves into buffers, in any form ``partition`` takes
        (a tree of labels or a prefix of one, a callable, :func:`path_labels`); needed when a
        mask must tell leaves apart.
      min_size: when given, leaves of at least this many elements keep their own array, shape
        and sharding (copying a large array into a buffer costs more than its own kernels);
        None (default) puts every leaf in a shared buffer.
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [leaf for _, leaf in with_path]
    paths = tuple(path_string(path) for path, _ in with_path)
    tags = (
        jax.tree.leaves(resolve_labels(labels, params, "flat_layout"))
        if labels is not None
        else [None] * len(leaves)
    )
    slots: list[Any] = []
    buffers: dict[Any, Any] = {}
    for tag, leaf, path in zip(tags, leaves, paths):
        dtype = jnp.dtype(leaf.dtype).name
        shape, size = tuple(leaf.shape), int(np.prod(leaf.shape))
        whole = min_size is not None and size >= min_size
        name = path if whole else dtype if tag is None else f"{tag}/{dtype}"
        if whole and name in buffers:
            raise ValueError(f"flat_layout: two buffers would be named {name!r}")
        buffers[name] = shape if whole else (buffers.get(name, (0,))[0] + size,)
        slots.append(_Slot(name, shape, dtype, whole, path))
    return FlatLayout(treedef, tuple(slots), tuple(sorted(buffers.items())))


# ---------------------------------------------------------------------------------------------
# Splitting a (nested) chain into a flat part and a per-leaf part


def _parts(tx, path=()):
    """``(state path, transformation)`` for every non-chain transformation of ``tx``, in order."""
    if isinstance(tx, Chain):
        for i, t in enumerate(tx.transforms):
            yield from _parts(t, path + (i,))
    else:
        yield path, tx


def _split(tx):
    parts = list(_parts(tx))
    cut = len(parts)
    while cut > 0 and type(parts[cut - 1][1]) in _PER_LEAF:
        cut -= 1
    flat, per_leaf = parts[:cut], parts[cut:]
    for _, t in flat:
        name = _child_name(t)
        if type(t) not in _FLAT_SAFE:
            raise ValueError(
                f"flatten: {name} is not known to give the same numbers on a flat buffer as "
                f"on separate leaves (it may compute per-leaf statistics); flatten only the "
                f"coordinate-wise part of the chain, or declare it with register_flat_safe"
            )
        if getattr(t, "mask", None) is not None:
            raise ValueError(
                f"flatten: {name} has a mask but runs on the flat buffers, which have no leaves "
                f"to mask; place it after the transformations that keep per-parameter state, "
                f"or apply the mask outside flatten"
            )
    return tuple(flat), tuple(per_leaf)


def _get(state, path):
    for i in path:
        state = state.states[i]
    return state


def _replace(state, path, new):
    if not path:
        return new
    states = list(state.states)
    states[path[0]] = _replace(states[path[0]], path[1:], new)
    return ChainState(tuple(states), state.names)


def _check_chain_state(tx, state, where="state.inner"):
    if isinstance(tx, Chain):
        if not isinstance(state, ChainState) or len(state.states) != len(tx.transforms):
            raise ValueError(
                f"flatten: {where} is not the state of {tx.name} made by this flatten's init"
            )
        for i, (t, s) in enumerate(zip(tx.transforms, state.states)):
            _check_chain_state(t, s, f"{where}[{i}]")


# ---------------------------------------------------------------------------------------------
# The transformation


@state_class
class FlatState:
    """``inner``: the wrapped transformation's state, made for the flat buffers.

    Fields are read by name as usual (``tree_get(state, "mu")`` is a dict of flat buffers, one
    per dtype); ``tx.layout(params).view(state)`` shows it with the parameters' structure.
    """

    inner: Any


@transformation("flatten")
class Flatten(GradientTransformation):
    r"""Runs ``inner`` over flat buffers, one per dtype, instead of over every small leaf.

    .. math::
        \operatorname{flatten}(T)(g) = \operatorname{unravel}\big(T(\operatorname{ravel}(g))\big)

    where ``ravel`` concatenates the small leaves of each dtype into one vector, in tree order
    (large leaves pass as they are), and ``unravel`` cuts them back. Same numbers as ``inner``
    (the global norm sums in another order: fp32 rounding); far fewer kernels to compile and
    launch for trees of many leaves. Trailing stateless transformations (weight decay, learning
    rate) run on the tree, so their masks work. The state is a :class:`FlatState`.

    Args:
      inner: a coordinate-wise transformation or chain (see the module docstring).
      min_size: leaves of at least this many elements (default 65,536: 256 KiB in float32)
        keep their own arrays: for them a kernel's launch is cheap beside its memory traffic,
        and copying them into a buffer would cost two passes. None flattens every leaf.

    Transformations that compute per-leaf statistics (Adafactor, LAMB, 8-bit blocks) are refused
    with a ``ValueError`` at construction. PyTorch's analogues are its multi-tensor (``foreach``)
    and fused optimizers, and FSDP's ``FlatParameter``; optax has none.
    """

    complex_params = False

    inner: Any
    _: dataclasses.KW_ONLY
    min_size: int | None = 65536

    def __post_init__(self):
        if not (hasattr(self.inner, "init") and hasattr(self.inner, "update")):
            raise ValueError(f"inner must be a gradient transformation, got {self.inner!r}")
        check_int("min_size", self.min_size, low=1, allow_none=True, what="a positive int or None")
        _split(self.inner)

    def layout(self, params) -> FlatLayout:
        """Where this transformation keeps each leaf of ``params``: ``tx.layout(params).view(
        state)`` reads the state with the parameters' structure."""
        return flat_layout(params, min_size=self.min_size)

    def init(self, params):
        # Leaves are grouped by dtype into buffers named after it: check them here, where the
        # error can still name the leaf rather than the buffer.
        check_floating(params, self.name)
        layout = self.layout(params)
        concrete = all(isinstance(x, (jax.Array, np.ndarray)) for x in jax.tree.leaves(params))
        flat = layout.ravel(params) if concrete else layout.abstract(params)
        return FlatState(inner=self.inner.init(flat))

    def update(self, updates, state, params=None, **extra_args):
        if not isinstance(state, FlatState):
            raise ValueError(
                f"flatten: expected the FlatState made by this flatten's init, got "
                f"{type(state).__name__}"
            )
        if params is not None:
            check_tree_match(updates, params, "updates", "params")
        _check_chain_state(self.inner, state.inner)
        # Grouped as init grouped them: by the parameters' dtypes when they are given.
        layout = self.layout(params if params is not None else updates)
        flat_part, per_leaf_part = _split(self.inner)
        inner = state.inner
        flat_params = layout.ravel(params) if params is not None else None
        u = layout.ravel(updates)
        for path, t in flat_part:
            u, s = _call_update(t, u, _get(inner, path), flat_params, extra_args)
            inner = _replace(inner, path, s)
        u = layout.unravel(u)
        for path, t in per_leaf_part:
            u, s = _call_update(t, u, _get(inner, path), params, extra_args)
            inner = _replace(inner, path, s)
        return u, FlatState(inner=inner)


flatten = Flatten
