"""Optimizer state on a device mesh: where each state leaf lives, ZeRO-1, and per-device bytes.

A gradchain state is a pytree of ``jax.Array`` s, so JAX's SPMD machinery (``Mesh``,
``NamedSharding``, ``jax.jit``) shards it like any other array. What an optimizer adds is the
*layout* of its state relative to the parameters, and this module states it as rules:

* a leaf shaped like its parameter (Adam's moments, a momentum buffer) has the parameter's
  sharding;
* a statistic with one axis of its parameter reduced away (Adafactor's row and column factors,
  with or without ``keepdims``) has the parameter's sharding of the axes it kept. Where the
  shape cannot tell which axis was reduced (a square matrix), a field named ``*row*`` is a row
  statistic (it kept the earlier axis), ``*col*`` a column one; otherwise the positions in doubt
  are replicated;
* the codes and scales of an 8-bit moment are split by blocks over the mesh axes of the
  parameter's leading axis when its shards hold whole blocks (``block_axis_sharding``), and
  replicated otherwise;
* a state whose leaves' shapes do not tell their axes (GaLore's: a projector ``m x r`` and
  moments ``r x n`` of an ``m x n`` parameter) lays itself out through a ``state_shardings``
  method: each axis that runs along axes of the parameter takes their sharding
  (``numerics.grouped_sharding``), a rank axis is replicated, and the moments of the projected
  matrices follow those matrices by the rules here;
* everything else (step counts, live hyperparameters, ``(1,)`` placeholders) is replicated.

A leaf is matched to its parameter through the state's structure: any subtree of the state that
has the parameters' tree structure (``mu``, ``nu``, ``trace``, ``v_row``...) is read leaf by leaf
against the parameters. :func:`state_shardings` and :func:`abstract_state` apply the rules to
``jax.eval_shape(tx.init, params)``, for ``jax.jit(..., out_shardings=...)`` and for restoring a
checkpoint straight into its sharded layout.

``init`` follows the rules by itself when it builds its state with
``numerics.zeros_like_param`` (moments) and ``numerics.zeros_like_reduced`` (factored
statistics): eagerly, from a ``ShapeDtypeStruct`` and under ``jax.jit``. Scalars are created
replicated over the mesh inside ``with jax.set_mesh(mesh)``; outside it they are uncommitted
single-device arrays, which ``jax.jit`` replicates at the first step. A jitted ``update`` is
elementwise per leaf except for global reductions (global norms, means, Prodigy's and
D-Adaptation's estimates, Sophia's clipping statistics), which XLA partitions into local sums
and an all-reduce, so it keeps every leaf's sharding and never gathers a moment. GaLore keeps
its state's layout through its SVD (``numerics.keep_layout``) and never gathers its state,
but the SVD gathers each projected gradient matrix, by design; XLA gathers the matrices of
Muon's Newton-Schulz iteration. Under ``shard_map`` those reductions are local to a shard:
there, a global norm needs an explicit ``psum``.

:class:`zero1` shards the optimizer state of *replicated* (data-parallel) parameters along the
data-parallel mesh axis: each device keeps and updates ``1/n`` of every moment and the updates
are all-gathered once per parameter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradchain.core.base import (
    GradientTransformation,
    OptState,
    Params,
    PyTree,
    _call_update,
    _is_state,
    check_bool,
    check_params_match,
    transformation,
)
from gradchain.core.numerics import named_sharding, normalized, put, reduced_sharding
from gradchain.scale_out.flat import FlatState, Flatten
from gradchain.scale_out.quantization import QuantizedArray, block_layout

__all__ = [
    "abstract_state",
    "init_sharded",
    "per_device_bytes",
    "per_process_bytes",
    "state_shardings",
    "zero1",
]


# ---------------------------------------------------------------------------------------------
# The rules: a state leaf's sharding from its parameter's


def _padded_spec(sharding: NamedSharding, ndim: int) -> tuple:
    spec = tuple(sharding.spec)
    return spec + (None,) * (ndim - len(spec))


def _follow(shape, param_shape, param_sharding, replicated, field=""):
    """The sharding of a state leaf of ``shape`` that belongs to a parameter of ``param_shape``.

    ``field`` names the state field holding the leaf; it only matters for a statistic whose
    shape does not say which axis was reduced (see :func:`_reduced_axis`).
    """
    shape, param_shape = tuple(shape), tuple(param_shape)
    if param_sharding is None or not shape:
        return replicated
    if shape == param_shape:
        return param_sharding
    if not isinstance(param_sharding, NamedSharding):
        return replicated
    if len(shape) == len(param_shape):
        # keepdims statistics: reduced axes have size 1 and cannot stay sharded
        if not all(s in (1, n) for s, n in zip(shape, param_shape)):
            return replicated
        spec = _padded_spec(param_sharding, len(param_shape))
        entries = [e if s == n else None for e, s, n in zip(spec, shape, param_shape)]
        return named_sharding(param_sharding.mesh, *entries, ndim=len(shape))
    if len(shape) == len(param_shape) - 1:
        axes = [
            k for k in range(len(param_shape)) if param_shape[:k] + param_shape[k + 1 :] == shape
        ]
        if axes:
            return _reduced_axis(param_sharding, len(param_shape), axes, field)
    return replicated


def _reduced_axis(param_sharding, ndim, axes, field):
    """The sharding of a statistic that reduced one of ``axes`` of its parameter.

    Several axes qualify when neighbouring axes have equal sizes (a square matrix's row and
    column statistics have the same shape). The field name then decides, by the usual meaning:
    a *row* statistic (``v_row``: one value per row) keeps the earlier axes, a *col*umn one the
    later axes. Otherwise only the positions on which every candidate agrees stay sharded.
    """
    name = field.lower()
    if len(axes) > 1 and ("row" in name) != ("col" in name):
        axes = [max(axes)] if "row" in name else [min(axes)]
    specs = [tuple(reduced_sharding(param_sharding, ndim, k).spec) for k in axes]
    entries = [c[0] if all(x == c[0] for x in c) else None for c in zip(*specs)]
    return named_sharding(param_sharding.mesh, *entries, ndim=ndim - 1)


def _blocks(q: QuantizedArray, param_sharding, replicated) -> QuantizedArray:
    """An 8-bit moment's codes and scales, split by blocks (``quantization.block_layout``)."""
    if not isinstance(param_sharding, NamedSharding):
        return dataclasses.replace(q, codes=replicated, absmax=replicated)
    # A tree of shardings shaped like the moment: its array fields hold shardings here.
    codes: Any
    absmax: Any
    codes, absmax = block_layout(q.shape, q.block_size, param_sharding)
    return dataclasses.replace(q, codes=codes, absmax=absmax)


def _lays_itself_out(node) -> bool:
    """A state whose leaves' layout is not told by their shapes (GaLore's projector and
    projected moments) gives it itself, through a ``state_shardings`` method."""
    return _is_state(node) and hasattr(node, "state_shardings")


def _is_leaf_node(node) -> bool:
    return node is None or jax.tree_util.treedef_is_leaf(jax.tree.structure(node))


def _key_name(key, parent: str) -> str:
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.DictKey) and isinstance(key.key, str):
        return key.key
    return parent


def _field_name(path, parent: str) -> str:
    for key in path:
        parent = _key_name(key, parent)
    return parent


def derive_shardings(
    state: OptState,
    param_treedef: jax.tree_util.PyTreeDef,
    param_infos: Sequence[tuple[tuple[int, ...], jax.sharding.Sharding | None]],
    replicated: jax.sharding.Sharding,
) -> PyTree:
    """The sharding of every leaf of ``state`` by the rules in the module docstring.

    ``param_infos`` lists ``(shape, sharding)`` per parameter leaf, in ``param_treedef`` order;
    ``state``'s leaves need only a ``shape`` (arrays, tracers or ``ShapeDtypeStruct`` s). Specs
    come in the form a jitted step returns them (``numerics.named_sharding``).
    """

    def one_param(sub, field, shape, sharding):
        if isinstance(sub, QuantizedArray):
            return _blocks(sub, sharding, replicated)

        def leaf(path, x):
            if _lays_itself_out(x):
                return x.state_shardings(jax.tree.structure(0), [(shape, sharding)], replicated)
            return _follow(x.shape, shape, sharding, replicated, _field_name(path, field))

        return jax.tree_util.tree_map_with_path(leaf, sub, is_leaf=_lays_itself_out)

    def visit(node, field):
        if _lays_itself_out(node):
            return node.state_shardings(param_treedef, param_infos, replicated)
        try:
            per_param = param_treedef.flatten_up_to(node)
        except (ValueError, TypeError):
            per_param = None
        if per_param is not None:
            return param_treedef.unflatten(
                [
                    one_param(sub, field, shape, sharding)
                    for sub, (shape, sharding) in zip(per_param, param_infos)
                ]
            )
        if node is None or not jax.tree.leaves(node):
            return node  # nothing to lay out: an EmptyState stays one, with no leaf
        if _is_leaf_node(node):
            return replicated
        children, treedef = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: x is not node
        )
        return treedef.unflatten([visit(c, _key_name(path[-1], field)) for path, c in children])

    return jax.tree.map(lambda s, x: normalized(s, len(x.shape)), visit(state, ""), state)


def _placement(p):
    """Where a parameter lives: its sharding, committed or not; None for a bare shape."""
    if isinstance(p, jax.core.Tracer):
        return None
    sharding = getattr(p, "sharding", None)
    return sharding if isinstance(sharding, jax.sharding.Sharding) else None


def _replicated(param_shardings, mesh):
    if mesh is not None:
        return NamedSharding(mesh, PartitionSpec())
    for s in param_shardings:
        if isinstance(s, NamedSharding):
            return NamedSharding(s.mesh, PartitionSpec())
    distinct = set(param_shardings)
    if len(distinct) == 1 and None not in distinct and next(iter(distinct)).is_fully_replicated:
        return next(iter(distinct))
    raise ValueError(
        "state_shardings: the parameters carry no NamedSharding to take a mesh from; pass "
        "mesh=... (the mesh the state should be replicated over)"
    )


def _param_infos(params):
    leaves, treedef = jax.tree.flatten(params)
    for i, p in enumerate(leaves):
        if not hasattr(p, "shape"):
            raise TypeError(
                f"state_shardings: parameter leaf {i} is a {type(p).__name__}; expected arrays "
                f"or jax.ShapeDtypeStruct (with sharding=... for sharded parameters)"
            )
    return treedef, [(tuple(p.shape), _placement(p)) for p in leaves]


def _layout(tx, params, mesh, memory_kind=None):
    """``(jax.eval_shape(tx.init, params), the shardings of its leaves)``, the shardings in
    ``memory_kind`` (default: device memory, or host memory for an offloading ``zero1``)."""
    if isinstance(tx, Zero1):
        memory_kind = memory_kind or tx.memory_kind
        params = tx.sharded_params(params)
    shapes = jax.eval_shape(tx.init, params)
    treedef, infos = _param_infos(params)
    replicated = _replicated([s for _, s in infos], mesh)
    if isinstance(tx, Flatten):
        # The inner state mirrors the flat buffers: a shared buffer (small leaves of any
        # sharding, concatenated) is replicated, a leaf kept whole keeps its own sharding.
        flat_treedef, flat_infos = _param_infos(tx.layout(params).abstract(params))
        inner = derive_shardings(shapes.inner, flat_treedef, flat_infos, replicated)
        shardings = FlatState(inner=inner)
    else:
        shardings = derive_shardings(shapes, treedef, infos, replicated)
    return shapes, _in_memory(shardings, memory_kind)


def _in_memory(shardings, memory_kind: str | None):
    if memory_kind is None:
        return shardings
    return jax.tree.map(lambda s: s.with_memory_kind(memory_kind), shardings)


def state_shardings(
    tx: GradientTransformation,
    params: Params,
    mesh: Mesh | None = None,
    *,
    memory_kind: str | None = None,
) -> PyTree:
    """The sharding of every leaf of ``tx.init(params)``, derived from the parameters' shardings.

    Args:
      tx: any gradient transformation (a :func:`zero1` one lays its state out along its data
        axis).
      params: the parameters, as arrays or as ``jax.ShapeDtypeStruct`` with ``sharding=...``
        (nothing is computed or allocated). A leaf without a sharding counts as replicated.
      mesh: the mesh that replicated leaves (counts, hyperparameters) live on. Default: the mesh
        of the parameters' ``NamedSharding`` s.
      memory_kind: where the state lives, one of ``jax.devices()[0].addressable_memories()``
        kinds: ``"pinned_host"`` keeps it in host memory (ZeRO-Offload; a step then moves it
        through the device, as ``zero1(..., offload=True)`` does). Default: each sharding's
        own (device memory).

    Returns:
      A pytree of ``jax.sharding.Sharding`` with the structure of the state, for
      ``jax.jit(step, out_shardings=...)``, ``jax.device_put`` or a checkpoint restore::

          shardings = gc.state_shardings(tx, params)
          state = jax.jit(tx.init, out_shardings=shardings)(params)

    The rules are in the module docstring: moments follow their parameter, reduced statistics
    follow the axes they kept, the rest is replicated. Specs come in the form a jitted step
    returns (without trailing ``None`` s on Auto mesh axes, one entry per array axis on
    Explicit ones), so the shardings equal, as jit cache keys, the step's. Call it outside
    ``jax.jit``: inside a trace the parameters' shardings are not known.
    """
    return _layout(tx, params, mesh, memory_kind)[1]


def init_sharded(
    tx: GradientTransformation,
    params: Params,
    mesh: Mesh | None = None,
    *,
    memory_kind: str | None = None,
) -> OptState:
    """``tx.init(params)`` computed by ``jax.jit`` straight into :func:`state_shardings`.

    The one line it stands for::

        jax.jit(tx.init, out_shardings=gc.state_shardings(tx, params))(params)

    Every leaf comes out exactly as asked, also where ``jax.jit(tx.init)`` alone lets XLA
    choose: two parameters of one shape but different shardings get moments laid out like
    each (XLA would merge their equal zeros into one array of one layout). Nothing is built
    on one device first, so this is the way to initialize a state too large for one device,
    and, on every process of a ``jax.distributed`` run, a state spread across processes.
    Arguments as :func:`state_shardings`.
    """
    shardings = state_shardings(tx, params, mesh, memory_kind=memory_kind)
    return jax.jit(tx.init, out_shardings=shardings)(params)


def abstract_state(
    tx: GradientTransformation,
    params: Params,
    mesh: Mesh | None = None,
    *,
    memory_kind: str | None = None,
) -> PyTree:
    """``tx.init(params)`` as ``jax.ShapeDtypeStruct`` s carrying the state's shardings.

    The restore target of a sharded checkpoint: for example with orbax,
    ``checkpointer.restore(path, gc.abstract_state(tx, abstract_params))`` reads every leaf
    directly into its shards. Arguments as :func:`state_shardings`.
    """
    shapes, shardings = _layout(tx, params, mesh, memory_kind)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )


def _shard_bytes(leaf, memory_kind):
    """``{device: bytes}`` of one array: measured on this process's shards, read from the
    sharding's index map for the devices of other processes (and for a ``ShapeDtypeStruct``)."""
    sharding = leaf.sharding
    if memory_kind is not None and sharding.memory_kind != memory_kind:
        return {}
    itemsize = jnp.dtype(leaf.dtype).itemsize
    out = {}
    for device, index in sharding.devices_indices_map(tuple(leaf.shape)).items():
        shape = [len(range(*i.indices(n))) for i, n in zip(index, leaf.shape)]
        out[device] = math.prod(shape) * itemsize
    for shard in getattr(leaf, "addressable_shards", ()):
        out[shard.device] = shard.data.nbytes
    return out


def per_device_bytes(tree: PyTree, *, memory_kind: str | None = None) -> dict[jax.Device, int]:
    """Bytes of ``tree``'s arrays held by each device, for every device they span.

    The devices of this process are measured on their shards; under ``jax.distributed`` the
    devices of the other processes are included, read from the arrays' shardings (every
    process sees the same global picture). Leaves may also be ``ShapeDtypeStruct`` s with a
    sharding (:func:`abstract_state`): the bytes a state would take, before allocating it.

    Args:
      tree: a pytree of ``jax.Array`` s or sharded ``ShapeDtypeStruct`` s.
      memory_kind: count only the leaves in this memory (``"device"``, ``"pinned_host"``);
        default every leaf.
    """
    out: dict = {}
    for leaf in jax.tree.leaves(tree):
        for device, n in _shard_bytes(leaf, memory_kind).items():
            out[device] = out.get(device, 0) + n
    return out


def per_process_bytes(tree: PyTree, *, memory_kind: str | None = None) -> dict[int, int]:
    """Bytes of ``tree``'s arrays held by each process (``jax.process_index``), summed over its
    devices: :func:`per_device_bytes` grouped by ``device.process_index``."""
    out: dict = {}
    for device, n in per_device_bytes(tree, memory_kind=memory_kind).items():
        out[device.process_index] = out.get(device.process_index, 0) + n
    return out


# ---------------------------------------------------------------------------------------------
# ZeRO-1


def _axis_names(entry) -> tuple:
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


def _zero1_spec(spec: tuple, shape: tuple, mesh: Mesh, axes: tuple) -> PartitionSpec:
    """``spec`` with ``axes`` added to the dimension with the most elements per device.

    Only dimensions that stay evenly divisible qualify; a leaf with none (a scalar, an odd-sized
    bias) keeps its spec and so stays replicated along ``axes``.
    """
    spec = tuple(spec) + (None,) * (len(shape) - len(tuple(spec)))
    if any(a in _axis_names(e) for e in spec for a in axes):
        return normalized(NamedSharding(mesh, PartitionSpec(*spec)), len(shape)).spec
    n = math.prod(mesh.shape[a] for a in axes)
    best, best_local = None, 0
    for d, size in enumerate(shape):
        have = math.prod(mesh.shape[a] for a in _axis_names(spec[d]))
        if size % (have * n) == 0 and size // have > best_local:
            best, best_local = d, size // have
    if best is None:
        return normalized(NamedSharding(mesh, PartitionSpec(*spec)), len(shape)).spec
    names = _axis_names(spec[best]) + axes
    spec = spec[:best] + (names[0] if len(names) == 1 else names,) + spec[best + 1 :]
    return normalized(NamedSharding(mesh, PartitionSpec(*spec)), len(shape)).spec


def _explicit_axes(mesh: Mesh) -> set:
    # Explicit axes (sharding in types) arrived in jax 0.6; older meshes have none.
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    types = getattr(mesh, "axis_types", None) or ()
    return {n for n, t in zip(mesh.axis_names, types) if explicit is not None and t == explicit}


def _typed_spec(x, mesh: Mesh) -> tuple:
    """The spec ``x``'s type carries on ``mesh``'s Explicit axes; Auto axes are not typed."""
    explicit = _explicit_axes(mesh)
    if not explicit:
        return ()
    if isinstance(x, jax.ShapeDtypeStruct):
        sharding = x.sharding
    else:
        try:
            sharding = jax.typeof(x).sharding
        except (TypeError, AttributeError):
            sharding = None
    if not isinstance(sharding, NamedSharding):
        return ()
    kept = []
    for entry in sharding.spec:
        names = tuple(a for a in _axis_names(entry) if a in explicit)
        kept.append(None if not names else names[0] if len(names) == 1 else names)
    return tuple(kept)


def _place(tree, shardings):
    """``tree`` laid out as ``shardings``: a constraint in a trace, a transfer outside it."""

    def one(x, sharding):
        if x is None:
            return None
        if isinstance(x, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
        if not isinstance(x, jax.core.Tracer):
            return put(x, sharding)
        if sharding.memory_kind not in (None, "device"):
            return jax.device_put(x, sharding)  # to host memory: a move, not a constraint
        used = {a for e in sharding.spec for a in _axis_names(e)}
        explicit = _explicit_axes(sharding.mesh)
        if explicit and used <= explicit:
            return jax.sharding.reshard(x, sharding)
        return jax.lax.with_sharding_constraint(x, sharding)

    return jax.tree.map(one, tree, shardings, is_leaf=lambda x: x is None)


@transformation("zero1")
class Zero1(GradientTransformation):
    r"""ZeRO stage 1: the optimizer state sharded along the data-parallel mesh axis.

    In data parallelism every device holds the whole parameters, so with a plain optimizer every
    device also holds the whole optimizer state and computes the same update. ``zero1(tx, mesh,
    axis)`` keeps on each of the :math:`n` devices along ``axis`` only :math:`1/n` of every
    moment (split along the parameter's dimension with the most elements per device that
    divides evenly) and computes the update of that slice only:

    .. math:: g \to g^{(i)}, \qquad (u^{(i)}, s^{(i)}) = \mathrm{tx.update}(g^{(i)}, s^{(i)},
              p^{(i)}), \qquad u = \mathrm{all\_gather}_i\, u^{(i)}

    The gradients are sliced (XLA turns the data-parallel all-reduce followed by the slice into
    a reduce-scatter where the backend supports it), the slices update, and the update of each
    parameter is all-gathered once, so ``apply_updates`` leaves the parameters in their own
    layout. Results equal ``tx`` up to the re-association of global reductions (fp32 rounding).

    Args:
      inner: the transformation to shard (``adamw(...)``, a chain with clipping: global norms
        stay global).
      mesh: the device mesh.
      axis: the data-parallel mesh axis name (or a tuple of names) the state is split along,
        default ``"data"``.
      param_specs: the parameters' own ``PartitionSpec`` (one for all, or a pytree of them that
        is a prefix of the parameters) when they are sharded along other axes (tensor
        parallelism); the data axis is added to it. Default: read from the parameters' types
        on Explicit mesh axes, replicated on Auto axes.
      offload: keyword-only. Keep the state in pinned host memory between steps and stream it
        through the device inside the jitted step (ZeRO-Offload's placement of the optimizer
        state, with the update itself computed on the device): the moments take no device
        memory outside the step, at the price of a host-device copy of each device's slice
        per step. The arithmetic is unchanged, so the result equals ``offload=False`` bit for
        bit. Needs a backend with a ``"pinned_host"`` memory
        (``jax.devices()[0].addressable_memories()``: GPU, TPU and CPU have one).

    The state is ``inner``'s state, leaf for leaf, only placed differently:
    ``gc.state_shardings(zero1(...), params)`` gives its layout. Leaves with no evenly
    divisible dimension (scalars, odd-sized biases) stay replicated. A data-parallel step::

        mesh = jax.make_mesh((jax.device_count(),), ("data",))
        tx = gc.zero1(gc.adamw(1e-3), mesh, axis="data")
        state = tx.init(params)               # params replicated, moments split 1/n per device

        @jax.jit
        def step(params, state, batch):       # batch sharded along "data"
            grads = jax.grad(loss)(params, batch)
            updates, state = tx.update(grads, state, params)
            return gc.apply_updates(params, updates), state

    On mesh axes of type Auto, XLA chooses the layout of the step's outputs and may return the
    parameters sharded along ``axis`` (moving the all-gather into the next step, which then
    compiles again): ``jax.jit(step, out_shardings=(param_shardings,
    gc.state_shardings(tx, params)))`` keeps them replicated. On Explicit axes (the default of
    ``jax.make_mesh``) their types keep them so.

    Reference: Rajbhandari et al., "ZeRO: Memory Optimizations Toward Training Trillion
    Parameter Models" (2020), stage 1 (:math:`P_{os}`); Ren et al., "ZeRO-Offload:
    Democratizing Billion-Scale Model Training" (2021) for ``offload``, which there also moves
    the update's arithmetic to the CPU; here it stays on the device.
    """

    inner: Any
    mesh: Mesh
    axis: Any = "data"
    param_specs: Any = None
    _: dataclasses.KW_ONLY
    offload: bool = False

    def __post_init__(self):
        check_bool("offload", self.offload)
        if not (hasattr(self.inner, "init") and hasattr(self.inner, "update")):
            raise TypeError(f"zero1: inner must be a gradient transformation, got {self.inner!r}")
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"zero1: mesh must be a jax.sharding.Mesh, got {self.mesh!r}")
        for a in self._axes:
            if a not in self.mesh.axis_names:
                raise ValueError(
                    f"zero1: axis {a!r} is not an axis of the mesh (axes: {self.mesh.axis_names})"
                )

    @property
    def memory_kind(self) -> str | None:
        """Where the state lives between steps: ``"pinned_host"`` when offloaded, else None
        (each array's default, device memory)."""
        return "pinned_host" if self.offload else None

    @property
    def _axes(self) -> tuple:
        return self.axis if isinstance(self.axis, tuple) else (self.axis,)

    def __getattr__(self, key):
        # hyperparameters of the wrapped optimizer read through: zero1(adamw(1e-3)).b1
        if key.startswith("__") or key in ("inner", "offload"):
            raise AttributeError(key)
        return getattr(self.inner, key)

    def _base_specs(self, params):
        if self.param_specs is None:
            return jax.tree.map(lambda p: _typed_spec(p, self.mesh), params)
        if isinstance(self.param_specs, PartitionSpec):
            return jax.tree.map(lambda _: tuple(self.param_specs), params)
        try:
            return jax.tree.map(
                lambda spec, sub: jax.tree.map(lambda _: tuple(spec), sub),
                self.param_specs,
                params,
                is_leaf=lambda x: isinstance(x, PartitionSpec),
            )
        except ValueError as e:
            raise ValueError(
                f"zero1: param_specs is not a pytree prefix of the parameters: {e}"
            ) from None

    def param_shardings(self, params):
        """The parameters' own layout (``param_specs``): where the returned updates live."""
        specs = self._base_specs(params)
        return jax.tree.map(
            lambda p, spec: NamedSharding(self.mesh, PartitionSpec(*spec)),
            params,
            specs,
        )

    def shard_shardings(self, params):
        """The layout each device updates: the parameters' with the data axis added."""
        specs = self._base_specs(params)
        return jax.tree.map(
            lambda p, spec: NamedSharding(
                self.mesh, _zero1_spec(spec, tuple(p.shape), self.mesh, self._axes)
            ),
            params,
            specs,
        )

    def sharded_params(self, params):
        """``params`` as ``ShapeDtypeStruct`` s in the layout of their optimizer state."""
        return jax.tree.map(
            lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
            params,
            self.shard_shardings(params),
        )

    def init(self, params):
        shards = self.shard_shardings(params)
        state = self.inner.init(_place(params, shards))
        return _place(state, self._state_layout(state, params, shards, self.memory_kind))

    def update(self, updates, state, params=None, **extra_args):
        check_params_match(updates, params)
        reference = updates if params is None else params
        shards = self.shard_shardings(reference)
        updates = _place(updates, shards)
        if params is not None:
            params = _place(params, shards)
        if self.offload:  # the state streams from host memory through the device
            state = jax.device_put(state, self._state_layout(state, reference, shards, "device"))
        updates, state = _call_update(self.inner, updates, state, params, extra_args)
        state = _place(state, self._state_layout(state, reference, shards, self.memory_kind))
        return _place(updates, self.param_shardings(reference)), state

    def _state_layout(self, state, params, shards, memory_kind=None):
        leaves, treedef = jax.tree.flatten(params)
        infos = [(tuple(p.shape), s) for p, s in zip(leaves, treedef.flatten_up_to(shards))]
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return _in_memory(derive_shardings(state, treedef, infos, replicated), memory_kind)


zero1 = Zero1
