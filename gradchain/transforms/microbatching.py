"""Microbatching: evaluate a function over a large batch one slice at a time, combining the
results, so that peak memory is that of one slice.

This is optax's ``microbatching`` module: ``microbatch`` (also ``optax.microbatch``), the
microbatched ``vmap`` (``micro_vmap``), per-example gradients summed or averaged over
microbatches (``micro_grad``) and the reshape they share (``reshape_batch_axis``): function
transformations for the gradient computation that feeds an optimizer, not gradient
transformations. ``AccumulationType`` members and ``Accumulator`` objects of optax's module are
accepted as gradchain's own.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import check_int

# Everything here is reached as ``gradchain.microbatching.*``, where optax keeps it
# (``optax.microbatching``); only ``microbatch`` is at the root (the transforms package exports
# it alone), as in optax. ``AccumulationType`` and ``Accumulator`` stay out of ``__all__``: optax's
# own members and objects are accepted as they are.
__all__ = ["micro_grad", "micro_vmap", "microbatch", "reshape_batch_axis"]


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


def reshape_batch_axis(tree: Any, microbatch_size: int, axis: int = 0) -> Any:
    """Each leaf's batch ``axis``, of size ``n * microbatch_size``, as two axes
    ``(n, microbatch_size)`` at the same place, in column-major order: microbatch ``i`` holds
    the rows ``i, i + n, i + 2n, ...``, so a sharding of the batch axis carries over to the
    ``microbatch_size`` axis.

    Same as ``optax.microbatching.reshape_batch_axis``, except for arrays sharded over a mesh
    with explicit axes, which optax reshapes with an explicit output sharding and gradchain
    leaves to XLA's propagation.
    """
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
            split_args[i] = reshape_batch_axis(args[i], microbatch_size, ax)
        for k, ax in zip(argnames, axes[len(argnums) :]):
            split_kwargs[k] = reshape_batch_axis(kwargs[k], microbatch_size, ax)
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


def micro_vmap(
    fun: Callable[..., Any],
    in_axes: int | Sequence[int | None] = 0,
    out_axes: Any = 0,
    *,
    microbatch_size: int | None = None,
    vmap_fn: Callable[..., Any] = jax.vmap,
    accumulator: Any = AccumulationType.CONCAT,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., Any]:
    r"""``jax.vmap(fun, in_axes)`` evaluated one microbatch of ``microbatch_size`` rows at a time,
    the results combined by ``accumulator``.

    With CONCAT (the default) the result is ``jax.vmap``'s, with peak memory that of one
    microbatch; SUM and MEAN reduce over the batch axis instead,
    :math:`\sum_b f(x_b)` and :math:`\frac1B \sum_b f(x_b)`, without holding every row's result.

    Args:
      fun: the function to map.
      in_axes: the mapped axis of each positional argument (None: not mapped); keyword
        arguments are mapped along axis 0.
      out_axes: must be 0 (the results are stacked along their axis 0).
      microbatch_size: rows per microbatch, dividing the batch; None maps the whole batch at
        once.
      vmap_fn: the vmap used on each microbatch (``jax.vmap``, or one with extra arguments).
      accumulator: how the rows' results are combined (see :func:`microbatch`).
      num_real_microbatches: run only this many microbatches.

    Same as ``optax.microbatching.micro_vmap``.
    """
    if out_axes != 0:
        raise NotImplementedError(f"micro_vmap: out_axes must be 0, got {out_axes!r}")
    in_axes = (in_axes,) if isinstance(in_axes, int) else tuple(in_axes)

    # A microbatch's rows are mapped, then reduced as the whole batch will be: the loop of
    # ``microbatch`` then combines one reduced result per microbatch.
    def mapped_and_reduced(*args, kwargs):
        output = vmap_fn(fun, in_axes, out_axes)(*args, **kwargs)
        rows = jax.tree.leaves(output)[0].shape[0]
        return _resolve(accumulator, rows).aggregate(output)

    batched = microbatch(
        mapped_and_reduced,
        argnums=tuple(i for i, ax in enumerate(in_axes) if ax is not None),
        microbatch_size=microbatch_size,
        accumulator=accumulator,
        argnames="kwargs",
        in_axes=tuple(ax for ax in in_axes if ax is not None) + (0,),
        num_real_microbatches=num_real_microbatches,
    )

    def mapped(*args, **kwargs):
        return batched(*args, kwargs=kwargs)

    return mapped


IndividualOutputs = collections.namedtuple("Aux", ["values", "metrics", "aux"])
IndividualOutputs.__doc__ = """What ``micro_grad`` returns beside the gradients, one row per example:
``values`` (the loss), ``metrics`` (``metrics_fn`` of the gradient) and ``aux`` (``fun``'s)."""


def micro_grad(
    fun: Callable[..., Any],
    has_aux: bool = False,
    argnums: int | Sequence[int] = 0,
    *,
    batch_argnums: int | Sequence[int] = 1,
    keep_batch_dim: bool = True,
    microbatch_size: int | None = None,
    accumulator: Any = AccumulationType.SUM,
    transform_fn: Callable[[Any], Any] = lambda x: x,
    metrics_fn: Callable[[Any], Any] = lambda x: None,
    num_real_microbatches: int | jax.Array | None = None,
) -> Callable[..., tuple[Any, Any]]:
    r"""Per-example gradients of ``fun``, transformed by ``transform_fn`` and combined by
    ``accumulator`` over the batch, computed one microbatch at a time.

    For examples :math:`x_b` of the arguments ``batch_argnums`` and :math:`g_b = \nabla
    f(\theta; x_b)`, the default SUM gives :math:`\sum_b T(g_b)` (MEAN:
    :math:`\frac1B\sum_b T(g_b)`), with :math:`T` = ``transform_fn`` (per-example clipping,
    squares for second moments, ...). Returns ``(result, Aux(values, metrics, aux))``: the
    per-example losses, ``metrics_fn(g_b)`` and ``fun``'s auxiliary output, one row per
    example.

    Args:
      fun: the loss, ``fun(params, batch, ...)`` by default.
      has_aux: ``fun`` returns ``(loss, aux)``.
      argnums: the argument(s) to differentiate.
      batch_argnums: the argument(s) with a batch axis 0 (default 1).
      keep_batch_dim: ``fun`` sees each example as a batch of one (else without the axis).
      microbatch_size: examples per microbatch (None: all at once).
      accumulator: how the transformed gradients are combined (see :func:`microbatch`).
      transform_fn: applied to each example's gradient before combining.
      metrics_fn: applied to each example's gradient; returned per example.
      num_real_microbatches: run only this many microbatches.

    Same as ``optax.microbatching.micro_grad``.
    """
    batch_argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    with_aux = fun if has_aux else lambda *a, **k: (fun(*a, **k), None)
    value_and_grad = jax.value_and_grad(with_aux, argnums, has_aux=True)

    def one_example(*args, **kwargs):
        (value, aux), grad = value_and_grad(*args, **kwargs)
        return transform_fn(grad), IndividualOutputs(
            values=value, metrics=metrics_fn(grad), aux=aux
        )

    in_axes = [None] * (max(batch_argnums) + 1)
    for i in batch_argnums:
        in_axes[i] = 0
    per_example = micro_vmap(
        one_example,
        in_axes=in_axes,
        accumulator=(accumulator, AccumulationType.CONCAT),
        microbatch_size=microbatch_size,
        num_real_microbatches=num_real_microbatches,
    )
    if not keep_batch_dim:
        return per_example

    def as_batches_of_one(*args, **kwargs):
        args = list(args)
        for i in batch_argnums:
            args[i] = jax.tree.map(lambda x: jnp.expand_dims(x, 1), args[i])
        return per_example(*args, **kwargs)

    return as_batches_of_one
