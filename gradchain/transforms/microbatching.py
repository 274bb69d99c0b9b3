"""Microbatching: evaluate a function over a large batch one slice at a time, combining the
results, so that peak memory is that of one slice.

This is optax's ``microbatch`` (``optax.microbatch``, ``optax.microbatching.microbatch``): a
function transformation for the gradient computation that feeds an optimizer, not a gradient
transformation. ``AccumulationType`` members and ``Accumulator`` objects of optax's module are
accepted as gradchain's own.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import check_int

# ``AccumulationType`` and ``Accumulator`` are reached as ``gradchain.microbatching.*``, where
# optax keeps them (``optax.microbatching``); only ``microbatch`` is at the root, as in optax.
__all__ = ["microbatch"]


@dataclasses.dataclass(frozen=True)
class Accumulator:
    """How the results of the microbatches are combined, as a loop over them::

        carry = init(shape_dtype_of_one_result)
        for i in range(n):
            carry = update(carry, result_i, i)
        return finalize(carry)

    ``aggregate`` reduces results stacked along a leading axis (optax's ``micro_vmap`` uses
    it). optax's class of the same name and fields.
    """

    init: Callable
    update: Callable
    finalize: Callable
    aggregate: Callable


class AccumulationType(enum.Enum):
    """The built-in ways of combining microbatch results."""

    MEAN = enum.auto()
    """The mean of the microbatch results (floats only)."""
    SUM = enum.auto()
    """The sum of the microbatch results."""
    RUNNING_MEAN = enum.auto()
    """The mean of the results of the microbatches that ran (``num_real_microbatches``)."""
    CONCAT = enum.auto()
    """The results concatenated along axis 0, in the order of the batch."""


def _floats_only(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def checked(value):
        if not all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(value)):
            raise ValueError(
                "microbatch: the MEAN and RUNNING_MEAN accumulators need floating-point results, "
                f"got dtypes {[x.dtype for x in jax.tree.leaves(value)]}"
            )
        return fn(value)

    return checked


def _leafwise(init, update, finalize, aggregate) -> Accumulator:
    """An accumulator of pytrees from one of arrays."""
    return Accumulator(
        init=lambda value: jax.tree.map(init, value),
        update=lambda carry, value, i: jax.tree.map(lambda c, v: update(c, v, i), carry, value),
        finalize=lambda carry: jax.tree.map(finalize, carry),
        aggregate=lambda values: jax.tree.map(aggregate, values),
    )


def _running_mean_update(carry, value, index):
    kept = index / (index + 1)
    return carry * kept + value * (1 - kept)


def _concat(num_microbatches: int) -> Accumulator:
    def init(value):
        return jnp.broadcast_to(jnp.zeros_like(value), (num_microbatches, *value.shape))

    def finalize(carry):
        # Microbatch i holds the rows i, i + n, i + 2n, ... (the column-major split below).
        return carry.reshape(-1, *carry.shape[2:], order="F")

    return _leafwise(init, lambda c, v, i: c.at[i].set(v), finalize, lambda x: x)


def _builtin(kind: str, num_microbatches: int) -> Accumulator:
    if kind == "SUM":
        return _leafwise(
            jnp.zeros_like, lambda c, v, _: c + v, lambda c: c, functools.partial(jnp.sum, axis=0)
        )
    if kind == "MEAN":
        return _leafwise(
            _floats_only(jnp.zeros_like),
            lambda c, v, _: c + v,
            lambda c: c / num_microbatches,
            functools.partial(jnp.mean, axis=0),
        )
    if kind == "RUNNING_MEAN":
        return _leafwise(
            _floats_only(jnp.zeros_like),
            _running_mean_update,
            lambda c: c,
            functools.partial(jnp.mean, axis=0),
        )
    return _concat(num_microbatches)


def _is_accumulator(x) -> bool:
    return all(hasattr(x, f) for f in ("init", "update", "finalize"))


def _is_accumulation_type(x) -> bool:
    # optax's AccumulationType members are taken as gradchain's of the same name.
    return isinstance(x, enum.Enum) and x.name in AccumulationType.__members__


def _resolve(tree, num_microbatches: int) -> Accumulator:
    """One accumulator for the whole result from a tree of them (a prefix of the result)."""

    def one(acc):
        if _is_accumulator(acc):
            return acc
        if _is_accumulation_type(acc):
            return _builtin(acc.name, num_microbatches)
        raise ValueError(
            f"accumulator: expected an Accumulator or an AccumulationType, got {acc!r}"
        )

    accs = jax.tree.map(one, tree, is_leaf=lambda x: _is_accumulator(x) or _is_accumulation_type(x))

    def over(method):
        return lambda *trees: jax.tree.map(lambda acc, *xs: getattr(acc, method)(*xs), accs, *trees)

    return Accumulator(
        init=over("init"),
        update=lambda carry, value, i: jax.tree.map(
            lambda acc, c, v: acc.update(c, v, i), accs, carry, value
        ),
        finalize=over("finalize"),
        aggregate=over("aggregate"),
    )


def _split(tree, microbatch_size: int, axis: int):
    """Each leaf's ``axis`` of size ``n * microbatch_size`` as ``(n, microbatch_size)``, in
    column-major order: microbatch ``i`` holds rows ``i, i + n, ...``, so a sharding of the batch
    axis carries over to the ``microbatch_size`` axis."""
    return jax.tree.map(
        lambda x: x.reshape(
            x.shape[:axis] + (-1, microbatch_size) + x.shape[axis + 1 :], order="F"
        ),
        tree,
    )


def microbatch(
    fun: Callable[..., Any],
    argnums: int | Sequence[int],
    microbatch_size: int | None,
    accumulator: Any = AccumulationType.SUM,
    *,
    argnames: str | Sequence[str] = (),
    in_axes: int | Sequence[int] = 0,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., Any]:
    r"""``fun`` evaluated on the batch one microbatch at a time (a ``lax.fori_loop``), with the
    results combined by ``accumulator``.

    With the batch :math:`B` split into :math:`n = |B| / m` microbatches :math:`B_i` of
    ``microbatch_size`` :math:`m`,

    .. math:: \text{SUM: } \textstyle\sum_i f(B_i), \quad \text{MEAN: } \tfrac1n \sum_i f(B_i),
              \quad \text{CONCAT: } [f(B_0); \dots; f(B_{n-1})] \text{ in batch order.}

    Microbatch :math:`i` holds the rows :math:`i, i+n, i+2n, \dots` of the batch.

    Args:
      fun: the function to evaluate.
      argnums: the positions of the arguments that have a batch axis.
      microbatch_size: :math:`m`, which must divide the batch size; None returns ``fun``
        itself.
      accumulator: how results are combined: an :class:`AccumulationType`, an
        :class:`Accumulator`, or a pytree of them that is a prefix of ``fun``'s result
        (default SUM).
      argnames: the names of keyword arguments that have a batch axis.
      in_axes: the batch axis of each argument of ``argnums`` then ``argnames`` (one int for
        all; default 0).
      num_real_microbatches: run only this many microbatches (may be traced, so that a smaller
        batch needs no recompilation).

    Same as ``optax.microbatch``, except for arrays sharded over a mesh with explicit axes,
    which optax reshapes with an explicit output sharding and gradchain leaves to XLA's
    propagation.
    """
    if microbatch_size is None:
        return fun
    check_int("microbatch_size", microbatch_size, low=1, what="a positive int or None")
    argnums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    argnames = (argnames,) if isinstance(argnames, str) else tuple(argnames)
    n_batched = len(argnums) + len(argnames)
    axes = (in_axes,) * n_batched if isinstance(in_axes, int) else tuple(in_axes)
    if len(axes) != n_batched:
        raise ValueError(
            f"in_axes must have one axis per argument of argnums and argnames ({n_batched}), "
            f"got {in_axes!r}"
        )

    def microbatched(*args, **kwargs):
        batched = [args[i] for i in argnums] + [kwargs[k] for k in argnames]
        sizes = [x.shape[ax] for ax, arg in zip(axes, batched) for x in jax.tree.leaves(arg)]
        if len(set(sizes)) > 1:
            raise ValueError(f"the batch arguments must have equal batch sizes, got {sizes}")
        batch_size = sizes[0]
        if batch_size % microbatch_size:
            raise ValueError(
                f"the batch size {batch_size} must be divisible by microbatch_size="
                f"{microbatch_size}"
            )
        num_microbatches = batch_size // microbatch_size
        split_args, split_kwargs = list(args), dict(kwargs)
        for i, ax in zip(argnums, axes):
            split_args[i] = _split(args[i], microbatch_size, ax)
        for k, ax in zip(argnames, axes[len(argnums) :]):
            split_kwargs[k] = _split(kwargs[k], microbatch_size, ax)
        acc = _resolve(accumulator, num_microbatches)

        def take(tree, index, ax):
            return jax.tree.map(lambda x: jnp.take(x, index, axis=ax), tree)

        def one(index):
            a, kw = list(split_args), dict(split_kwargs)
            for i, ax in zip(argnums, axes):
                a[i] = take(a[i], index, ax)
            for k, ax in zip(argnames, axes[len(argnums) :]):
                kw[k] = take(kw[k], index, ax)
            return fun(*a, **kw)

        steps = num_microbatches if num_real_microbatches is None else num_real_microbatches
        carry = jax.lax.fori_loop(
            0,
            steps,
            lambda i, c: acc.update(c, one(i), i),
            acc.init(jax.eval_shape(one, 0)),
        )
        return acc.finalize(carry)

    return microbatched
