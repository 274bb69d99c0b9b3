r"""GaLore: the base optimizer runs on a low-rank projection of each weight matrix's gradient.

Zhao et al. (2024) project the gradient :math:`G` of an :math:`m \times n` weight onto the
top-``r`` singular vectors of a recent gradient, run the optimizer (Adam, usually) on the small projected
matrix, and project its output back. The state holds moments of the projection, not of the
weight, plus the projector, refreshed by an SVD every ``update_proj_gap`` steps (ALGORITHMS.md §9).

On a device mesh the state is laid out along the parameter's axes (see
:meth:`ScaleByGaloreState.state_shardings`) and keeps that layout from step to step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Params,
    Parts,
    PyTree,
    ScalarOrSchedule,
    _call_update,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    cond,
    named_optimizer,
    transformation,
)
from gradchain.core.matrices import (
    MatrixView,
    check_dimension_numbers,
    entries_per_leaf,
    matrix_view,
)
from gradchain.core.numerics import (
    compute_dtype,
    explicit_sharding,
    grouped_sharding,
    init_count,
    keep_layout,
    safe_increment,
    zeros_along,
)
from gradchain.scale_out.sharding import derive_shardings
from gradchain.transforms.adaptive import scale_by_adam
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "GaLoreDimensionNumbers",
    "GaLoreState",
    "galore",
    "scale_by_galore",
]

_SIDES = ("larger", "smaller")


class GaLoreDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix GaLore projects (as ``optax.contrib``'s).

    The tensor is viewed as ``(prod(reduction_axis), prod(output_axis))``: for attention weights
    ``(embed, heads, head_dim)``, ``GaLoreDimensionNumbers(0, (1, 2))``. Axes in neither are batch
    axes, each slice projected on its own (a stack of scanned layers ``(layers, d_in, d_out)``:
    ``GaLoreDimensionNumbers(1, 2)``); optax requires every axis to be assigned instead.
    """

    reduction_axis: Any = 0
    output_axis: Any = 1


def _is_dims_leaf(x) -> bool:
    return x is None or isinstance(x, GaLoreDimensionNumbers)


def _respec(sharding, *axes):
    """The sharding of a ``(batch, rows, cols)`` array laid out as ``sharding``, with the spec
    entries of the given axes in order (None: not sharded); None stays None."""
    if sharding is None:
        return None
    spec = tuple(sharding.spec) + (None,) * (3 - len(sharding.spec))
    entries = [None if a is None else spec[a] for a in axes]
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*entries))


@dataclasses.dataclass(frozen=True)
class _Projection:
    r"""How one leaf is projected: its matrix view, the side reduced and the effective rank.

    ``left``: :math:`P \in R^{m \times r}`, :math:`R = P^\top G` (rows reduced);
    otherwise :math:`P \in R^{n \times r}`, :math:`R = G P` (columns reduced).
    """

    view: MatrixView
    left: bool
    rank: int

    def _batched(self, shape):
        return self.view.batch_shape + shape

    @property
    def projector_shape(self):
        return self._batched(((self.view.rows if self.left else self.view.cols), self.rank))

    @property
    def low_rank_shape(self):
        v = self.view
        return self._batched((self.rank, v.cols) if self.left else (v.rows, self.rank))

    def project(self, g, projector):
        """The low-rank gradient ``R`` of the leaf ``g`` (with the view's batch axes in front)."""
        mats = self.view.to_matrices(g)
        p = projector.reshape((self.view.batch,) + projector.shape[-2:])
        # On Explicit mesh axes a contraction over a sharded axis must be told its result's
        # layout: the kept axis stays sharded, the rank axis is replicated.
        typed = explicit_sharding(mats)
        if self.left:
            layout = _respec(typed, 0, None, 2)
            low = jnp.einsum("bmr,bmn->brn", p, mats, out_sharding=layout)
        else:
            layout = _respec(typed, 0, 1, None)
            low = jnp.einsum("bmn,bnr->bmr", mats, p, out_sharding=layout)
        return low.reshape(self.low_rank_shape)

    def project_back(self, low, projector):
        p = projector.reshape((self.view.batch,) + projector.shape[-2:])
        low = low.reshape((self.view.batch,) + low.shape[-2:])
        if self.left:
            full = jnp.einsum("bmr,brn->bmn", p, low)
        else:
            full = jnp.einsum("bmr,bnr->bmn", low, p)
        return self.view.from_matrices(full)

    @property
    def axis_groups(self):
        """Which axes of the leaf each axis of the projector and of the low-rank matrices runs
        along (a group of axes merged in order; ``()`` for the rank), for their sharding."""
        v = self.view
        batch = tuple((a,) for a in v.batch_axes)
        reduced, kept = (v.row_axes, v.col_axes) if self.left else (v.col_axes, v.row_axes)
        low_rank = ((), kept) if self.left else (kept, ())
        return batch + (reduced, ()), batch + low_rank

    def fresh_projector(self, g):
        """The top-``rank`` singular vectors of the leaf ``g`` on the reduced side, by an SVD in
        float32 or better (as the reference and optax)."""
        mats = self.view.to_matrices(g)
        mats = mats.astype(jnp.promote_types(mats.dtype, jnp.float32))
        typed = explicit_sharding(mats)
        if typed is not None:  # the SVD needs whole matrices; on Auto axes XLA gathers them
            mats = jax.sharding.reshard(mats, _respec(typed, 0, None, None))
        u, _, vh = jnp.linalg.svd(mats, full_matrices=False)
        p = u[:, :, : self.rank] if self.left else jnp.swapaxes(vh[:, : self.rank, :], 1, 2)
        return p.reshape(self.projector_shape)


def _plan(tree, spec, rank, projected_dim, transform_name):
    """A :class:`_Projection` or None (left to the base optimizer unprojected) for each leaf.

    ``spec`` is the resolved ``weight_dimension_numbers``. A leaf given dimension numbers in a
    pytree is *forced*: when it cannot be projected the error names its path.
    """
    if callable(spec) and not isinstance(spec, GaLoreDimensionNumbers):
        spec = spec(tree)
    forced = spec is not None and not isinstance(spec, GaLoreDimensionNumbers)
    if forced:
        try:
            dims_leaves = entries_per_leaf(spec, tree, _is_dims_leaf)
        except ValueError as e:
            raise ValueError(f"{transform_name}: weight_dimension_numbers: {e}") from None
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    plan: list[Any] = []
    for i, (path, leaf) in enumerate(leaves):
        where = f"{transform_name}: parameter {jax.tree_util.keystr(path) or '<root>'}"
        if leaf is None:
            plan.append(None)
            continue
        if forced:
            dims = dims_leaves[i]
        elif spec is None:
            dims = GaLoreDimensionNumbers() if jnp.ndim(leaf) == 2 else None
        else:
            dims = spec if jnp.ndim(leaf) >= 2 else None
        if dims is None:
            plan.append(None)
            continue
        if not isinstance(dims, GaLoreDimensionNumbers):
            raise ValueError(f"{where}: expected GaLoreDimensionNumbers or None, got {dims!r}")
        if jnp.ndim(leaf) < 2:
            raise ValueError(
                f"{where} has shape {jnp.shape(leaf)}: GaLore projects matrices, and this leaf "
                f"has no two axes to form one. Give it None in weight_dimension_numbers (it then "
                f"goes to the base optimizer unprojected)"
            )
        view = matrix_view(jnp.shape(leaf), dims.reduction_axis, dims.output_axis, where)
        m, n = view.rows, view.cols
        # optax reduces the larger side (left when m >= n); the reference the smaller one.
        left = m >= n if projected_dim == "larger" else m < n
        reduced = m if left else n
        r = min(rank, m, n)
        if r >= reduced:
            if forced:
                raise ValueError(
                    f"{where} is a {m}x{n} matrix: projecting its {projected_dim} side "
                    f"({reduced}) to rank {rank} would not shrink it. Lower rank below {reduced}, "
                    f"or give it None in weight_dimension_numbers (unprojected)"
                )
            plan.append(None)
            continue
        plan.append(_Projection(view, left, r))
    return plan


@dataclasses.dataclass(frozen=True)
class ScaleByGaloreState:
    """``count``: updates done; ``projector``: per leaf, the projector (a ``(1, 1)`` zero
    placeholder for a leaf the base optimizer sees unprojected, where optax keeps an empty
    ``(0, 0)`` one that orbax refuses to save); ``base_optimizer_state``: the base optimizer's state, shaped
    like the low-rank gradients; ``hyperparams``: scale. ``layout`` is static (part of the tree
    structure, not an array): per parameter leaf, which of its axes each axis of the projector
    and of the low-rank matrices runs along (see :meth:`state_shardings`)."""

    count: jax.Array
    base_optimizer_state: Any
    projector: Any
    hyperparams: dict | None = None
    layout: tuple = ()

    def state_shardings(self, param_treedef, param_infos, replicated):
        """This state's layout on a mesh, for :func:`gradchain.state_shardings` (the protocol is
        in ``gradchain.sharding``): the projector's and the low-rank matrices' axes take the
        sharding of the parameter axes they run along (``numerics.grouped_sharding``), the rank
        axis is replicated, and the base optimizer's state follows the low-rank matrices by the
        usual rules, as if they were its parameters."""
        is_none = lambda x: x is None
        per_param = param_treedef.flatten_up_to(self.projector)
        counts = [len(jax.tree.leaves(sub, is_leaf=is_none)) for sub in per_param]
        # one layout entry per leaf this transformation saw (none for a masked-out parameter)
        layout = iter(self.layout if len(self.layout) == sum(counts) else [None] * sum(counts))
        projectors, virtual = [], []
        for sub, n, (shape, sharding) in zip(per_param, counts, param_infos):
            groups = [next(layout) for _ in range(n)]
            if sub is None or n != 1 or groups[0] is None:
                projectors.append(jax.tree.map(lambda _: replicated, sub))
                virtual.append((shape, sharding))
                continue

            def along(axes):
                got = grouped_sharding(sharding, len(shape), axes)
                return replicated if got is None else got

            projector_axes, low_rank_axes = groups[0]
            rank = sub.shape[-1]
            low_shape = tuple(math.prod(shape[a] for a in g) if g else rank for g in low_rank_axes)
            projectors.append(along(projector_axes))
            virtual.append((low_shape, along(low_rank_axes)))
        return dataclasses.replace(
            self,
            count=replicated,
            base_optimizer_state=derive_shardings(
                self.base_optimizer_state, param_treedef, virtual, replicated
            ),
            projector=param_treedef.unflatten(projectors),
            hyperparams=jax.tree.map(lambda _: replicated, self.hyperparams),
        )


# ``layout`` is static metadata, so that gc.state_shardings can read it from
# jax.eval_shape(tx.init, ...); the other fields are the state's arrays.
jax.tree_util.register_dataclass(
    ScaleByGaloreState,
    data_fields=["count", "base_optimizer_state", "projector", "hyperparams"],
    meta_fields=["layout"],
)
ScaleByGaloreState._gradchain_state = True  # type: ignore[attr-defined]  # read by name, as every @state_class
# gradchain's additions to optax's GaLoreState (see gradchain.core.base): ``hyperparams`` is
# kept on request; ``layout``, static metadata with no array, is always kept.
ScaleByGaloreState._gradchain_extras = ("hyperparams", "layout")  # type: ignore[attr-defined]


@transformation("scale_by_galore", hyperparams=("scale",))
class ScaleByGalore(GradientTransformation):
    r"""Runs ``base_optimizer`` on low-rank projections of the matrices' gradients.

    For a leaf viewed as :math:`G \in R^{m\times n}` and :math:`k` the 0-based update number,
    every ``update_proj_gap`` updates (:math:`k \bmod T = 0`, so the first update too) the
    projector is refreshed from the SVD :math:`G_k = U S V^\top`; then

    .. math::
        R_k = P^\top G_k \;\; (P = U_{:, :r}) \quad\text{or}\quad R_k = G_k P \;\; (P = V_{:, :r}),
        \qquad N_k = \mathrm{base}(R_k), \qquad
        u_k = \alpha\, P N_k \;\text{or}\; \alpha\, N_k P^\top

    with :math:`r = \min(\text{rank}, m, n)` and :math:`\alpha` = ``scale``. The base optimizer's
    moments are kept, not rotated, when the projector changes (as the reference).

    Which side is reduced (ALGORITHMS.md §15 row 19): ``projected_dim="larger"`` (default, optax)
    reduces the larger dimension, left when :math:`m \ge n`: state :math:`r \times \min(m, n)`.
    ``projected_dim="smaller"`` (the paper and ``galore-torch``'s ``proj_type="std"``) reduces
    the smaller one, right when :math:`m \ge n`: state :math:`r \times \max(m, n)`.

    Which leaves: by default every 2-D leaf; ``weight_dimension_numbers`` views others as matrices
    (see :class:`GaLoreDimensionNumbers`). Leaves that cannot be projected go to
    ``base_optimizer`` unprojected: leaves with fewer than two axes, and matrices whose reduced
    side is not larger than the rank, whose projection would not shrink anything (optax projects
    a square matrix with rank >= its size by a full rotation instead). A leaf given dimension
    numbers explicitly in a pytree (or by a callable) is projected or raises a ``ValueError``
    naming its path at ``init``.

    Args:
      rank: the target rank :math:`r \ge 1`, default 128.
      update_proj_gap: :math:`T \ge 1`, default 200.
      scale: :math:`\alpha \ge 0` (a float or a schedule), default 1. The paper uses 0.25.
      base_optimizer: a transformation that needs no params (it runs on projections), default
        ``scale_by_adam()``. Put weight decay after this transformation, in full space, as
        :func:`galore` does.
      weight_dimension_numbers: None, one :class:`GaLoreDimensionNumbers` for every leaf with
        two axes or more, a pytree of them (None: unprojected), or a callable ``params -> pytree``.
      projected_dim: ``"larger"`` or ``"smaller"``, see above.

    The projector and the projections keep the parameter's dtype, as optax (float32 under
    ``with_float32_state``); the SVD that finds the projector runs in float32 or better.

    On a device mesh, for an :math:`m\times n` weight sharded as ``P(a, b)`` and a left
    projector: :math:`P` (:math:`m\times r`) is sharded ``P(a, None)``, the base optimizer's
    moments (:math:`r\times n`) ``P(None, b)``, and scalars are replicated; in general each
    axis follows the weight's axes it runs along and the rank axis is replicated
    (``gc.state_shardings`` reports it, ``init`` places it, eagerly and under ``jax.jit``, on
    Auto and Explicit mesh axes).
    ``update`` returns every state leaf laid out as it came in, so a compiled step accepts the
    state it produced. :math:`P^\top G` and :math:`P N` are computed shard by shard (an
    all-reduce of :math:`r \times n/|b|` partial sums); the state never moves whole between
    devices. The SVD needs the whole matrix: on refresh steps each projected gradient is
    gathered onto every device of its mesh, by design. Reference: Zhao et al., "GaLore:
    Memory-Efficient LLM Training by Gradient Low-Rank Projection" (2024). Same as
    ``optax.contrib.scale_by_galore`` with the default ``projected_dim``.
    """

    complex_params = False

    rank: int = 128
    update_proj_gap: int = 200
    scale: ScalarOrSchedule = 1.0
    base_optimizer: Any = None
    weight_dimension_numbers: Any = None
    _: dataclasses.KW_ONLY
    projected_dim: str = "larger"

    def __post_init__(self):
        for name in ("rank", "update_proj_gap"):
            check_int(name, getattr(self, name), low=1, what="a positive int")
        check_number("scale", self.scale, low=0.0)
        if self.base_optimizer is None:
            object.__setattr__(self, "base_optimizer", scale_by_adam())
        if not (hasattr(self.base_optimizer, "init") and hasattr(self.base_optimizer, "update")):
            raise ValueError(
                f"base_optimizer must be a gradient transformation, got {self.base_optimizer!r}"
            )
        if self.projected_dim not in _SIDES:
            raise ValueError(f"projected_dim must be one of {_SIDES}, got {self.projected_dim!r}")
        check_dimension_numbers(self.weight_dimension_numbers, GaLoreDimensionNumbers)

    def _plan(self, tree):
        return _plan(tree, self.weight_dimension_numbers, self.rank, self.projected_dim, self.name)

    def init(self, params):
        check_floating(params, self.name)
        leaves, treedef = jax.tree.flatten(params, is_leaf=lambda x: x is None)
        plan = self._plan(params)

        def zeros(p, proj):
            """(projector, low-rank matrix) of zeros, laid out as ``state_shardings`` says."""
            if proj is None:
                # Every leaf has a projector, so optax's key paths; one entry, not optax's
                # empty (0, 0), which orbax refuses to save.
                placeholder = None if p is None else jnp.zeros((1, 1), compute_dtype(p.dtype))
                return placeholder, p
            shapes = (proj.projector_shape, proj.low_rank_shape)
            dtype = compute_dtype(p.dtype)
            return tuple(zeros_along(p, g, s, dtype) for g, s in zip(proj.axis_groups, shapes))

        pairs = [zeros(p, q) for p, q in zip(leaves, plan)]
        projectors, low_rank = [a for a, _ in pairs], [b for _, b in pairs]
        return ScaleByGaloreState(
            count=init_count(),
            base_optimizer_state=self.base_optimizer.init(treedef.unflatten(low_rank)),
            projector=treedef.unflatten(projectors),
            hyperparams=self.init_hyperparams(),
            layout=tuple(
                None if q is None else q.axis_groups for p, q in zip(leaves, plan) if p is not None
            ),
        )

    def kept_extras(self):
        # ``layout`` holds no array: it is in no key path, and state_shardings reads it.
        return super().kept_extras() | {"layout"}

    def update(self, updates, state, params=None, **extra_args):
        leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)

        # The projector tree holds None for None leaves: compare structures only.
        def as_leaf(tree):
            return jax.tree.map(lambda _: 0, tree, is_leaf=lambda x: x is None)

        check_tree_match(as_leaf(updates), as_leaf(state.projector), "updates", "state.projector")
        projectors = treedef.flatten_up_to(state.projector)
        hp = self.current_hyperparams(state)
        plan = self._plan(updates)
        refresh = state.count % self.update_proj_gap == 0

        low, new_projectors = [], []
        for g, p, proj in zip(leaves, projectors, plan):
            if proj is None:
                low.append(g)
                new_projectors.append(p)
                continue
            g32 = g.astype(compute_dtype(g.dtype))
            # The SVD's result is laid out as XLA likes: keep the projector's own layout (in
            # the branch too, where both branches must have one type on Explicit axes).
            fresh = cond(
                refresh,
                lambda: keep_layout(proj.fresh_projector(g32).astype(p.dtype), p),
                lambda: p,
            )
            p = keep_layout(fresh, p)
            low.append(proj.project(g32, p.astype(g32.dtype)))
            new_projectors.append(p)

        # The base optimizer gets no params: the low-rank leaves have no parameter to match.
        low_updates, base_state = _call_update(
            self.base_optimizer,
            treedef.unflatten(low),
            state.base_optimizer_state,
            None,
            extra_args,
        )
        base_state = keep_layout(base_state, state.base_optimizer_state)
        out = []
        for g, u, p, proj in zip(leaves, treedef.flatten_up_to(low_updates), new_projectors, plan):
            if proj is None:
                out.append(u)
                continue
            full = proj.project_back(u.astype(p.dtype), p)
            out.append(keep_layout((hp["scale"].astype(full.dtype) * full).astype(g.dtype), g))
        return treedef.unflatten(out), ScaleByGaloreState(
            count=safe_increment(state.count),
            base_optimizer_state=base_state,
            projector=treedef.unflatten(new_projectors),
            hyperparams=hp,
            layout=state.layout,
        )


scale_by_galore = ScaleByGalore


@named_optimizer
def galore(
    learning_rate: ScalarOrSchedule,
    rank: int = 128,
    update_proj_gap: int = 200,
    scale: ScalarOrSchedule = 1.0,
    base_optimizer: GradientTransformation | None = None,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    weight_dimension_numbers: PyTree | Callable[[Params], PyTree] | None = None,
    *,
    projected_dim: str = "larger",
) -> Parts:
    r"""GaLore: ``chain(scale_by_galore(...), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``.

    .. math::
        p_t = p_{t-1} - \eta\,\big(\alpha\, P\, \mathrm{base}(P^\top G_t) + \lambda p_{t-1}\big)

    (for a left projector; see :func:`scale_by_galore`). Arguments and defaults as
    ``optax.contrib.galore``, plus ``projected_dim`` (``"smaller"`` for the paper's side).
    The reference ``GaLoreAdamW`` differs in its Adam (epsilon before bias correction, eps 1e-6)
    and in decaying the already-updated weights by :math:`\eta\lambda` (ALGORITHMS.md §9.1).
    Memory: for an :math:`m\times n` matrix with ``larger`` and the default Adam,
    :math:`2 r \min(m,n)` moment entries plus an :math:`\max(m,n)\times r` projector.
    """
    return (
        scale_by_galore(
            rank,
            update_proj_gap,
            scale,
            base_optimizer,
            weight_dimension_numbers,
            projected_dim=projected_dim,
        ),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )


# optax names of the same states.
GaLoreState = ScaleByGaloreState
