"""optax's tree utilities: arithmetic, casting, random trees and key search over pytrees.

These are the functions of ``optax.tree_utils`` (and of ``optax.tree`` under their short names),
with optax's signatures and semantics, published as :mod:`gradchain.tree_utils` and
:mod:`gradchain.tree`. They are not exported at the root of gradchain, whose ``tree_get`` and
``tree_set`` are the named-state readers of :mod:`gradchain.core.base`.

Key search (:func:`tree_get`, :func:`tree_set`, :func:`tree_get_all_with_path`) treats three
kinds of node as having named children: dicts, NamedTuples and gradchain state classes. A child
of a NamedTuple or of a gradchain state is reached through a :class:`NamedTupleKey` that carries
the class name, so a ``filtering`` function can tell ``ScaleByAdamState.count`` from
``ScaleByScheduleState.count``. optax looks through NamedTuples only; gradchain states are found
the same way so that one search works on gradchain and optax states alike.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

PyTree = Any
KeyPath = tuple[Any, ...]
Filtering = Callable[[KeyPath, Any], bool]

__all__ = [
    "NamedTupleKey",
    "tree_add",
    "tree_add_scalar_mul",
    "tree_add_scale",
    "tree_allclose",
    "tree_batch_shape",
    "tree_bias_correction",
    "tree_cast",
    "tree_cast_like",
    "tree_clip",
    "tree_conj",
    "tree_div",
    "tree_dtype",
    "tree_full_like",
    "tree_get",
    "tree_get_all_with_path",
    "tree_l1_norm",
    "tree_l2_norm",
    "tree_linf_norm",
    "tree_map_params",
    "tree_max",
    "tree_min",
    "tree_mul",
    "tree_norm",
    "tree_ones_like",
    "tree_random_like",
    "tree_real",
    "tree_scalar_mul",
    "tree_scale",
    "tree_set",
    "tree_size",
    "tree_split_key_like",
    "tree_sub",
    "tree_sum",
    "tree_unwrap_random_key_data",
    "tree_update_infinity_moment",
    "tree_update_moment",
    "tree_update_moment_per_elem_norm",
    "tree_vdot",
    "tree_where",
    "tree_zeros_like",
]


# ---------------------------------------------------------------------------------------------
# Arithmetic


def tree_add(tree_x: PyTree, tree_y: PyTree, *other_trees: PyTree) -> PyTree:
    """The leafwise sum of two or more trees of the same structure."""
    return jax.tree.map(
        lambda *leaves: functools.reduce(operator.add, leaves), tree_x, tree_y, *other_trees
    )


def tree_sub(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """The leafwise difference ``tree_x - tree_y``."""
    return jax.tree.map(operator.sub, tree_x, tree_y)


def tree_mul(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """The leafwise product."""
    return jax.tree.map(operator.mul, tree_x, tree_y)


def tree_div(tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """The leafwise quotient ``tree_x / tree_y``."""
    return jax.tree.map(operator.truediv, tree_x, tree_y)


def tree_scale(scalar: jax.typing.ArrayLike, tree: PyTree) -> PyTree:
    """Every leaf multiplied by ``scalar``."""
    return jax.tree.map(lambda x: scalar * x, tree)


def tree_add_scale(tree_x: PyTree, scalar: jax.typing.ArrayLike, tree_y: PyTree) -> PyTree:
    """``tree_x + scalar * tree_y``; ``None`` leaves of ``tree_x`` stay ``None``."""
    scalar = jnp.asarray(scalar)
    return jax.tree.map(
        lambda x, y: None if x is None else x + scalar * y,
        tree_x,
        tree_y,
        is_leaf=lambda x: x is None,
    )


def tree_vdot(tree_x: PyTree, tree_y: PyTree) -> jax.typing.ArrayLike:
    """The inner product ``sum_i vdot(x_i, y_i)`` of two trees (the first one conjugated)."""
    vdots = jax.tree.map(
        lambda x, y: jnp.vdot(x, y, precision=jax.lax.Precision.HIGHEST), tree_x, tree_y
    )
    return jax.tree.reduce(operator.add, vdots, initializer=0)


def tree_sum(tree: PyTree, associative_reduction: bool = False) -> jax.typing.ArrayLike:
    """The sum of all entries of all leaves; 0 for an empty tree.

    ``associative_reduction=True`` adds the leaf sums as a balanced tree (shallower graph,
    different rounding), as ``jax.tree.reduce_associative`` does.
    """
    sums = jax.tree.map(jnp.sum, tree)
    if associative_reduction:
        return jax.tree.reduce_associative(operator.add, sums, identity=0)
    return jax.tree.reduce(operator.add, sums, initializer=0)


def _reduce_nonempty(tree: PyTree, leaf_fn, combine, initial: float) -> jax.typing.ArrayLike:
    # Empty leaves have no max or min; they become None, which jax.tree.reduce skips.
    per_leaf = jax.tree.map(lambda x: None if jnp.size(x) == 0 else leaf_fn(x), tree)
    return jax.tree.reduce(combine, per_leaf, initializer=initial)


def tree_max(tree: PyTree) -> jax.typing.ArrayLike:
    """The largest entry of all leaves; ``-inf`` for a tree without entries."""
    return _reduce_nonempty(tree, jnp.max, jnp.maximum, -float("inf"))


def tree_min(tree: PyTree) -> jax.typing.ArrayLike:
    """The smallest entry of all leaves; ``inf`` for a tree without entries."""
    return _reduce_nonempty(tree, jnp.min, jnp.minimum, float("inf"))


def tree_size(tree: PyTree) -> int:
    """The number of entries in all leaves."""
    return sum(jnp.size(leaf) for leaf in jax.tree.leaves(tree))


def tree_conj(tree: PyTree) -> PyTree:
    """The complex conjugate of every leaf."""
    return jax.tree.map(jnp.conj, tree)


def tree_real(tree: PyTree) -> PyTree:
    """The real part of every leaf."""
    return jax.tree.map(jnp.real, tree)


def _abs_sq(x):
    # |x|^2 without the square root of jnp.abs, exact for real and complex leaves.
    return jnp.square(jnp.real(x)) + jnp.square(jnp.imag(x))


def tree_norm(
    tree: PyTree, ord: int | str | float | None = None, squared: bool = False
) -> jax.Array:
    """The ``ord``-norm of the vector of all entries: ``None``/2 (default), 1, or ``inf``.

    ``ord`` may also be the strings ``"inf"`` or ``"infinity"``; ``squared=True`` returns the
    norm squared.

    Raises:
      ValueError: for any other ``ord``.
    """
    if ord is None or ord == 2:
        sq = tree_sum(jax.tree.map(_abs_sq, tree))
        return jnp.array(sq if squared else jnp.sqrt(sq))
    if ord == 1:
        norm = tree_sum(jax.tree.map(jnp.abs, tree))
    elif ord == jnp.inf or ord in ("inf", "infinity"):
        norm = tree_max(jax.tree.map(jnp.abs, tree))
    else:
        raise ValueError(f"Unsupported ord: {ord}")
    return jnp.array(_abs_sq(norm) if squared else norm)


def tree_l1_norm(tree: PyTree, squared: bool = False) -> jax.Array:
    """optax's deprecated name for ``tree_norm(tree, ord=1)``."""
    return tree_norm(tree, ord=1, squared=squared)


def tree_l2_norm(tree: PyTree, squared: bool = False) -> jax.Array:
    """optax's deprecated name for ``tree_norm(tree)``."""
    return tree_norm(tree, ord=2, squared=squared)


def tree_linf_norm(tree: PyTree, squared: bool = False) -> jax.Array:
    """optax's deprecated name for ``tree_norm(tree, ord="inf")``."""
    return tree_norm(tree, ord="inf", squared=squared)


tree_scalar_mul = tree_scale
tree_add_scalar_mul = tree_add_scale


def tree_batch_shape(tree: PyTree, shape: tuple[int, ...] = ()) -> PyTree:
    """Every leaf broadcast to ``(*shape, *leaf.shape)``."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (*shape, *jnp.shape(x))), tree)


def tree_zeros_like(tree: PyTree, dtype: jax.typing.DTypeLike | None = None) -> PyTree:
    """A tree of zeros shaped like ``tree`` (in ``dtype`` if given)."""
    return jax.tree.map(lambda x: jnp.zeros_like(x, dtype=dtype), tree)


def tree_ones_like(tree: PyTree, dtype: jax.typing.DTypeLike | None = None) -> PyTree:
    """A tree of ones shaped like ``tree`` (in ``dtype`` if given)."""
    return jax.tree.map(lambda x: jnp.ones_like(x, dtype=dtype), tree)


def tree_full_like(
    tree: PyTree, fill_value: jax.typing.ArrayLike, dtype: jax.typing.DTypeLike | None = None
) -> PyTree:
    """A tree filled with ``fill_value`` shaped like ``tree`` (in ``dtype`` if given)."""
    return jax.tree.map(lambda x: jnp.full_like(x, fill_value, dtype=dtype), tree)


def tree_clip(
    tree: PyTree,
    min_value: jax.typing.ArrayLike | None = None,
    max_value: jax.typing.ArrayLike | None = None,
) -> PyTree:
    """Every leaf clipped to ``[min_value, max_value]`` (a ``None`` bound is open)."""
    return jax.tree.map(lambda x: jnp.clip(x, min_value, max_value), tree)


def tree_where(condition: jax.typing.ArrayLike, tree_x: PyTree, tree_y: PyTree) -> PyTree:
    """``jnp.where(condition, x, y)`` leafwise, with one condition broadcast to every leaf."""
    return jax.tree.map(lambda x, y: jnp.where(condition, x, y), tree_x, tree_y)


def tree_allclose(
    a: PyTree,
    b: PyTree,
    rtol: jax.typing.ArrayLike = 1e-05,
    atol: jax.typing.ArrayLike = 1e-08,
    equal_nan: bool = False,
) -> bool | jax.Array:
    """Whether every pair of leaves is ``jnp.allclose``; ``True`` for empty trees."""
    close = jax.tree.map(
        lambda x, y: jnp.allclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan), a, b
    )
    return functools.reduce(operator.and_, jax.tree.leaves(close), True)


# ---------------------------------------------------------------------------------------------
# Moments


def _map_skipping_none(fn, updates, moments):
    # optax's masked transformations leave None where a parameter is frozen; keep it None.
    return jax.tree.map(
        lambda g, t: None if g is None else fn(g, t),
        updates,
        moments,
        is_leaf=lambda x: x is None,
    )


def tree_update_moment(
    updates: PyTree, moments: PyTree, decay: jax.typing.ArrayLike, order: float
) -> PyTree:
    """The EMA ``(1 - decay) * g**order + decay * m`` of every leaf."""
    return _map_skipping_none(lambda g, t: (1 - decay) * g**order + decay * t, updates, moments)


def tree_update_infinity_moment(
    updates: PyTree, moments: PyTree, decay: jax.typing.ArrayLike, eps: jax.typing.ArrayLike
) -> PyTree:
    """The infinity-norm moment ``max(|g| + eps, decay * m)`` of every leaf."""
    return _map_skipping_none(
        lambda g, t: jnp.maximum(jnp.abs(g) + eps, decay * t), updates, moments
    )


def tree_update_moment_per_elem_norm(
    updates: PyTree, moments: PyTree, decay: jax.typing.ArrayLike, order: float
) -> PyTree:
    """The EMA of ``|g|**order`` per entry; for complex leaves ``|g|^2`` is ``re^2 + im^2``."""

    def power(g):
        if jnp.isrealobj(g):
            return g**order
        half = order / 2
        return _abs_sq(g) ** (int(half) if float(half).is_integer() else half)

    return _map_skipping_none(lambda g, t: (1 - decay) * power(g) + decay * t, updates, moments)


@functools.partial(jax.jit, inline=True)
def tree_bias_correction(moment: PyTree, decay: jax.typing.ArrayLike, count: jax.Array) -> PyTree:
    """Every leaf divided by ``1 - decay**count`` (computed in the leaf's dtype)."""
    correction = 1 - decay**count
    return jax.tree.map(lambda t: t / correction.astype(t.dtype), moment)


# ---------------------------------------------------------------------------------------------
# Casting


def tree_cast(tree: PyTree, dtype: jax.typing.DTypeLike | None) -> PyTree:
    """Every leaf cast to ``dtype``; the tree unchanged when ``dtype`` is None."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda t: t.astype(dtype), tree)


def tree_cast_like(tree: PyTree, other_tree: PyTree) -> PyTree:
    """Every leaf cast to the dtype of the matching leaf of ``other_tree`` (when it has one)."""
    return jax.tree.map(
        lambda t, o: t.astype(o.dtype) if hasattr(o, "dtype") else t, tree, other_tree
    )


def _lower_dtype(a, b):
    promoted = jnp.promote_types(a, b)
    if promoted == a:
        return b
    if promoted == b:
        return a
    raise ValueError(
        f"Cannot compare dtype of dtype1={a!r} and dtype2={b!r}. Neither {a} nor {b} can be "
        "promoted to the other."
    )


def _higher_dtype(a, b):
    return b if _lower_dtype(a, b) == a else a


_DTYPE_REDUCERS = {"promote": jnp.promote_types, "highest": _higher_dtype, "lowest": _lower_dtype}


def tree_dtype(tree: PyTree, mixed_dtype_handler: str | None = None) -> jax.typing.DTypeLike:
    """The dtype of the leaves of ``tree``.

    With ``mixed_dtype_handler=None`` all leaves must share one dtype; ``"promote"`` gives the
    type every leaf promotes to, ``"highest"``/``"lowest"`` the leaf dtype every other promotes
    to / is promoted from. An empty tree has the dtype of an empty array (float32, or float64
    under x64).

    Raises:
      ValueError: naming the paths of the leaves that differ (handler None), for dtypes that
        cannot be ordered (``"highest"``/``"lowest"``), or for an unknown handler.
    """
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.asarray(leaves).dtype
    dtypes = [jnp.asarray(x).dtype for x in leaves]
    if mixed_dtype_handler is None:
        first = dtypes[0]
        wrong = [
            f"Expected dtype={first!r} for {jax.tree_util.keystr(path)} but got {jnp.asarray(x).dtype}."
            for path, x in jax.tree_util.tree_leaves_with_path(tree)
            if jnp.asarray(x).dtype != first
        ]
        if wrong:
            raise ValueError("\n".join(wrong))
        return first
    if mixed_dtype_handler not in _DTYPE_REDUCERS:
        raise ValueError(
            f"Invalid value for mixed_dtype_handler={mixed_dtype_handler!r}, possible values "
            'are: None, "promote", "highest", "lowest".'
        )
    return functools.reduce(_DTYPE_REDUCERS[mixed_dtype_handler], dtypes)


# ---------------------------------------------------------------------------------------------
# Random trees


def tree_split_key_like(rng_key: jax.Array, target_tree: PyTree) -> PyTree:
    """One independent key per leaf of ``target_tree``, in a tree of the same structure."""
    treedef = jax.tree.structure(target_tree)
    return jax.tree.unflatten(treedef, jax.random.split(rng_key, treedef.num_leaves))


def tree_random_like(
    rng_key: jax.Array,
    target_tree: PyTree,
    sampler: Callable = jax.random.normal,
    dtype: jax.typing.DTypeLike | None = None,
) -> PyTree:
    """A random tree shaped like ``target_tree``: ``sampler(key, shape, dtype)`` per leaf.

    Each leaf gets its own key from :func:`tree_split_key_like`, its dtype (or ``dtype``), and
    its sharding when ``sampler`` accepts ``out_sharding``.
    """
    keys = tree_split_key_like(rng_key, target_tree)
    takes_sharding = "out_sharding" in inspect.signature(sampler).parameters

    def sample(leaf, key):
        dt = dtype or leaf.dtype
        if takes_sharding:
            return sampler(key, leaf.shape, dt, out_sharding=jax.typeof(leaf).sharding)
        return sampler(key, leaf.shape, dt)

    return jax.tree.map(sample, target_tree, keys)


def tree_unwrap_random_key_data(input_tree: PyTree) -> PyTree:
    """Typed PRNG key leaves replaced by their raw ``uint32`` key data; other leaves kept."""

    def unwrap(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.key_data(x)
        return x

    return jax.tree.map(unwrap, input_tree)


# ---------------------------------------------------------------------------------------------
# Mapping over the parameter-shaped parts of a state


@jax.tree_util.register_pytree_node_class
class _ParamsPlaceholder:
    """A leafless stand-in for the parameters: ``init`` copies it wherever it keeps a param tree."""

    def tree_flatten(self):
        return (), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls()


@runtime_checkable
class Initable(Protocol):
    """Anything with an ``init(params) -> state`` method."""

    def init(self, params: PyTree) -> PyTree: ...


def tree_map_params(
    initable: Callable[[PyTree], PyTree] | Initable,
    f: Callable[..., Any],
    state: PyTree,
    /,
    *rest: Any,
    transform_non_params: Callable[..., Any] | None = None,
    is_leaf: Callable[[PyTree], bool] | None = None,
) -> PyTree:
    """``f`` mapped over every parameter-shaped tree inside an optimizer state.

    Which parts of ``state`` are parameter-shaped is learned by initializing ``initable`` on a
    leafless placeholder: every place the placeholder lands is a copy of the parameter tree,
    mapped with ``f(leaf, *rest_leaves)``; every other leaf goes through
    ``transform_non_params`` when given. This is how partition specs for a state are built from
    the parameters' specs.
    """
    placeholder = _ParamsPlaceholder()
    init = initable.init if isinstance(initable, Initable) else initable
    template = init(placeholder)

    # The template and the state are walked node by node, not with one ``jax.tree.map``: a node
    # may keep static data derived from the parameters (GaLore's per-leaf layout), which differs
    # between the placeholder and the real parameters; the state's own is kept.
    def walk(slot, value):
        if isinstance(slot, _ParamsPlaceholder):
            return jax.tree.map(f, value, *rest, is_leaf=is_leaf)
        shape = jax.tree.structure(slot, is_leaf=lambda v: isinstance(v, _ParamsPlaceholder))
        if shape.num_leaves == 0:  # None, (), EmptyState(): nothing to map
            return value
        if shape.num_nodes == 1:
            return value if transform_non_params is None else transform_non_params(value)
        slots = _direct_children(slot)[0]
        values, treedef = _direct_children(value)
        if len(slots) != len(values):
            raise ValueError(
                f"state does not have the structure initable.init gives: {type(value).__name__} "
                f"with {len(values)} children where {len(slots)} are expected"
            )
        return treedef.unflatten([walk(s, v) for s, v in zip(slots, values, strict=True)])

    return walk(template, state)


def _direct_children(node: PyTree) -> tuple[list, Any]:
    """A pytree node's direct children and the treedef that puts them back."""
    return jax.tree.flatten(node, is_leaf=lambda child: child is not node)


# ---------------------------------------------------------------------------------------------
# Finding and replacing values by key


@dataclasses.dataclass(frozen=True)
class NamedTupleKey:
    """The path entry of field ``name`` of a NamedTuple (or gradchain state) called ``tuple_name``.

    :func:`tree_get_all_with_path` puts it where ``jax.tree_util`` would put a ``GetAttrKey`` or a
    ``SequenceKey``, so that ``filtering(path, value)`` can select by the state's class.
    """

    tuple_name: str
    name: str

    def __str__(self) -> str:
        return f"{self.tuple_name}.{self.name}"


def _field_names(node) -> tuple[str, ...] | None:
    """The field names of a NamedTuple or gradchain state; None for any other node."""
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return tuple(node._fields)
    if getattr(type(node), "_gradchain_state", False):
        return tuple(f.name for f in dataclasses.fields(node))
    return None


def _has_key(node, keys: tuple) -> bool:
    """Whether ``node`` is a dict with one of ``keys``, or a named node with one as field or name."""
    fields = _field_names(node)
    if fields is not None:
        return type(node).__name__ in keys or any(k in fields for k in keys)
    return isinstance(node, dict) and any(k in node for k in keys)


def _children(path: KeyPath, node) -> list[tuple[KeyPath, Any]]:
    fields = _field_names(node)
    if fields is not None:
        name = type(node).__name__
        return [((*path, NamedTupleKey(name, f)), getattr(node, f)) for f in fields]
    return [((*path, jax.tree_util.DictKey(k)), v) for k, v in node.items()]


def _leaves_with_named_path(tree: PyTree, stop: Callable[[Any], bool]) -> list[tuple[KeyPath, Any]]:
    """``jax.tree_util.tree_leaves_with_path`` stopping at ``stop`` nodes, with NamedTupleKeys."""
    out = []
    nodes = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: stop(x) or _field_names(x) is not None
    )
    for path, node in nodes:
        if stop(node) or _field_names(node) is None:
            out.append((path, node))
            continue
        for child_path, child in _children(path, node):
            out += [((*child_path, *p), v) for p, v in _leaves_with_named_path(child, stop)]
    return out


def _key_value(path: KeyPath, node, key) -> tuple[KeyPath, Any]:
    """The entry ``key`` of a node found to have it; the node itself when ``key`` is its name."""
    fields = _field_names(node)
    if fields is None:
        return (*path, jax.tree_util.DictKey(key)), node[key]
    if type(node).__name__ == key:
        return path, node
    return (*path, NamedTupleKey(type(node).__name__, key)), getattr(node, key)


def _find_all(tree: PyTree, key) -> list[tuple[KeyPath, Any]]:
    # Nodes holding the key come first (outermost, in leaf order), then the matches nested inside
    # them, as optax orders its results.
    has = functools.partial(_has_key, keys=(key,))
    holders = [(p, n) for p, n in _leaves_with_named_path(tree, has) if has(n)]
    found = [_key_value(p, n, key) for p, n in holders]
    for path, node in holders:
        for child_path, child in _children(path, node):
            found += [((*child_path, *p), v) for p, v in _find_all(child, key)]
    return found


def tree_get_all_with_path(
    tree: PyTree, key: Any, filtering: Filtering | None = None
) -> list[tuple[KeyPath, Any]]:
    """Every ``(path, value)`` in ``tree`` under ``key``: a dict key, a field, or a state's name.

    A NamedTuple (or gradchain state) whose class is named ``key`` is itself a match. Paths are
    tuples of ``jax.tree_util`` keys and :class:`NamedTupleKey`; ``filtering(path, value)``
    keeps only the matches it returns True for.
    """
    found = _find_all(tree, key)
    if filtering is not None:
        found = [(p, v) for p, v in found if filtering(p, v)]
    return found


def tree_get(
    tree: PyTree, key: Any, default: Any | None = None, filtering: Filtering | None = None
) -> Any:
    """The one value of ``tree`` under ``key`` (see :func:`tree_get_all_with_path`).

    Returns ``default`` when nothing matches.

    Raises:
      KeyError: when several values match.
    """
    found = tree_get_all_with_path(tree, key, filtering=filtering)
    if len(found) > 1:
        raise KeyError(f"Found multiple values for '{key}' in {tree}.")
    return found[0][1] if found else default


def _entry_name(entry) -> Any:
    if isinstance(entry, jax.tree_util.DictKey):
        if isinstance(entry.key, (str, int)):
            return entry.key
        raise KeyError("Hashable keys not supported")
    if isinstance(entry, (jax.tree_util.GetAttrKey, NamedTupleKey)):
        return entry.name
    if isinstance(entry, jax.tree_util.SequenceKey):
        return entry.idx
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return entry.key
    raise KeyError(f"Tree key '{entry}' of type '{type(entry)}' not valid.")


def _rebuild(node, children: dict):
    if isinstance(node, dict):
        return children
    if isinstance(node, tuple):
        return node._replace(**children)  # type: ignore[attr-defined]
    return dataclasses.replace(node, **children)


def tree_set(tree: PyTree, filtering: Filtering | None = None, /, **kwargs: Any) -> PyTree:
    """A copy of ``tree`` with the values under each keyword's key replaced by its value.

    Keys are matched as in :func:`tree_get_all_with_path` (a key that names a NamedTuple class
    replaces the whole tuple), restricted by ``filtering(path, value)`` when given. As in optax,
    the replacement is made in the outermost nodes holding a key, and in the dicts and named
    nodes directly below them.

    Raises:
      KeyError: when a key matches nothing (after filtering).
    """
    for key in kwargs:
        if not tree_get_all_with_path(tree, key, filtering):
            if filtering:
                raise KeyError(
                    f"Found no values matching '{key}' given the filtering operation in {tree}"
                )
            raise KeyError(f"Found no values matching '{key}' in {tree}")

    def keep(path, value) -> bool:
        return filtering is None or filtering(path, value)

    has = functools.partial(_has_key, keys=tuple(kwargs))

    def replace(path: KeyPath, node):
        if not has(node):
            return node
        name = type(node).__name__
        if _field_names(node) is not None and name in kwargs and keep(path, node):
            return kwargs[name]
        children = {}
        for child_path, child in _children(path, node):
            entry = _entry_name(child_path[-1])
            if entry in kwargs and keep(child_path, child):
                children[entry] = kwargs[entry]
            elif isinstance(child, (dict, list, tuple)) or _field_names(child) is not None:
                children[entry] = replace(child_path, child)
            else:
                children[entry] = child
        return _rebuild(node, children)

    treedef = jax.tree.structure(tree, is_leaf=has)
    leaves = _leaves_with_named_path(tree, has)
    return treedef.unflatten(replace(p, n) for p, n in leaves)
