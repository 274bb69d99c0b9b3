"""The protocol every piece of gradchain follows, and the machinery shared by all of them.

A gradient transformation is a pair of pure functions::

    init(params) -> state
    update(updates, state, params=None, **extra_args) -> (updates, state)

exactly as in optax, so that gradchain pieces and optax pieces chain with each other both ways.
Unlike optax, a gradchain transformation is an immutable object that knows its name and its
hyperparameters: it prints them, validates them at construction, exposes them as attributes and
compares equal to an identical transformation.

State layout: optax's by default
--------------------------------
By default the state of every piece has exactly optax's fields, in optax's order, and is
``EmptyState()`` where optax keeps nothing; a chain's state is a tuple of its pieces' states. So
``jax.tree_util.tree_flatten_with_path`` gives optax's key paths, and a checkpoint (orbax, pickle,
``gradchain.checkpoint``) of an optax state restores into the gradchain optimizer of the same name
and back.

gradchain keeps more than optax when asked: :func:`with_live_hyperparams` returns the same
transformation whose pieces also keep their *extras*: the hyperparameters as data
(``state.hyperparams``), a ``count`` on pieces that optax does not count, and logging fields
(the global norm ``clip_by_global_norm`` measured, the step size Polyak chose, ...). Then

* the value a step used can be read by name from the state of a whole chain with
  :func:`tree_get` (for example ``tree_get(state, "learning_rate")``);
* a constant hyperparameter can be changed between jitted steps with :func:`tree_set`, without
  recompiling, because it is data in the state rather than a constant in the compiled program.

In the default layout a constant hyperparameter is a constant of the compiled program, as in
optax. A hyperparameter given as a schedule (a function of the integer step count) needs a
count: a piece whose optax state has none keeps its extra ``count`` then, and update number
``k`` (0-based) uses ``schedule(k)``.

Writing a state class: the convention
-------------------------------------
A state class has optax's fields, with optax's names and in optax's order, and gradchain's
*extras*, named in the decorator (anywhere in the class: they are keyword-only)::

    @state_class(extras=("count", "hyperparams"))
    class TraceState:
        count: jax.Array      # extra: optax's TraceState has no count
        trace: Any            # optax's field
        hyperparams: dict     # extra: the live hyperparameters

* An extra is any field optax's state of that piece lacks: ``hyperparams``, a ``count`` optax
  does not keep, a logging field (``global_norm``). Where optax's state is ``EmptyState``, every
  field is an extra. A field optax has is never an extra, even a count
  (``ScaleByAdamState.count``).
* Extras are keyword-only with default None, so positional arguments fill optax's fields
  (``TraceState(trace)`` is optax's constructor): build states with the extras by keyword,
  ``TraceState(trace=buf, count=..., hyperparams=hp)``.
* ``init`` and ``update`` build the full state, extras included; the ``@transformation``
  decorator wraps them and sets every extra the piece does not keep to None
  (:meth:`GradientTransformation.kept_extras`: all of them under
  :func:`with_live_hyperparams`, ``count`` when a hyperparameter is a schedule, none
  otherwise). A piece whose computation needs another extra adds it by overriding
  ``kept_extras`` (``scale_by_rms`` keeps its count when it bias-corrects). An extra that is
  None is left out of the pytree; a state whose fields are all extras, none kept, is returned as
  ``EmptyState()``.
* So ``update`` must accept its own state without extras, or ``EmptyState()`` (or None, as
  optax's stateless pieces allow) when every field is an extra: read the hyperparameters with
  ``self.current_hyperparams(state)`` (never ``state.hyperparams[...]``) and an extra count with
  :func:`count_of` (None when absent; ``numerics.safe_increment(None)`` is None).

Converting a state written before this convention: list its extras in ``@state_class``, pass
them by keyword where states are built, replace ``state.count`` by ``count_of(state)`` where the
count is an extra, and check the key paths against optax's (``tests/test_optax_layout.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    NamedTuple,
    ParamSpec,
    Protocol,
    TypeVar,
    dataclass_transform,
)

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.numerics import commit_to_params, put

if TYPE_CHECKING:
    import optax

_T = TypeVar("_T")

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = float | jax.Array | Schedule
# A mask given as a tree of bools (a prefix of the parameters') or as a function of the
# parameters returning one; None selects everything. optax's ``MaskOrFn``.
MaskOrFn = Any | Callable[[Params], Any] | None


class TransformInitFn(Protocol):
    """The type of ``init``: ``init(params) -> state``. optax's protocol of the same name."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """The type of ``update`` without extra arguments: ``update(updates, state, params=None)
    -> (updates, state)``. optax's protocol of the same name."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class TransformUpdateExtraArgsFn(Protocol):
    """The type of ``update`` with extra keyword arguments (every gradchain transformation's):
    ``update(updates, state, params=None, **extra_args) -> (updates, state)``. optax's protocol
    of the same name."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class ShouldSkipUpdateFunction(Protocol):
    """The type of ``MultiSteps``' ``should_skip_update_fn``: ``fn(updates, gradient_step,
    params) -> (should_skip, logging_dict)``, ``should_skip`` a boolean scalar. optax's protocol
    of the same name (:func:`gradchain.skip_not_finite` is one)."""

    def __call__(
        self, updates: Updates, gradient_step: jax.Array, params: Params | None
    ) -> tuple[jax.Array, Any]: ...


__all__ = [
    "ChainState",
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "MaskOrFn",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "ShouldSkipUpdateFunction",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "apply_updates",
    "chain",
    "identity",
    "incremental_update",
    "init_empty_state",
    "named_chain",
    "named_optimizer",
    "periodic_update",
    "state_class",
    "stateless",
    "stateless_with_tree_map",
    "to_optax",
    "tree_get",
    "tree_get_all_with_path",
    "tree_set",
    "with_extra_args_support",
    "with_live_hyperparams",
]


# ---------------------------------------------------------------------------------------------
# States


@dataclass_transform(frozen_default=True)
def state_class(cls: type[_T] | None = None, *, extras: tuple[str, ...] = ()) -> Any:
    """Makes ``cls`` a frozen dataclass registered as a pytree whose fields are its children.

    States built this way are read by field name (``state.mu``) or, as optax's NamedTuples, by
    the position of an optax field (``state[1]``), rebuilt with ``dataclasses.replace`` and found
    by :func:`tree_get`.

    ``extras`` names the fields that are gradchain's additions to optax's state (see the module
    docstring): they are keyword-only with default None, and a field of them that is None is
    left out of the pytree, so a state without extras flattens with optax's key paths.
    Used bare (``@state_class``) or with arguments (``@state_class(extras=(...))``).
    """
    if cls is None:
        return functools.partial(state_class, extras=extras)
    extras = tuple(extras)
    annotations = inspect.get_annotations(cls)
    for name in extras:
        if name not in annotations:
            raise TypeError(f"{cls.__name__}: extra {name!r} is not a field")
        setattr(cls, name, dataclasses.field(default=None, kw_only=True))
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    optional = frozenset(extras)

    def flatten_with_keys(state):
        # A state rebuilt by unflatten keeps the fields it was flattened with, even where a
        # tree map put None in them (as checkpointers do to build a restore target).
        present = state.__dict__.get("_present_fields")
        if present is None:
            present = tuple(n for n in names if n not in optional or getattr(state, n) is not None)
        children = [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in present]
        return children, present

    def flatten(state):
        children, present = flatten_with_keys(state)
        return [c for _, c in children], present

    def unflatten(present, children):
        state = object.__new__(cls)
        for n in names:
            object.__setattr__(state, n, None)
        for n, c in zip(present, children):
            object.__setattr__(state, n, c)
        if optional:
            object.__setattr__(state, "_present_fields", present)
        return state

    def __repr__(state):
        _, shown = flatten_with_keys(state)
        return f"{type(state).__name__}({', '.join(f'{n}={getattr(state, n)!r}' for n in shown)})"

    positional = tuple(n for n in names if n not in optional)

    def __getitem__(state, index):
        # optax's states are NamedTuples, which code written for optax indexes by position
        # (``state[1]`` for ``mu``): the positions are optax's fields, extras come after none.
        return tuple(getattr(state, n) for n in positional)[index]

    if extras:
        cls.__repr__ = __repr__  # type: ignore[method-assign]
    if "__getitem__" not in cls.__dict__:
        cls.__getitem__ = __getitem__  # type: ignore[index]
    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    cls._gradchain_state = True  # type: ignore[attr-defined]
    cls._gradchain_extras = extras  # type: ignore[attr-defined]
    return cls


def count_of(state) -> jax.Array | None:
    """The step count in ``state``, or None when it keeps none (an extra count left out of the
    default layout, an ``EmptyState``, None)."""
    # A tuple's ``count`` is its method: only a state's field is a count.
    if _is_state(state) or "count" in getattr(state, "_fields", ()):
        return getattr(state, "count", None)
    return None


class EmptyState(NamedTuple):
    """The state of a transformation that keeps nothing between steps.

    optax's class of the same name, field for field (a NamedTuple without fields), so that
    states of stateless transformations are interchangeable with optax's.
    """


def _is_state(x) -> bool:
    return getattr(type(x), "_gradchain_state", False)


class ChainState(tuple):
    """The state of a chain: one state per transformation, readable by position or by name.

    A tuple, as optax's chain state: ``state[0]`` is the first transformation's state and
    ``isinstance(state, tuple)`` holds. ``state.scale_by_adam`` is the state of the
    transformation named ``scale_by_adam`` (when exactly one in this chain has that name).
    """

    names: tuple[str, ...]

    def __new__(cls, states: tuple, names: tuple[str, ...]):
        self = super().__new__(cls, states)
        self.names = tuple(names)
        return self

    @property
    def states(self) -> tuple:
        return tuple(self)

    def __reduce__(self):
        return ChainState, (tuple(self), self.names)

    def tree_flatten(self):
        return self.states, self.names

    def tree_flatten_with_keys(self):
        return [(jax.tree_util.SequenceKey(i), s) for i, s in enumerate(self)], self.names

    @classmethod
    def tree_unflatten(cls, names, states):
        return cls(tuple(states), names)

    def __getitem__(self, key):
        if isinstance(key, str):
            hits = [s for n, s in zip(self.names, self.states) if n == key]
            if len(hits) != 1:
                raise KeyError(
                    f"{len(hits)} transformations named {key!r} in this chain "
                    f"(names: {list(self.names)}); index by position instead"
                )
            return hits[0]
        return tuple.__getitem__(self, key)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("states", "names"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(str(e)) from None

    def __eq__(self, other):
        if not isinstance(other, ChainState):
            return tuple(self) == other if isinstance(other, tuple) else NotImplemented
        return (
            isinstance(other, ChainState)
            and self.names == other.names
            and jax.tree.structure(self.states) == jax.tree.structure(other.states)
            and all(
                bool(np.array_equal(a, b))
                for a, b in zip(jax.tree.leaves(self.states), jax.tree.leaves(other.states))
            )
        )

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        inner = ", ".join(f"{n}={s!r}" for n, s in zip(self.names, self.states))
        return f"ChainState({inner})"


# Keyed as a tuple (``[0]``, ``[1]``, ...), so that a chain state's key paths are optax's.
jax.tree_util.register_pytree_with_keys(
    ChainState,
    ChainState.tree_flatten_with_keys,
    ChainState.tree_unflatten,
    ChainState.tree_flatten,
)


# ---------------------------------------------------------------------------------------------
# Finding and changing state fields by name


def _children(x):
    """Named children of a state container; param trees and arrays are not containers."""
    if isinstance(x, ChainState):
        counts = {n: x.names.count(n) for n in x.names}
        for i, (n, s) in enumerate(zip(x.names, x.states)):
            yield (f".{n}" if counts[n] == 1 else f"[{i}]"), None, s
        return
    if _is_state(x):
        extras = getattr(type(x), "_gradchain_extras", ())
        for f in dataclasses.fields(x):
            value = getattr(x, f.name)
            if value is None and f.name in extras:
                continue  # an extra this layout leaves out
            yield f".{f.name}", f.name, value
        return
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # optax-style NamedTuple states
        for name in x._fields:
            yield f".{name}", name, getattr(x, name)
        return
    if isinstance(x, (tuple, list)):
        for i, s in enumerate(x):
            yield f"[{i}]", None, s
        return
    if isinstance(x, Mapping):  # states kept by label, as in partition's inner_states
        for k, s in x.items():
            yield f"[{k!r}]", None, s


def _walk(x, path, key):
    for step, name, child in _children(x):
        if name == "hyperparams" and isinstance(child, Mapping):
            if key in child:
                yield f"{path}{step}[{key!r}]", child[key]
            continue
        if name == key:
            yield f"{path}{step}", child
            continue
        yield from _walk(child, f"{path}{step}", key)


def tree_get_all_with_path(state: OptState, key: str) -> list[tuple[str, Any]]:
    """All ``(path, value)`` pairs of state fields or live hyperparameters named ``key``."""
    return list(_walk(state, "state", key))


_MISSING = object()


def _missing_message(key: str) -> str:
    return (
        f"no state field or hyperparameter named {key!r}. States have optax's layout by "
        f"default, without hyperparameters: to read and set them by name, build the optimizer "
        f"with gradchain.with_live_hyperparams(tx) (or wrap it in inject_hyperparams, as in "
        f"optax)"
    )


def tree_get(state: OptState, key: str, default: Any = _MISSING) -> Any:
    """The unique state field or live hyperparameter named ``key`` anywhere in ``state``.

    Examples: ``tree_get(state, "count")`` is ambiguous in a chain of several counting
    transformations, but ``tree_get(state, "mu")``, ``tree_get(state, "learning_rate")`` or
    ``tree_get(state.scale_by_adam, "count")`` are not.

    Raises:
      KeyError: naming the paths found when ``key`` is missing (and no default is given) or
        when it occurs more than once.
    """
    hits = tree_get_all_with_path(state, key)
    if len(hits) == 1:
        return hits[0][1]
    if not hits:
        if default is not _MISSING:
            return default
        raise KeyError(_missing_message(key))
    paths = ", ".join(p for p, _ in hits)
    raise KeyError(f"{key!r} is ambiguous, found at {paths}; narrow the state first")


def _like(value, old):
    """``value`` as a leaf in place of ``old``: its dtype and, outside a trace, its sharding
    (a new jit signature would recompile the step; a host-local scalar in a state on a mesh
    would stop a checkpointer across processes)."""
    if not hasattr(old, "dtype"):
        return value
    if np.shape(value) != np.shape(old) or isinstance(old, jax.core.Tracer):
        return jnp.asarray(value, dtype=old.dtype)
    if isinstance(value, jax.core.Tracer):
        return jnp.asarray(value, dtype=old.dtype)
    new = np.asarray(value, dtype=old.dtype)
    if isinstance(old, jax.Array) and old.committed:
        return put(new, old.sharding)
    return jnp.asarray(new)


def _leaves_like(value, old):
    """:func:`_like` leaf by leaf where ``value`` has ``old``'s structure, else ``value``."""
    if jax.tree.structure(value) != jax.tree.structure(old):
        return value
    return jax.tree.map(_like, value, old)


def _replace_in(x, key, value):
    if isinstance(x, ChainState):
        return ChainState(tuple(_replace_in(s, key, value) for s in x.states), x.names)
    if _is_state(x):
        changes = {}
        extras = getattr(type(x), "_gradchain_extras", ())
        for f in dataclasses.fields(x):
            child = getattr(x, f.name)
            if child is None and f.name in extras:
                continue  # an extra this layout leaves out stays out
            if f.name == "hyperparams" and isinstance(child, Mapping):
                if key in child:
                    changes[f.name] = {**child, key: _like(value, jnp.asarray(child[key]))}
            elif f.name == key:
                changes[f.name] = _leaves_like(value, child)
            elif isinstance(child, (tuple, list, Mapping, ChainState)) or _is_state(child):
                changes[f.name] = _replace_in(child, key, value)
        return dataclasses.replace(x, **changes) if changes else x
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return x._replace(  # type: ignore[attr-defined]
            **{
                n: (value if n == key else _replace_in(getattr(x, n), key, value))
                for n in x._fields
            }
        )
    if isinstance(x, (tuple, list)):
        return type(x)(_replace_in(s, key, value) for s in x)
    if isinstance(x, Mapping):
        return type(x)((k, _replace_in(s, key, value)) for k, s in x.items())  # type: ignore[call-arg]
    return x


def tree_set(state: OptState, **values: Any) -> OptState:
    """A copy of ``state`` with every field or live hyperparameter named by a keyword replaced.

    This is how a hyperparameter is changed between steps without recompiling::

        state = gradchain.tree_set(state, learning_rate=1e-4)

    A new value takes the dtype and the sharding of the leaf it replaces (on one device, on a
    mesh, across processes), so the step's jit signature does not change.

    A hyperparameter that was given as a schedule is recomputed from the schedule at the next
    step, so setting it has no lasting effect.

    Raises:
      KeyError: when a keyword names nothing in ``state``.
    """
    for key, value in values.items():
        if not tree_get_all_with_path(state, key):
            raise KeyError(_missing_message(key))
        state = _replace_in(state, key, value)
    return state


# ---------------------------------------------------------------------------------------------
# Tree checks with errors that name the path


def _path_list(tree, is_leaf=lambda x: x is None):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(jax.tree_util.keystr(p), leaf) for p, leaf in leaves]


def _is_empty_node(x) -> bool:
    """A node without children (None, ``{}``, an empty NamedTuple such as a masked leaf)."""
    structure = jax.tree.structure(x)
    return structure.num_nodes == 1 and structure.num_leaves == 0


def _same_shape(a, b) -> bool:
    return getattr(a, "shape", None) == getattr(b, "shape", None) or np.shape(a) == np.shape(b)


def check_tree_match(tree, reference, tree_name: str, reference_name: str) -> None:
    """Raises a ``ValueError`` naming the first path where ``tree`` and ``reference`` differ.

    Structure and leaf shapes are compared; this runs at trace time, so it costs nothing in a
    compiled step.
    """
    leaves, structure = jax.tree.flatten(tree)
    ref_leaves, ref_structure = jax.tree.flatten(reference)
    if structure == ref_structure:
        if all(map(_same_shape, leaves, ref_leaves)):
            return
        for (path, a), (_, b) in zip(_path_list(tree), _path_list(reference)):
            if a is None or b is None:
                continue
            if np.shape(a) != np.shape(b):
                raise ValueError(
                    f"{tree_name} and {reference_name} differ in shape at {path or 'the root'}: "
                    f"{np.shape(a)} vs {np.shape(b)}"
                )
        return
    # Empty subtrees (None, masked-out leaves, {}) are listed too, so a difference between two
    # trees of masked-out leaves still has a path.
    left, right = ([p for p, _ in _path_list(t, is_leaf=_is_empty_node)] for t in (tree, reference))
    for i in range(max(len(left), len(right))):
        pa = left[i] if i < len(left) else None
        pb = right[i] if i < len(right) else None
        if pa != pb:
            raise ValueError(
                f"{tree_name} and {reference_name} have different structures; first difference "
                f"at leaf {i}: {tree_name} has {pa or '<nothing>'}, "
                f"{reference_name} has {pb or '<nothing>'} (was the state made by init with "
                f"params of this structure?)"
            )
    raise ValueError(
        f"{tree_name} and {reference_name} have different structures: "
        f"{jax.tree.structure(tree)} vs {jax.tree.structure(reference)}"
    )


def require_params(params, transform_name: str) -> None:
    if params is None:
        raise ValueError(
            f"{transform_name} needs the current parameters: call "
            f"update(updates, state, params) with params"
        )


def check_params_match(updates, params) -> None:
    """:func:`check_tree_match` of the updates against the params, when params are given."""
    if params is not None:
        check_tree_match(updates, params, "updates", "params")


def require_values(params, transform_name: str) -> None:
    """Raises a ``TypeError`` when ``params`` holds ``jax.ShapeDtypeStruct`` leaves: for the
    transformations whose state starts at the parameters' values, which shapes alone lack."""
    if any(isinstance(p, jax.ShapeDtypeStruct) for p in jax.tree.leaves(params)):
        raise TypeError(
            f"{transform_name} starts its state at the parameters' values, which shapes alone do "
            f"not have: for an abstract state use jax.eval_shape(tx.init, params)"
        )


# ---------------------------------------------------------------------------------------------
# Hyperparameter validation (construction time)


def _is_concrete_number(x) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Real):
        return True
    if isinstance(x, (np.ndarray, np.generic, jax.Array)) and np.ndim(x) == 0:
        try:
            float(x)
            return True
        except (TypeError, jax.errors.ConcretizationTypeError):
            return False
    return False


class MissingArgumentError(TypeError, ValueError):
    """An extra argument ``update`` needs (``value=``, the loss) was not given.

    A ``TypeError``, as optax's ``update_fn`` raises for its missing required keyword, and a
    ``ValueError``, as gradchain raises for every argument it cannot work without.
    """


def check_number(
    name: str,
    value,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_schedule: bool = True,
    allow_none: bool = False,
) -> None:
    """Validates a float hyperparameter against ``[low, high]`` (ends open where said).

    Schedules (callables) and traced values are accepted as they are: they are checked when they
    are evaluated, not here.
    """
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name} must be a number, got None")
    if callable(value):
        if allow_schedule:
            return
        raise ValueError(f"{name} must be a number, not a schedule, got {value!r}")
    if isinstance(value, bool) or not (_is_concrete_number(value) or isinstance(value, jax.Array)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not _is_concrete_number(value):
        return
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    lo_ok = low is None or (v > low if low_open else v >= low)
    hi_ok = high is None or (v < high if high_open else v <= high)
    if not (lo_ok and hi_ok):
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}, got {value!r}")


def check_bool(name: str, value) -> None:
    """Validates a flag: ``True`` or ``False``, not a truthy stand-in such as ``1`` or ``"yes"``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")


def check_bools(obj, *names: str) -> None:
    """:func:`check_bool` of each of ``obj``'s attributes ``names``, in order."""
    for name in names:
        check_bool(name, getattr(obj, name))


def _is_integer_scalar_array(value) -> bool:
    return (
        isinstance(value, (jax.Array, np.ndarray))
        and value.shape == ()
        and jnp.issubdtype(value.dtype, jnp.integer)
    )


def check_int(
    name: str, value, *, low: int = 0, allow_none: bool = False, what: str | None = None
) -> None:
    """Validates an integer argument: a Python or NumPy integer (not a bool) ``>= low``, or None
    where ``allow_none``; a 0-d integer array counts as its value, a traced one passes.

    Without ``what`` the message says which test failed (``"update_interval must be an int, got
    2.5"``, ``"update_interval must be >= 1, got 0"``); with it, one message for both,
    ``f"{name} must be {what}, got {value!r}"`` (``what="a positive int"``).
    """
    if value is None and allow_none:
        return
    if _is_integer_scalar_array(value):
        # inject_hyperparams hands every numeric argument over as an array, traced under jit:
        # a traced one is checked where it is used, a concrete one as the int it holds.
        if isinstance(value, jax.core.Tracer):
            return
        value = int(value)
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if what is not None:
        if not is_int or value < low:
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return
    if not is_int:
        raise ValueError(f"{name} must be {'None or ' if allow_none else ''}an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


def check_dtype(name: str, value) -> None:
    """Validates a state dtype argument (``mu_dtype``, ``accumulator_dtype``, ...): None or a
    floating dtype, real or complex (optax keeps complex moments for complex parameters, and
    accepts a complex dtype for any state); an integer dtype would truncate every update."""
    if value is None:
        return
    try:
        dt = jnp.dtype(value)
    except TypeError:
        raise ValueError(f"{name} must be a dtype or None, got {value!r}") from None
    if not jnp.issubdtype(dt, jnp.inexact):
        raise ValueError(f"{name} must be a floating dtype (real or complex), got {dt}")


# ---------------------------------------------------------------------------------------------
# The transformation base class


def _field_equal(a, b) -> bool:
    if a is b:
        return True
    if isinstance(a, (np.ndarray, jax.Array)) or isinstance(b, (np.ndarray, jax.Array)):
        try:
            return np.shape(a) == np.shape(b) and bool(np.array_equal(np.asarray(a), np.asarray(b)))
        except Exception:  # tracers and other non-concrete values compare by identity
            return False
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_field_equal, a, b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _hashable(v):
    if isinstance(v, (np.ndarray, jax.Array)):
        try:
            arr = np.asarray(v)
            return ("array", arr.shape, str(arr.dtype), arr.tobytes())
        except Exception:
            return ("id", id(v))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    try:
        hash(v)
        return v
    except TypeError:
        return ("id", id(v))


def _default_float():
    return jnp.result_type(float)


def hyperparam_value(value, count) -> jax.Array:
    """A hyperparameter's value at update ``count`` (0-based), as a scalar of the default float."""
    if callable(value):
        value = value(count)
    return jnp.asarray(value, dtype=_default_float())


def constant_hyperparam(value) -> np.ndarray:
    """A constructor's constant hyperparameter as a 0-d NumPy array of the default float.

    It rounds as ``jnp.asarray(value, float32)`` does, and traces to the same constant, but
    costs no device transfer at each un-jitted step: a jitted kernel takes it as an argument
    through JAX's C++ dispatch, and a NumPy value cannot be placed on one mesh and read under
    another or be deleted by a donation (which is why no JAX array is cached instead).
    """
    return np.asarray(value, dtype=_default_float())


def is_constant_hyperparam(value) -> bool:
    """Whether ``value`` (from ``current_hyperparams``) is a :func:`constant_hyperparam`: the
    same at every step, so a kernel may take it as a compile-time constant."""
    return isinstance(value, np.ndarray)


@functools.partial(jax.jit, inline=True, static_argnums=0)
def _complement_of(value: float, live: jax.Array) -> jax.Array:
    """``float32(1 - value)`` plus the drift of ``live`` from ``value`` (see ``complement``);
    one dispatch when un-jitted, inlined when traced."""
    # The barrier stops XLA from reassociating the sum back into ``1 - live``.
    drift = jax.lax.optimization_barrier(jnp.asarray(value, live.dtype) - live)
    return jnp.asarray(1 - value, live.dtype) + drift


class _FunctionSignature:
    """``inspect.signature`` of the two classes callable as ``(init, update)``, as optax's
    NamedTuples; subclasses built from hyperparameters keep their own signature."""

    def __get__(self, instance, owner):
        if instance is None and owner in (GradientTransformation, GradientTransformationExtraArgs):
            kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
            return inspect.Signature(
                [
                    inspect.Parameter("init", kind, annotation=Callable[[Params], OptState]),
                    inspect.Parameter(
                        "update", kind, annotation=Callable[..., tuple[Updates, OptState]]
                    ),
                ]
            )
        return None


def stateless_call(state) -> bool:
    """Whether ``update`` got no gradchain state of its own (``None``, ``{}``, an
    ``EmptyState``).

    optax keeps no state for some transformations (``scale``, ``clip``, ``add_decayed_weights``,
    ...) and its users call them as ``update(updates, None)``. The gradchain counterparts then use
    their constructor's hyperparameters (schedules at step 0) and hand the state back as given.
    """
    return not _is_state(state)


def _strip_extras(state, keep: Callable[[str], bool]):
    """``state`` with the extras ``keep`` rejects set to None; ``EmptyState()`` when every field
    is an extra and none is left. Anything but a gradchain state class is returned as it is."""
    extras = getattr(type(state), "_gradchain_extras", ())
    if not extras:
        return state
    drop = {n: None for n in extras if not keep(n) and getattr(state, n) is not None}
    if drop:
        state = dataclasses.replace(state, **drop)
    fields = [f.name for f in dataclasses.fields(state)]
    if set(fields) <= set(extras) and all(getattr(state, n) is None for n in fields):
        return EmptyState()
    return state


class FieldData:
    """``repr``, equality and hashing from the fields of a frozen dataclass whose fields are its
    hyperparameters: what transformations and schedules share. It prints as
    ``name(field=value, ...)`` and compares equal to an object of its type with equal fields."""

    name: ClassVar[str]

    def _shows(self, field: dataclasses.Field) -> bool:
        """Whether ``field`` is part of the printed and compared data."""
        return field.repr

    def _value_repr(self, value: Any) -> str:
        return _short_repr(value)

    def _field_items(self) -> list[tuple[str, Any]]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        return [(f.name, getattr(self, f.name)) for f in fields if self._shows(f)]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={self._value_repr(v)}" for k, v in self._field_items())
        return f"{self.name}({args})"

    def __eq__(self, other) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        return all(
            _field_equal(a, b) for (_, a), (_, b) in zip(self._field_items(), other._field_items())
        )

    def __hash__(self) -> int:
        return hash((type(self), tuple(_hashable(v) for _, v in self._field_items())))


class GradientTransformation(FieldData):
    """Base class of every gradchain transformation.

    Subclasses are frozen dataclasses whose fields are the hyperparameters. They set ``name``
    (what ``repr`` prints, the optax-compatible function name) and ``hyperparams`` (the names
    of the float fields that may be schedules and are kept in the state when live, see the
    module docstring), and implement ``init`` and ``update``.
    """

    name: ClassVar[str] = "transformation"
    hyperparams: ClassVar[tuple[str, ...]] = ()
    # Whether ``update`` takes extra keyword arguments (a loss value, ...): every gradchain
    # transformation does; one built from optax-style functions may not.
    accepts_extra_args: ClassVar[bool] = True
    __signature__ = _FunctionSignature()
    # The field names of optax's NamedTuple, which code written for optax reads.
    _fields: ClassVar[tuple[str, ...]] = ("init", "update")

    def __new__(cls, *args, **kwargs):
        # ``GradientTransformation(init_fn, update_fn)`` is optax's way of building a
        # transformation from two functions; the subclasses are built from hyperparameters.
        if cls is GradientTransformation:
            return object.__new__(FunctionTransformation)
        if cls is GradientTransformationExtraArgs:
            return object.__new__(FunctionTransformationExtraArgs)
        return object.__new__(cls)

    def init(self, params: Params) -> OptState:
        raise NotImplementedError

    def update(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args
    ) -> tuple[Updates, OptState]:
        raise NotImplementedError

    def fuse_next(self, following) -> Callable | None:
        """A fused implementation of this transformation followed by ``following``, or None.

        :class:`Chain` calls it for each pair of neighbours. A transformation that can compute
        itself and its successor in fewer passes over memory returns a function
        ``(updates, state, following_state, params, extra_args) -> (updates, state,
        following_state)`` whose results equal running the two in turn, up to float32 rounding;
        the states keep their structure, so fused and unfused chains share checkpoints. The
        default fuses nothing.
        """
        return None

    @property
    def complex_params(self) -> bool:
        """Whether complex parameters are supported, with optax's convention (second moments of
        ``|g|^2``, so that a complex parameter behaves as its real and imaginary parts would).

        Transformations that support them say so with ``complex_params = True``; a wrapper
        supports them when every transformation it wraps does.
        """
        inner = []
        fields: tuple[dataclasses.Field, ...] = (
            dataclasses.fields(self) if dataclasses.is_dataclass(self) else ()
        )
        for f in fields:
            value = getattr(self, f.name)
            values = value.values() if isinstance(value, Mapping) else value
            if isinstance(values, (tuple, list)) or isinstance(value, Mapping):
                inner += [v for v in values if isinstance(v, GradientTransformation)]
            elif isinstance(value, GradientTransformation):
                inner.append(value)
        return bool(inner) and all(t.complex_params for t in inner)

    # -- live hyperparameters ---------------------------------------------------------------

    def init_hyperparams(self) -> dict[str, jax.Array]:
        """The live hyperparameters before the first update (schedules at step 0)."""
        zero = jnp.zeros((), jnp.int32)
        return {n: hyperparam_value(getattr(self, n), zero) for n in self.hyperparams}

    def current_hyperparams(self, state) -> dict[str, jax.Array]:
        """The hyperparameters this update uses: schedules at the state's count (step 0 when it
        keeps none); a JAX array given to the constructor as it is; else the value held in
        ``state.hyperparams`` when the state keeps its hyperparameters (which :func:`tree_set`
        may have changed), and the constructor's value when it does not (optax's layout).

        A JAX array (or tracer) in the constructor is how ``inject_hyperparams``, gradchain's or
        optax's, hands in the values it keeps in its own state: it rebuilds the transformation
        with them at every step, so they must win over the copy made at ``init``.
        """
        count = count_of(state)
        live = getattr(state, "hyperparams", None) if _is_state(state) else None
        out: dict[str, Any] = {}
        for n in self.hyperparams:
            v = getattr(self, n)
            if callable(v):
                if count is None:
                    count = jnp.zeros((), jnp.int32)
                out[n] = hyperparam_value(v, count)
            elif isinstance(v, jax.Array):
                out[n] = hyperparam_value(v, None)
            elif live is None:
                out[n] = constant_hyperparam(v)
            else:
                out[n] = live[n]
        return out

    # -- state layout -----------------------------------------------------------------------

    @property
    def live_hyperparams(self) -> bool:
        """Whether this piece keeps every extra of its state (:func:`with_live_hyperparams`)."""
        return self.__dict__.get("_live_hyperparams", False)

    def kept_extras(self) -> frozenset[str]:
        """The extras of this piece's state kept in its layout (see the module docstring): all
        of them when live; else the ``count`` a schedule needs; else none (optax's layout).

        A transformation whose computation needs another extra overrides this.
        """
        if any(callable(getattr(self, n)) for n in self.hyperparams):
            return frozenset({"count"})
        return frozenset()

    def laid_out(self, state):
        """``state``, this piece's state, in this piece's layout (its extras not kept set to
        None). ``init`` and ``update`` apply it; so does :class:`Chain` after a fused step."""
        if self.live_hyperparams:
            return state
        kept = self.kept_extras()
        return _strip_extras(state, kept.__contains__)

    def complement(self, name: str, hp: Mapping[str, jax.Array]) -> jax.Array | np.ndarray:
        """``1 - hp[name]`` for a decay rate, rounded as optax rounds its Python constants.

        optax forms ``1 - 0.999`` in double precision before rounding to float32; forming it from
        the float32 live value instead differs by an ulp, which over many steps of a chaotic
        training run grows into visible differences. While the live value is still the
        constructor's float, this returns exactly ``float32(1 - value)``; after
        :func:`tree_set` changed it, ``1 - new`` to within an ulp.
        """
        value, live = getattr(self, name), hp[name]
        if callable(value) or not _is_concrete_number(value):
            return 1 - live
        if is_constant_hyperparam(live):
            # Its complement is a constant too (no barrier, no add).
            return np.asarray(1 - float(value), live.dtype)
        return _complement_of(float(value), live)

    # -- inspectable data -------------------------------------------------------------------

    def __eq__(self, other) -> bool:
        # A live twin keeps other state than its default twin: they must not share a jit cache.
        equal = FieldData.__eq__(self, other)
        if equal is NotImplemented or not equal:
            return equal
        return self.live_hyperparams == other.live_hyperparams

    def __hash__(self) -> int:
        return hash((FieldData.__hash__(self), self.live_hyperparams))

    # optax's transformations are NamedTuples ``(init, update)``: unpacking, indexing and
    # ``len`` behave the same here.
    def __iter__(self):
        return iter((self.init, self.update))

    def __getitem__(self, index):
        return (self.init, self.update)[index]

    def __len__(self) -> int:
        return 2

    def _replace(self, **functions) -> GradientTransformation:
        """optax's ``tx._replace(init=..., update=...)``: a transformation of two functions."""
        parts = {"init": self.init, "update": self.update, **functions}
        if self.accepts_extra_args or _accepts_extra_args(parts["update"]):
            return GradientTransformationExtraArgs(**parts)
        return GradientTransformation(**parts)


def _short_repr(v) -> str:
    if isinstance(v, (np.ndarray, jax.Array)) and np.ndim(v) == 0:
        try:
            return repr(float(v))
        except Exception:
            return "<traced>"
    if isinstance(v, (type, np.dtype)):
        try:
            return jnp.dtype(v).name
        except TypeError:
            return repr(v)
    if inspect.isfunction(v) and v.__name__ == "<lambda>":
        return "<lambda>"
    if inspect.isfunction(v):
        return v.__name__
    return repr(v)


def committed_init(init: Callable) -> Callable:
    """``init`` whose state has no host-local leaf where the parameters are placed.

    Counts and live hyperparameters are made with ``jnp.asarray``, which leaves them on one
    device of this process, uncommitted; next to parameters on a mesh they are placed
    replicated over it (``numerics.commit_to_params``), so that the state is one global pytree
    across processes (a checkpointer saves it before the first step) and its jit signature is
    the one the step returns.
    """

    @functools.wraps(init)
    def wrapped(self, params):
        return commit_to_params(init(self, params), params)

    return wrapped


def _laid_out_init(init: Callable) -> Callable:
    @functools.wraps(init)
    def wrapped(self, params):
        return self.laid_out(init(self, params))

    return wrapped


def _laid_out_update(update: Callable) -> Callable:
    @functools.wraps(update)
    def wrapped(self, updates, state, params=None, **extra_args):
        updates, state = update(self, updates, state, params, **extra_args)
        return updates, self.laid_out(state)

    return wrapped


@dataclass_transform(frozen_default=True, eq_default=False)
def transformation(name: str, hyperparams: tuple[str, ...] = ()) -> Callable[[type[_T]], type[_T]]:
    """Class decorator: a frozen, comparable dataclass transformation called ``name``, whose
    ``init`` is multi-host safe (:func:`committed_init`) and whose states have the piece's
    layout (:meth:`GradientTransformation.laid_out`: optax's fields unless live)."""

    def wrap(cls: type[_T]) -> type[_T]:
        cls.name = name  # type: ignore[attr-defined]
        cls.hyperparams = tuple(hyperparams)  # type: ignore[attr-defined]
        # optax code tells factories apart by ``__name__`` (its tests pass ``value=`` when
        # ``tx_factory.__name__ == "scale_by_polyak"``); ``__qualname__`` keeps the class name,
        # which pickling and ``repr(cls)`` use.
        cls.__name__ = name
        if "init" in cls.__dict__:
            init = _laid_out_init(cls.__dict__["init"])
            cls.init = committed_init(init)  # type: ignore[attr-defined]
        if "update" in cls.__dict__:
            cls.update = _laid_out_update(cls.__dict__["update"])  # type: ignore[attr-defined]
        return dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)

    return wrap


def _map_transformations(value, fn):
    """``value`` with every transformation in it (directly, or in a tuple, list or dict)
    replaced by ``fn(transformation)``."""
    if isinstance(value, GradientTransformation):
        return fn(value)
    if isinstance(value, (tuple, list)) and not hasattr(value, "_fields"):
        return type(value)(_map_transformations(v, fn) for v in value)
    if isinstance(value, dict):
        return type(value)((k, _map_transformations(v, fn)) for k, v in value.items())
    return value


_Tx = TypeVar("_Tx", bound="GradientTransformation")


def with_live_hyperparams(tx: _Tx) -> _Tx:
    """``tx`` whose pieces, recursively through chains, wrappers and named optimizers, keep
    gradchain's extras in their states: the hyperparameters as data, counts, logging fields.

    Then ``tree_get(state, "learning_rate")`` reads the value a step used and
    ``tree_set(state, learning_rate=1e-4)`` changes it between jitted steps without recompiling.
    The default layout is optax's (see :mod:`gradchain.core.base`); this is gradchain's option.
    optax transformations inside ``tx`` are left as they are.
    """
    if not isinstance(tx, GradientTransformation) or isinstance(tx, FunctionTransformation):
        return tx
    live = copy.copy(tx)
    if isinstance(tx, Chain):
        transforms = tuple(with_live_hyperparams(t) for t in tx.transforms)
        object.__setattr__(live, "transforms", transforms)
    elif dataclasses.is_dataclass(tx):
        for f in dataclasses.fields(tx):
            value = getattr(tx, f.name)
            new = _map_transformations(value, with_live_hyperparams)
            if new is not value:
                object.__setattr__(live, f.name, new)
    object.__setattr__(live, "_live_hyperparams", True)
    return live


# ---------------------------------------------------------------------------------------------
# Transformations built from functions, as optax builds them


class _ExtraArgsType(type):
    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        return (
            cls is GradientTransformationExtraArgs
            and isinstance(obj, GradientTransformation)
            and obj.accepts_extra_args
        )


class GradientTransformationExtraArgs(GradientTransformation, metaclass=_ExtraArgsType):
    """A transformation whose ``update`` takes extra keyword arguments, as in optax.

    ``GradientTransformationExtraArgs(init_fn, update_fn)`` builds one from two functions.
    ``isinstance(tx, GradientTransformationExtraArgs)`` holds for every gradchain
    transformation, since each forwards or ignores extra arguments, so optax code that checks it
    before wrapping (:func:`with_extra_args_support`) leaves gradchain pieces alone.
    """


def _function_repr(tx) -> str:
    return f"{tx.name}(init={_short_repr(tx.init)}, update={_short_repr(tx.update)})"


# Not built with @transformation, which would fix the name: the name is read from the functions.
@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FunctionTransformation(GradientTransformation):
    """A transformation made of an ``init`` and an ``update`` function, as optax's NamedTuple.

    What ``GradientTransformation(init_fn, update_fn)`` returns. Its name is the optax-style
    factory that made the functions (read from their qualified names), so a chain of such
    pieces prints and indexes by name like any other.
    """

    init: Callable
    update: Callable

    @property
    def name(self) -> str:  # type: ignore[override]
        return _foreign_name(self)

    @property
    def accepts_extra_args(self) -> bool:  # type: ignore[override]
        return _accepts_extra_args(self.update)

    __repr__ = _function_repr


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class FunctionTransformationExtraArgs(FunctionTransformation, GradientTransformationExtraArgs):
    """What ``GradientTransformationExtraArgs(init_fn, update_fn)`` returns."""

    accepts_extra_args = True
    __repr__ = _function_repr


def init_empty_state(params: Params) -> EmptyState:
    """The ``init`` of a transformation that keeps no state: returns :class:`EmptyState`."""
    del params
    return EmptyState()


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """``tx`` itself when its ``update`` takes extra keyword arguments, else a wrapper whose
    ``update`` accepts and ignores them (as optax's)."""
    if isinstance(tx, GradientTransformationExtraArgs):
        return tx

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update)


@transformation("stateless")
class Stateless(GradientTransformation):
    """A transformation without state from a function ``f(updates, params) -> updates``.

    ``params`` is None when ``update`` is called without them. State: :class:`EmptyState`.
    Same as ``optax.stateless``.
    """

    f: Callable

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return self.f(updates, params), EmptyState()


def stateless(f: Callable[[Updates, Params | None], Updates]) -> Stateless:
    """A transformation without state that maps ``(updates, params)`` to ``f(updates, params)``."""
    return Stateless(f)


@transformation("stateless_with_tree_map")
class StatelessWithTreeMap(GradientTransformation):
    """A transformation without state that applies ``f(update, param)`` leaf by leaf.

    ``param`` is None when ``update`` is called without params. State: :class:`EmptyState`.
    Same as ``optax.stateless_with_tree_map``.
    """

    f: Callable

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        if params is None:
            return jax.tree.map(lambda u: self.f(u, None), updates), EmptyState()
        return jax.tree.map(self.f, updates, params), EmptyState()


def stateless_with_tree_map(
    f: Callable[[jax.typing.ArrayLike, jax.typing.ArrayLike | None], jax.typing.ArrayLike],
) -> StatelessWithTreeMap:
    """A transformation without state that maps each update leaf ``u`` (and its parameter ``p``,
    or None) to ``f(u, p)``."""
    return StatelessWithTreeMap(f)


# ---------------------------------------------------------------------------------------------
# Foreign (optax) transformations inside gradchain chains


def _accepts_extra_args(update_fn) -> bool:
    try:
        sig = inspect.signature(update_fn)
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _foreign_name(tx) -> str:
    """An optax transformation's factory name, read from its closures' qualified names."""
    for attr in ("update", "init"):
        qual = getattr(getattr(tx, attr, None), "__qualname__", "") or ""
        if "<locals>" in qual:
            return qual.split(".<locals>")[0]
    return type(tx).__name__


def _child_name(tx) -> str:
    return tx.name if isinstance(tx, GradientTransformation) else _foreign_name(tx)


def _call_update(tx, updates, state, params, extra_args):
    if getattr(tx, "accepts_extra_args", False) or _accepts_extra_args(tx.update):
        return tx.update(updates, state, params, **extra_args)
    return tx.update(updates, state, params)


# ---------------------------------------------------------------------------------------------
# chain, identity, apply_updates


class Chain(GradientTransformation):
    """Applies transformations in order; the state is a :class:`ChainState`.

    A named optimizer (``adamw``, ``sgd``, ...) is a chain that also records the arguments it was
    built with, so that ``repr`` shows them and ``tx.learning_rate`` reads them back. Any other
    attribute is looked up in the chained transformations: ``adamw(1e-3).b1 == 0.9``.
    """

    name = "chain"

    def __init__(self, *transforms, name: str = "chain", config: Mapping | None = None):
        for i, t in enumerate(transforms):
            if not (hasattr(t, "init") and hasattr(t, "update")):
                raise TypeError(
                    f"{name}: argument {i} is not a gradient transformation (it has no "
                    f"init/update): {t!r}"
                )
        object.__setattr__(self, "transforms", tuple(transforms))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "config", dict(config or {}))

    def __setattr__(self, key, value):
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {key!r}")

    @committed_init
    def init(self, params):
        return ChainState(
            tuple(t.init(params) for t in self.transforms),
            tuple(_child_name(t) for t in self.transforms),
        )

    def update(self, updates, state, params=None, **extra_args):
        if not isinstance(state, ChainState) or len(state.states) != len(self.transforms):
            got = (
                f"a ChainState of {len(state.states)}"
                if isinstance(state, ChainState)
                else type(state).__name__
            )
            raise ValueError(
                f"{self.name}: expected the state made by this chain's init "
                f"({len(self.transforms)} transformations), got {got}"
            )
        new_states, states, transforms = [], state.states, self.transforms
        i = 0
        while i < len(transforms):
            t = transforms[i]
            fused = (
                t.fuse_next(transforms[i + 1])
                if i + 1 < len(transforms) and isinstance(t, GradientTransformation)
                else None
            )
            if fused is not None:
                updates, s, s_next = fused(updates, states[i], states[i + 1], params, extra_args)
                new_states += [t.laid_out(s), transforms[i + 1].laid_out(s_next)]
                i += 2
                continue
            updates, s = _call_update(t, updates, states[i], params, extra_args)
            new_states.append(s)
            i += 1
        return updates, ChainState(tuple(new_states), state.names)

    @property
    def complex_params(self) -> bool:
        return all(getattr(t, "complex_params", False) for t in self.transforms)

    def __getattr__(self, key):
        if key.startswith("__") or key in ("transforms", "config"):
            raise AttributeError(key)
        config = self.__dict__.get("config", {})
        if key in config:
            return config[key]
        found = []
        for t in self.__dict__.get("transforms", ()):
            with contextlib.suppress(AttributeError):
                found.append(getattr(t, key))
        if len(found) == 1:
            return found[0]
        if found and all(_field_equal(found[0], f) for f in found[1:]):
            return found[0]
        if found:
            raise AttributeError(f"{key!r} is set differently in several parts of {self.name}")
        raise AttributeError(f"{self.name} has no hyperparameter {key!r}")

    def __repr__(self):
        inner = ",\n".join("  " + repr(t).replace("\n", "\n  ") for t in self.transforms)
        if self.name == "chain":
            return f"chain(\n{inner}\n)"
        args = ", ".join(f"{k}={_short_repr(v)}" for k, v in self.config.items())
        return f"{self.name}({args}) = chain(\n{inner}\n)"

    def __eq__(self, other):
        if not isinstance(other, Chain):
            return NotImplemented
        return (
            self.name == other.name
            and len(self.transforms) == len(other.transforms)
            and all(_field_equal(a, b) for a, b in zip(self.transforms, other.transforms))
            and self.config.keys() == other.config.keys()
            and all(_field_equal(self.config[k], other.config[k]) for k in self.config)
        )

    def __hash__(self):
        return hash((self.name, tuple(_hashable(t) for t in self.transforms)))


def chain(*args: GradientTransformation) -> Chain:
    """Applies the transformations ``args`` in order: the updates of one are the input of the
    next.

    Accepts gradchain and optax transformations alike; extra keyword arguments of ``update`` are
    passed to every transformation that accepts them.
    """
    return Chain(*args)


@transformation("named_chain")
class NamedChain(GradientTransformation):
    """Applies ``transforms`` in order, keeping the state of each under its name in ``names``.

    Same as ``optax.named_chain``: the state is a dict in the order of the pieces, so the state of
    the piece named ``"adam"`` is ``state["adam"]``; extra ``update`` arguments reach every piece
    that takes them.
    """

    names: tuple[str, ...]
    transforms: tuple[GradientTransformation, ...]

    def __post_init__(self):
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "transforms", tuple(self.transforms))
        if len(self.names) != len(self.transforms):
            raise ValueError("named_chain: one name per transformation")
        for n, t in zip(self.names, self.transforms):
            if not isinstance(n, str):
                raise TypeError(f"named_chain: names must be strings, got {n!r}")
            if not (hasattr(t, "init") and hasattr(t, "update")):
                raise TypeError(f"named_chain: {n!r} is not a gradient transformation: {t!r}")
        if len(self.names) != len(set(self.names)):
            raise ValueError(
                f"Named transformations must have unique names, but got {list(self.names)}"
            )

    def init(self, params):
        return {n: t.init(params) for n, t in zip(self.names, self.transforms)}

    def update(self, updates, state, params=None, **extra_args):
        new_state = {}
        for n, t in zip(self.names, self.transforms):
            updates, new_state[n] = _call_update(t, updates, state[n], params, extra_args)
        return updates, new_state

    def __repr__(self) -> str:
        inner = ", ".join(f"({n!r}, {t!r})" for n, t in zip(self.names, self.transforms))
        return f"named_chain({inner})"


def named_chain(*args: tuple[str, GradientTransformation]) -> NamedChain:
    """Applies ``(name, transformation)`` pairs in order, keeping each state under its name."""
    for i, pair in enumerate(args):
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise TypeError(f"named_chain: argument {i} must be a (name, transformation) pair")
    return NamedChain(tuple(n for n, _ in args), tuple(t for _, t in args))


_Args = ParamSpec("_Args")
Parts = Sequence[Any]  # the transformations a named optimizer chains, in order


def named_optimizer(build: Callable[_Args, Parts]) -> Callable[_Args, Chain]:
    """Makes ``build``, a function returning an optimizer's parts, the named optimizer itself.

    The call's arguments are bound to ``build``'s signature, defaults filled in, and that binding
    is the chain's ``config`` (what ``repr`` prints and ``tx.b1`` reads back), so an optimizer
    writes each argument once, in its signature::

        @named_optimizer
        def adamw(learning_rate, b1=0.9, ..., weight_decay=1e-4, mask=None):
            return (
                scale_by_adam(b1, ...),
                add_decoupled_weight_decay(weight_decay, mask),
                scale_by_learning_rate(learning_rate),
            )

    The chain is named after the function; its signature and docstring are ``build``'s.
    """
    # Annotations evaluated, so that code checking ``learning_rate``'s annotation against
    # ``ScalarOrSchedule`` (as optax's tests do) finds the object, not its name.
    signature = inspect.signature(build, eval_str=True)
    lr = signature.parameters.get("learning_rate")
    if lr is not None and lr.annotation is inspect.Parameter.empty:
        # Every optimizer takes a schedule for its learning rate: say so as optax does.
        annotation = ScalarOrSchedule if lr.default is not None else ScalarOrSchedule | None
        signature = signature.replace(
            parameters=[
                p.replace(annotation=annotation) if p.name == "learning_rate" else p
                for p in signature.parameters.values()
            ]
        )

    @functools.wraps(build)
    def make(*args: _Args.args, **kwargs: _Args.kwargs) -> Chain:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{build.__name__}(): {e}") from None
        bound.apply_defaults()
        parts = build(*bound.args, **bound.kwargs)
        return Chain(*parts, name=build.__name__, config=bound.arguments)

    make.__signature__ = signature.replace(return_annotation="Chain")  # type: ignore[attr-defined]
    make.__annotations__ = {**build.__annotations__, "return": "Chain"}
    return make


@transformation("identity")
class Identity(GradientTransformation):
    """Returns the updates unchanged: ``u = g``. State: :class:`EmptyState`."""

    complex_params = True

    def init(self, params):
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        return updates, state


def identity() -> Identity:
    """The transformation that returns updates unchanged."""
    return Identity()


def apply_updates(params: Params, updates: Updates) -> Params:
    """``params + updates`` leaf by leaf, keeping each parameter's dtype (as optax does).

    ``None`` leaves in ``updates`` (masked-out parameters) leave the parameter unchanged.
    """
    if params is None:
        # optax's convention: no parameters, nothing to update.
        return None
    check_tree_match(updates, params, "updates", "params")
    return jax.tree.map(
        lambda p, u: p if u is None else _add_leaf(p, u),
        params,
        updates,
        is_leaf=lambda x: x is None,
    )


@functools.partial(jax.jit, inline=True)
def _add_leaf(p, u):
    p = jnp.asarray(p)
    return jnp.asarray(p + u).astype(p.dtype)


def incremental_update(
    new_tensors: Params, old_tensors: Params, step_size: jax.typing.ArrayLike
) -> Params:
    r"""The Polyak average ``step_size * new + (1 - step_size) * old``, leaf by leaf.

    .. math:: \bar\theta \leftarrow \tau\, \theta + (1 - \tau)\, \bar\theta

    with :math:`\tau` = ``step_size`` (a target network's soft update, an evaluation average).
    ``None`` leaves of ``new_tensors`` stay None. The arithmetic promotes as JAX does: a float32
    ``step_size`` array and bfloat16 tensors give float32. Reference: Polyak and Juditsky,
    "Acceleration of stochastic approximation by averaging", 1992. Same as
    ``optax.incremental_update``; :func:`gradchain.params_ema` keeps such an average in an
    optimizer's state.
    """
    if not any(x is None for x in jax.tree.leaves(new_tensors, is_leaf=lambda x: x is None)):
        check_tree_match(old_tensors, new_tensors, "old_tensors", "new_tensors")
    return jax.tree.map(
        lambda new, old: None if new is None else step_size * new + (1.0 - step_size) * old,
        new_tensors,
        old_tensors,
        is_leaf=lambda x: x is None,
    )


def periodic_update(
    new_tensors: Params,
    old_tensors: Params,
    steps: jax.typing.ArrayLike,
    update_period: jax.typing.ArrayLike,
) -> Params:
    r"""``new_tensors`` at the steps that are multiples of ``update_period``, else
    ``old_tensors``: the slow copy of a target network (DQN, BYOL).

    .. math:: \bar\theta_t = \theta_t \text{ if } t \bmod K = 0 \text{ else } \bar\theta_{t-1}

    with :math:`t` = ``steps`` and :math:`K` = ``update_period`` (integers; traced values are
    fine). Reference: Mnih et al., "Human-level control through deep reinforcement learning",
    2015. Same as ``optax.periodic_update``.
    """
    check_tree_match(old_tensors, new_tensors, "old_tensors", "new_tensors")
    return jax.lax.cond(
        jnp.mod(steps, update_period) == 0, lambda: new_tensors, lambda: old_tensors
    )


def to_optax(tx: GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``tx`` as an ``optax.GradientTransformationExtraArgs``.

    Plain gradchain transformations already work inside ``optax.chain``; the wrapper is only
    needed to pass extra ``update`` arguments (a loss value, a loss function) through an optax
    chain, which drops them for objects it does not recognise.
    """
    import optax  # an optional dependency: only imported when asked for

    return optax.GradientTransformationExtraArgs(tx.init, tx.update)


def check_floating(tree, transform_name: str, *, complex_ok: bool = False) -> None:
    """Raises a ``TypeError`` naming the first leaf of ``tree`` that is not a float array (a
    real one unless ``complex_ok``).

    Transformations that keep moments call this in ``init``: an integer leaf would silently
    truncate every update. Those whose moment algebra follows optax's for complex parameters
    (second moments of ``|g|^2``) pass ``complex_ok=self.complex_params``.
    """
    allowed = jnp.inexact if complex_ok else jnp.floating
    for path, leaf in _path_list(tree):
        if leaf is None:
            continue
        dtype = getattr(leaf, "dtype", None)
        dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(np.asarray(leaf))
        if not jnp.issubdtype(dtype, allowed):
            kinds = "floating-point" if complex_ok else "real floating-point"
            raise TypeError(
                f"{transform_name}: parameter {path or '<root>'} has dtype {dtype}; only {kinds} "
                f"parameters are supported (cast other leaves, or leave them out with "
                f"gradchain.masked)"
            )


def tree_map_multi(fn, n_outputs: int, tree, *rest):
    """Maps ``fn`` (returning ``n_outputs`` arrays) over leaves; returns ``n_outputs`` trees.

    One pass computes every output of a leaf together (the update and the new moments), which
    keeps each leaf's arithmetic in one place.
    """
    leaves, treedef = jax.tree.flatten(tree)
    rest_leaves = [treedef.flatten_up_to(r) for r in rest]
    outs = [fn(*xs) for xs in zip(leaves, *rest_leaves)]
    return tuple(treedef.unflatten([o[i] for o in outs]) for i in range(n_outputs))


def cond(pred, true_fn: Callable, false_fn: Callable, *operands):
    """``jax.lax.cond``, except that outside a trace only the branch ``pred`` picks is run.

    Eagerly, ``lax.cond`` traces both branches on every call; branches that close over the
    step's values are new jaxprs each time, and XLA compiles the conditional again on every
    un-jitted step. A concrete predicate picks its branch in Python instead, as under
    ``jax.disable_jit``: the branch's operations then reuse the programs of earlier steps.
    """
    if isinstance(pred, jax.core.Tracer):
        return jax.lax.cond(pred, true_fn, false_fn, *operands)
    return (true_fn if bool(pred) else false_fn)(*operands)
