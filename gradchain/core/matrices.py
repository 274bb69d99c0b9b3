"""Viewing an N-D parameter as a batch of matrices: the axis bookkeeping GaLore and Muon share.

A weight stored with more than two axes is still, logically, a linear map: an attention projection
``(embed, heads, head_dim)`` maps ``embed`` to ``heads * head_dim``, and a stack of scanned layers
``(layers, d_in, d_out)`` is ``layers`` independent ``d_in x d_out`` matrices. Dimension numbers
say which axes are the matrix's rows (``reduction_axis``, the input side) and columns
(``output_axis``); every other axis is a batch axis, handled independently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax

from gradchain.core.base import PyTree

__all__: list[str] = []


def _axes(value, ndim: int, name: str, where: str) -> tuple[int, ...]:
    raw = (value,) if isinstance(value, int) else tuple(value)
    if not raw or not all(isinstance(a, int) and not isinstance(a, bool) for a in raw):
        raise ValueError(
            f"{where}: {name} must be an int or a non-empty sequence of ints, got {value!r}"
        )
    for a in raw:
        if not -ndim <= a < ndim:
            raise ValueError(f"{where}: {name} {a} is out of range for {ndim} axes")
    axes = tuple(a % ndim for a in raw)
    if len(set(axes)) != len(axes):
        raise ValueError(f"{where}: {name} repeats an axis: {value!r}")
    return axes


@dataclasses.dataclass(frozen=True)
class MatrixView:
    """How a tensor of ``shape`` maps to ``(batch, rows, cols)`` and back.

    ``batch_axes``, ``row_axes`` and ``col_axes`` are the tensor's axes in each role, in the
    order they are merged (``perm`` is their concatenation).
    """

    shape: tuple[int, ...]
    perm: tuple[int, ...]
    batch_shape: tuple[int, ...]
    batch: int
    rows: int
    cols: int
    batch_axes: tuple[int, ...]
    row_axes: tuple[int, ...]
    col_axes: tuple[int, ...]

    def to_matrices(self, x: jax.Array) -> jax.Array:
        """``x`` as a ``(batch, rows, cols)`` array (batch is 1 when there are no batch axes)."""
        return x.transpose(self.perm).reshape(self.batch, self.rows, self.cols)

    def from_matrices(self, y: jax.Array) -> jax.Array:
        """The inverse of :meth:`to_matrices`."""
        permuted_shape = tuple(self.shape[a] for a in self.perm)
        inverse = tuple(sorted(range(len(self.perm)), key=lambda i: self.perm[i]))
        return y.reshape(permuted_shape).transpose(inverse)


def matrix_view(
    shape: Sequence[int],
    reduction_axis: int | Sequence[int],
    output_axis: int | Sequence[int],
    where: str,
) -> MatrixView:
    """The :class:`MatrixView` of a tensor of ``shape`` under the given dimension numbers.

    Raises a ``ValueError`` that starts with ``where`` (the transformation and parameter path)
    when the tensor has fewer than two axes or the axes are out of range or overlap.
    """
    shape = tuple(int(d) for d in shape)
    ndim = len(shape)
    if ndim < 2:
        raise ValueError(f"{where} has shape {shape}: a matrix view needs at least two axes")
    rows = _axes(reduction_axis, ndim, "reduction_axis", where)
    cols = _axes(output_axis, ndim, "output_axis", where)
    if set(rows) & set(cols):
        raise ValueError(
            f"{where}: reduction_axis {reduction_axis!r} and output_axis {output_axis!r} overlap "
            f"for shape {shape}"
        )
    batch = tuple(a for a in range(ndim) if a not in rows and a not in cols)
    return MatrixView(
        shape=shape,
        perm=batch + rows + cols,
        batch_shape=tuple(shape[a] for a in batch),
        batch=math.prod(shape[a] for a in batch),
        rows=math.prod(shape[a] for a in rows),
        cols=math.prod(shape[a] for a in cols),
        batch_axes=batch,
        row_axes=rows,
        col_axes=cols,
    )


def entries_per_leaf(
    prefix: PyTree, tree: PyTree, is_prefix_leaf: Callable[[Any], bool] | None
) -> list[Any]:
    """The entry of ``prefix`` (a pytree whose structure is a prefix of ``tree``'s) that covers
    each leaf of ``tree``, in ``tree``'s flattening order; None leaves of ``tree`` count as leaves.

    Raises ``ValueError`` when ``prefix`` does not fit ``tree``.
    """
    is_none = lambda x: x is None
    treedef = jax.tree.structure(tree, is_leaf=is_none)
    try:
        full = jax.tree.map(
            lambda entry, sub: jax.tree.map(lambda _: entry, sub, is_leaf=is_none),
            prefix,
            tree,
            is_leaf=is_prefix_leaf,
        )
        return treedef.flatten_up_to(full)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(
            f"its structure is not a prefix of the parameters' structure: {e}"
        ) from None


def check_dimension_numbers(value: Any, dims_cls: type) -> None:
    """Validates a ``weight_dimension_numbers`` argument at construction: None, one ``dims_cls``,
    a pytree of them (checked leaf by leaf at ``init``) or a callable ``params -> pytree``."""
    if value is None or callable(value) or isinstance(value, (dims_cls, dict, list, tuple)):
        return
    raise ValueError(
        f"weight_dimension_numbers must be None, a {dims_cls.__name__}, a pytree of them or a "
        f"callable, got {value!r}"
    )
