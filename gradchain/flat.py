r"""Flat buffers: one contiguous buffer per dtype instead of one array per parameter.

A model with thousands of small parameter arrays makes thousands of small kernels: XLA compiles
every distinct one (minutes for a few thousand leaves) and launches every one of them at every
step. :func:`flatten` runs a transformation over one flat buffer per dtype instead, as PyTorch's
fused and multi-tensor optimizers do: the gradients are concatenated once, the moment updates run
as a few kernels over the whole buffer, and the updates are cut back into the parameters' shapes.

What runs where
---------------
``flatten(tx)`` splits ``tx`` (a transformation or a chain, nested chains included) in two:

* the leading part runs on the flat buffers. It must consist of transformations that act on
  each coordinate alone or through a global reduction (Adam's moments, momentum,
  ``clip_by_global_norm``, ...), for which a flat buffer and a tree give the same numbers (up to
  the order of the norm's sum);
* the trailing transformations that keep no per-parameter state (weight decay, learning rate,
  scaling) run on the tree, after the updates are cut back: they need the parameters, which
  then need not be concatenated, their per-leaf masks work as usual, and they fuse into the
  caller's ``apply_updates``.

Transformations that look at a whole leaf (Adafactor's factored moments, block-wise RMS
clipping, trust ratios, 8-bit block quantization) would compute something else on a flat buffer;
``flatten`` refuses them when it is built. :func:`register_flat_safe` admits further
coordinate-wise transformations.

The state is ``tx``'s own state for the flat buffers, wrapped in :class:`FlatState`: every field
keeps its name (``tree_get(state, "mu")`` is ``{"float32": <all moments>}``), and
:func:`unflatten_state` views it with the parameters' structure.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.adaptive import ScaleByAdam, ScaleByRms, ScaleByStddev
from gradchain.base import (
    Chain,
    ChainState,
    GradientTransformation,
    Identity,
    _call_update,
    _child_name,
    check_tree_match,
    state_class,
    transformation,
)
from gradchain.clipping import Clip, ClipByGlobalNorm
from gradchain.decay import AddDecoupledWeightDecay, AddL2Penalty
from gradchain.momentum import Ema, Trace
from gradchain.scaling import Scale, ScaleByLearningRate, ScaleBySchedule

__all__ = ["FlatState", "flatten", "register_flat_safe", "unflatten_state"]

# Coordinate-wise transformations whose state holds no per-parameter arrays: they can run on the
# tree after the flat part, where masks and the parameters are at hand.
_PER_LEAF: set[type] = {
    AddDecoupledWeightDecay, AddL2Penalty, Clip, Identity, Scale, ScaleByLearningRate,
    ScaleBySchedule,
}
# Transformations that give the same numbers on a flat buffer as on a tree: they act on each
# coordinate alone or through reductions over all leaves together.
_FLAT_SAFE: set[type] = _PER_LEAF | {
    ClipByGlobalNorm, Ema, ScaleByAdam, ScaleByRms, ScaleByStddev, Trace,
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
            raise TypeError(f"register_flat_safe expects gradchain transformation classes, got {cls!r}")
        _FLAT_SAFE.add(cls)
        if stateless:
            _PER_LEAF.add(cls)


# ---------------------------------------------------------------------------------------------
# Layout: which slice of which flat buffer each leaf occupies


def _group_key(dtype) -> str:
    return jnp.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class _Layout:
    treedef: object
    slots: tuple  # per leaf: (group key, offset, shape)
    sizes: dict  # group key -> total number of elements

    @classmethod
    def of(cls, tree) -> _Layout:
        leaves, treedef = jax.tree.flatten(tree)
        slots, sizes = [], {}
        for leaf in leaves:
            key = _group_key(leaf.dtype)
            size = int(np.prod(leaf.shape))
            slots.append((key, sizes.get(key, 0), tuple(leaf.shape)))
            sizes[key] = sizes.get(key, 0) + size
        return cls(treedef, tuple(slots), sizes)

    def ravel(self, tree) -> dict:
        """``{group: concatenation of the group's leaves, flattened}``, in leaf order."""
        parts: dict[str, list] = {key: [] for key in self.sizes}
        for (key, _, _), leaf in zip(self.slots, self.treedef.flatten_up_to(tree)):
            parts[key].append(jnp.reshape(leaf, (-1,)))
        return {key: xs[0] if len(xs) == 1 else jnp.concatenate(xs) for key, xs in parts.items()}

    def abstract(self, tree) -> dict:
        """The flat buffers of ``tree`` as shape-dtype structures, without computing them."""
        dtypes = {key: leaf.dtype for (key, _, _), leaf in zip(self.slots, jax.tree.leaves(tree))}
        return {key: jax.ShapeDtypeStruct((n,), dtypes[key]) for key, n in self.sizes.items()}

    def unravel(self, flat: dict):
        """The inverse of :meth:`ravel`; each buffer keeps its own dtype."""
        leaves = [
            jax.lax.slice_in_dim(flat[key], offset, offset + int(np.prod(shape))).reshape(shape)
            for key, offset, shape in self.slots
        ]
        return self.treedef.unflatten(leaves)

    def is_flat(self, x) -> bool:
        """Whether ``x`` is a dict of flat buffers of this layout (of any dtypes)."""
        return (
            isinstance(x, dict)
            and x.keys() == self.sizes.keys()
            and all(np.shape(x[k]) == (n,) for k, n in self.sizes.items())
        )


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
    per dtype); :func:`unflatten_state` gives the same state with the parameters' structure.
    """

    inner: object


@transformation("flatten")
class Flatten(GradientTransformation):
    r"""Runs ``inner`` over one flat buffer per dtype instead of over every leaf.

    .. math::
        \operatorname{flatten}(T)(g) = \operatorname{unravel}\big(T(\operatorname{ravel}(g))\big)

    where ``ravel`` concatenates the leaves of each dtype into one vector, in tree order, and
    ``unravel`` cuts them back. Same numbers as ``inner`` (the global norm sums in another order:
    fp32 rounding); far fewer kernels to compile and launch for trees of many leaves. Trailing
    stateless transformations (weight decay, learning rate) run on the tree, so their masks work.

    Args:
      inner: a coordinate-wise transformation or chain (see the module docstring).

    Transformations that compute per-leaf statistics (Adafactor, LAMB, 8-bit blocks) are refused
    with a ``ValueError`` at construction. A PyTorch analogue is ``torch.optim.AdamW(...,
    fused=True)`` over a flattened parameter; optax has none.
    """

    inner: object

    def __post_init__(self):
        if not (hasattr(self.inner, "init") and hasattr(self.inner, "update")):
            raise ValueError(f"inner must be a gradient transformation, got {self.inner!r}")
        _split(self.inner)

    def init(self, params):
        layout = _Layout.of(params)
        concrete = all(isinstance(x, (jax.Array, np.ndarray)) for x in jax.tree.leaves(params))
        flat = layout.ravel(params) if concrete else layout.abstract(params)
        return FlatState(inner=self.inner.init(flat))

    def update(self, updates, state, params=None, **extra_args):
        if params is not None:
            check_tree_match(updates, params, "updates", "params")
        _check_chain_state(self.inner, state.inner)
        # Grouped as init grouped them: by the parameters' dtypes when they are given.
        layout = _Layout.of(params if params is not None else updates)
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


def unflatten_state(state, params):
    """``state`` with every dict of flat buffers replaced by a tree shaped like ``params``.

    ``state`` is (or contains) a :class:`FlatState` made by ``flatten(tx).init(params)``;
    ``params`` gives the structure (arrays or ``ShapeDtypeStruct``). Buffers keep their dtype::

        tree_get(unflatten_state(state, params), "mu")["layer"]["w"]  # the moments of one leaf

    Only for reading: the result is not a state that ``flatten(tx).update`` accepts.
    """
    layout = _Layout.of(params)
    return jax.tree.map(
        lambda x: layout.unravel(x) if layout.is_flat(x) else x,
        state,
        is_leaf=layout.is_flat,
    )
