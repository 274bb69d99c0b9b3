"""Choosing parameters: masks and labels by tree, by function or by path pattern.

Every place in gradchain that takes a ``mask`` (``masked``, ``freeze``, the ``mask`` of
``add_decoupled_weight_decay`` and ``adamw``) or ``labels`` (``partition``) reads it with the
helpers of this module, so the same forms work everywhere:

* a pytree of bools with the parameters' structure, or a prefix of it (``{"encoder": True,
  "decoder": False}`` selects whole sub-trees; a single ``True`` selects everything);
* a callable ``params -> pytree of bools``;
* a regular expression (a ``str``), searched in each leaf's **path string**;
* a :func:`path_mask`, which combines an include pattern, an exclude pattern and a minimum
  per-layer rank, and knows which leaves carry a leading stacked-layer axis.

The path string of a leaf is its keys joined by ``/``: ``{"layers": {"attn": {"kernel": w}}}``
gives ``"layers/attn/kernel"``, list and tuple positions give their index (``"blocks/0/mlp/b"``),
attributes (equinox modules) give their name. A trailing ``value`` attribute (the array inside a
flax nnx ``Variable``) is left out, so a mask reads the same on a model's ``nnx.State`` and on its
plain arrays. :func:`tree_paths` shows the path string of every leaf.

Patterns never look at shapes, so stacking layers for ``jax.lax.scan`` (a leading layer axis on
every leaf under ``layers``) does not change which leaves they match. Rank criteria do look at
shapes; :func:`path_mask` subtracts the stacked axes first (``stacked=``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, cast

import jax
import numpy as np

from gradchain.core.base import PyTree, check_int

__all__ = ["path_labels", "path_mask", "tree_paths"]

# A path pattern: a regular expression (string or compiled) or a list of them, any may match.
Pattern = str | re.Pattern[str] | Sequence[str]


# ---------------------------------------------------------------------------------------------
# Path strings


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_string(keypath: Iterable[Any]) -> str:
    """The ``/``-joined path string of a JAX key path (see the module docstring)."""
    keys = list(keypath)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_name(k) for k in keys)


def tree_paths(tree: PyTree) -> PyTree:
    """A tree like ``tree`` whose leaves are the path strings masks and labels are matched on.

    ``jax.tree.leaves(gc.tree_paths(params))`` lists them, for writing a pattern.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: path_string(path), tree)


def _ndim(leaf) -> int:
    shape = getattr(leaf, "shape", None)
    return len(shape) if shape is not None else np.ndim(leaf)


# ---------------------------------------------------------------------------------------------
# Patterns


def _compile(name: str, pattern) -> re.Pattern | None:
    if pattern is None:
        return None
    if isinstance(pattern, re.Pattern):
        return pattern
    if isinstance(pattern, str):
        text = pattern
    elif isinstance(pattern, Sequence) and all(isinstance(p, str) for p in pattern):
        text = "|".join(f"(?:{p})" for p in pattern)
    else:
        raise ValueError(f"{name} must be a regular expression or a list of them, got {pattern!r}")
    try:
        return re.compile(text)
    except re.error as e:
        raise ValueError(f"{name} is not a valid regular expression ({e}): {text!r}") from None


def _stacked_rules(stacked) -> tuple[tuple[re.Pattern, int], ...]:
    if stacked is None:
        return ()
    if isinstance(stacked, Mapping):
        rules = []
        for pattern, axes in stacked.items():
            check_int(
                f"stacked: the number of leading axes for {pattern!r}", axes, what="an int >= 0"
            )
            rules.append((cast(re.Pattern, _compile("stacked", pattern)), axes))
        return tuple(rules)
    return ((cast(re.Pattern, _compile("stacked", stacked)), 1),)


@dataclasses.dataclass(frozen=True)
class PathMask:
    """A mask that selects leaves by path pattern and per-layer rank; built by :func:`path_mask`.

    Calling it on a tree gives the tree of bools; it is accepted wherever a mask is.
    """

    include: Any = None
    exclude: Any = None
    min_ndim: int | None = None
    stacked: Any = None
    # Compiled in __post_init__; not arguments, not compared.
    _include: re.Pattern | None = dataclasses.field(init=False, repr=False, compare=False)
    _exclude: re.Pattern | None = dataclasses.field(init=False, repr=False, compare=False)
    _stacked: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        check_int("min_ndim", self.min_ndim, allow_none=True, what="None or an int >= 0")
        if isinstance(self.stacked, Mapping):  # kept hashable: the mask is part of a transform
            object.__setattr__(self, "stacked", tuple(self.stacked.items()))
        rules = dict(self.stacked) if isinstance(self.stacked, tuple) else self.stacked
        object.__setattr__(self, "_include", _compile("include", self.include))
        object.__setattr__(self, "_exclude", _compile("exclude", self.exclude))
        object.__setattr__(self, "_stacked", _stacked_rules(rules))

    def layer_ndim(self, path: str, leaf) -> int:
        """The rank of one layer's slice of ``leaf``: its rank less the stacked leading axes."""
        for pattern, axes in self._stacked:
            if pattern.search(path):
                return _ndim(leaf) - axes
        return _ndim(leaf)

    def selects(self, path: str, leaf) -> bool:
        """Whether the leaf ``leaf`` at path string ``path`` is selected."""
        if self._include is not None and not self._include.search(path):
            return False
        if self._exclude is not None and self._exclude.search(path):
            return False
        return self.min_ndim is None or self.layer_ndim(path, leaf) >= self.min_ndim

    def __call__(self, tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, leaf: self.selects(path_string(path), leaf), tree
        )

    def __repr__(self):
        args = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.repr and getattr(self, f.name) is not None
        )
        return f"path_mask({args})"


def path_mask(
    include: Pattern | None = None,
    exclude: Pattern | None = None,
    *,
    min_ndim: int | None = None,
    stacked: Pattern | Mapping[str | re.Pattern[str], int] | None = None,
) -> PathMask:
    r"""A mask over the leaves whose path string matches ``include`` and not ``exclude``.

    The usual weight-decay mask, "decay the weight matrices, not biases, norms or embeddings"::

        mask = gc.path_mask(exclude=r"bias|norm|embed")
        tx = gc.adamw(3e-4, weight_decay=0.1, mask=mask)

    or by rank, robust to naming, with the stacked layers of a scanned transformer declared::

        mask = gc.path_mask(exclude="embed", min_ndim=2, stacked="layers")

    Args:
      include: a regular expression (or a list of them, any of which may match) searched
        (``re.search``) in the path string; None selects every path.
      exclude: the same; a leaf whose path matches is never selected.
      min_ndim: when given, only leaves whose per-layer rank is at least this are selected
        (``2`` selects matrices and larger: kernels, not biases or norm scales).
      stacked: where layers are stacked for ``jax.lax.scan``: a pattern whose matching leaves
        carry one leading layer axis, or a mapping ``{pattern: number_of_leading_axes}`` (the
        first pattern that matches a path applies). The stacked axes are not counted by
        ``min_ndim``, so stacking never changes the selection.

    Returns:
      A :class:`PathMask`: call it on a tree to get the tree of bools, or pass it as a ``mask``.
    """
    return PathMask(include=include, exclude=exclude, min_ndim=min_ndim, stacked=stacked)


@dataclasses.dataclass(frozen=True)
class PathLabels:
    """Labels chosen by path pattern; built by :func:`path_labels`."""

    rules: tuple
    default: Hashable = None
    _compiled: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        compiled = tuple((_compile("path_labels pattern", p), label) for p, label in self.rules)
        object.__setattr__(self, "_compiled", compiled)

    def label(self, path: str):
        """The label of the leaf at path string ``path``."""
        for pattern, label in self._compiled:
            if pattern.search(path):
                return label
        if self.default is None:
            raise ValueError(
                f"path_labels: no pattern matches the parameter {path!r} and there is no default "
                f"label (patterns: {[p for p, _ in self.rules]})"
            )
        return self.default

    def __call__(self, tree):
        return jax.tree_util.tree_map_with_path(lambda path, _: self.label(path_string(path)), tree)

    def __repr__(self):
        return f"path_labels({dict(self.rules)!r}, default={self.default!r})"


def path_labels(rules: Mapping[str, Hashable], default: Hashable = None) -> PathLabels:
    """Labels for :func:`partition` by path pattern: the first pattern that matches wins.

    Example: ``gc.path_labels({r"bias|norm|embed": "no_decay"}, default="decay")``.

    Args:
      rules: an ordered mapping from regular expression to label.
      default: the label of leaves no pattern matches; None makes such a leaf an error.
    """
    if not isinstance(rules, Mapping):
        raise ValueError(f"rules must be a mapping from pattern to label, got {rules!r}")
    return PathLabels(rules=tuple(rules.items()), default=default)


# ---------------------------------------------------------------------------------------------
# Resolving masks and labels against a tree


class _BadLeaf(ValueError):
    """A mask or label leaf that cannot be used; raised as it is, never re-worded."""


def _broadcast(prefix, tree, leaf_fn, what: str, transform_name: str):
    """Maps ``leaf_fn`` over ``prefix`` and copies each result to every leaf of the matching
    sub-tree of ``tree``: the result has ``tree``'s structure."""
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: leaf_fn(m), sub), prefix, tree)
    except _BadLeaf:
        raise
    except ValueError as e:
        raise ValueError(
            f"{transform_name}: the {what}'s structure is not a prefix of the params' structure: {e}"
        ) from None


def _is_function(x) -> bool:
    """Whether ``x`` is a mask or label *function* rather than a tree: callable, and not a
    callable pytree of values (an equinox module of bools is a tree), as optax decides."""
    return callable(x) and all(callable(leaf) for leaf in jax.tree.leaves(x))


def resolve_mask(mask: Any, tree: PyTree, transform_name: str) -> PyTree:
    """The mask as a tree of Python bools with ``tree``'s structure.

    ``mask`` is None (everything selected), a pytree of bools or a prefix of one, a callable
    ``tree -> pytree of bools``, or a regular expression over the path strings.
    """
    if mask is None:
        return jax.tree.map(lambda _: True, tree)
    if isinstance(mask, (str, re.Pattern)):
        mask = path_mask(include=mask)
    selected = mask(tree) if _is_function(mask) else mask

    def as_bool(m):
        if isinstance(m, (bool, np.bool_)) or (
            isinstance(m, (np.ndarray, jax.Array)) and np.shape(m) == () and m.dtype == bool
        ):
            try:
                return bool(m)
            except jax.errors.ConcretizationTypeError:
                pass
        raise _BadLeaf(
            f"{transform_name}: mask leaves must be concrete bools, got {m!r} (a mask must not "
            f"depend on traced values)"
        )

    return _broadcast(selected, tree, as_bool, "mask", transform_name)


def resolve_labels(labels: Any, tree: PyTree, transform_name: str) -> PyTree:
    """The labels as a tree with ``tree``'s structure (a prefix is broadcast, a callable called)."""
    chosen = labels(tree) if _is_function(labels) else labels
    return _broadcast(chosen, tree, lambda label: label, "labels", transform_name)
