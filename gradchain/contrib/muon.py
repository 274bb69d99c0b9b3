"""Muon: momentum orthogonalised by a Newton-Schulz iteration, for the hidden weight matrices.

``scale_by_muon`` keeps a momentum buffer per matrix and replaces the update by an approximately
orthogonal matrix with the same singular vectors (ALGORITHMS.md §11). Only the hidden matrices of a
network should get it; :func:`muon` routes every other leaf to AdamW, choosing the leaves by a label
function (optax's default: every 2-D leaf; :func:`muon_labels`: the reference recommendation, which
also sends embeddings and output heads to AdamW).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    EmptyState,
    GradientTransformation,
    MaskOrFn,
    Params,
    PyTree,
    ScalarOrSchedule,
    _short_repr,
    chain,
    check_bools,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    state_class,
    transformation,
)
from gradchain.core.matrices import check_dimension_numbers, entries_per_leaf, matrix_view
from gradchain.core.numerics import (
    bias_divisor,
    compute_dtype,
    debias,
    ema,
    init_count,
    nesterov_debiased,
    nesterov_divisors,
    safe_increment,
    state_dtype,
    zeros_like_param,
)
from gradchain.optimizers.alias import _argument_names, adamw
from gradchain.transforms.combinators import Partition
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "MuonDimensionNumbers",
    "MuonState",
    "muon",
    "muon_labels",
    "orthogonalize_via_newton_schulz",
    "scale_by_muon",
    "scale_by_shape",
]

_QUINTIC = (3.4445, -4.7750, 2.0315)
_NS_PRESETS = {
    "standard": _QUINTIC,
    "dion": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
}
_PRECONDITIONINGS = ("frobenius", "spectral", "aol", "schatten")


class MuonDimensionNumbers(NamedTuple):
    """Which axes of a weight form the matrix Muon orthogonalises (as ``optax.contrib``'s).

    ``reduction_axis`` (the input side, rows in optax's ``x @ W`` layout) and ``output_axis``
    (columns): each an int or a sequence of ints. Every other axis is a batch axis, orthogonalised
    independently: ``MuonDimensionNumbers(1, 2)`` treats a stack of scanned layers
    ``(layers, d_in, d_out)`` as ``layers`` matrices.
    """

    reduction_axis: Any = 0
    output_axis: Any = 1


def _is_dims_leaf(x) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers)


# ---------------------------------------------------------------------------------------------
# Newton-Schulz


def _coefficient_rows(ns_coeffs, ns_steps: int) -> tuple[tuple[float, float, float], ...]:
    """One ``(a, b, c)`` row per Newton-Schulz step, validated."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in _NS_PRESETS:
            raise ValueError(
                f"ns_coeffs must be a preset in {sorted(_NS_PRESETS)} or coefficients, "
                f"got {ns_coeffs!r}"
            )
        ns_coeffs = _NS_PRESETS[ns_coeffs]
    try:
        rows = np.asarray(ns_coeffs, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"ns_coeffs must be (a, b, c) or a sequence of (a, b, c), got {ns_coeffs!r}"
        ) from None
    if rows.ndim not in (1, 2) or rows.shape[-1] != 3:
        raise ValueError(f"ns_coeffs must have shape (3,) or (n, 3), got shape {tuple(rows.shape)}")
    as_float = [
        cast(tuple[float, float, float], tuple(float(v) for v in r)) for r in np.atleast_2d(rows)
    ]
    if rows.ndim == 1:
        return (as_float[0],) * ns_steps
    if len(as_float) > ns_steps:
        raise ValueError(
            f"ns_coeffs gives {len(as_float)} rows (one per step) but ns_steps is {ns_steps}"
        )
    return tuple(as_float)


def _newton_schulz_matrix(x, rows, eps, preconditioning):
    """The quintic iteration on one matrix (ALGORITHMS.md §11.1), transposed to be wide."""
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    if preconditioning == "frobenius":
        x = x / (jnp.linalg.norm(x) + eps)
    elif preconditioning == "spectral":
        x = x / (jnp.linalg.norm(x, ord=2) + eps)
    for step, (a, b, c) in enumerate(rows):
        # The Hermitian Gram matrix: a complex X converges to a unitary factor, as in optax.
        gram = x @ x.conj().T
        if step == 0 and preconditioning == "aol":
            # Almost-orthogonal-layer rescaling (Boissin et al. 2025) folded into the first step.
            s = jax.lax.rsqrt(jnp.maximum(jnp.abs(gram).sum(axis=-1), eps))[:, None]
            x, gram = x * s, gram * s * s.T
        elif step == 0 and preconditioning == "schatten":
            # Schatten-4 rescaling (Grishina et al. 2025): divide by sqrt(||X X^T||_F).
            s = jax.lax.rsqrt(jnp.maximum(jnp.linalg.norm(gram), eps))
            x, gram = x * s, gram * s**2
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def _orthogonalize(x, view, rows, eps, preconditioning, dtype):
    mats = view.to_matrices(x.astype(dtype))
    if mats.shape[0] == 1:
        # A lone matrix (every 2-D leaf) skips vmap: XLA:CPU runs a batch of one through its
        # batched-matmul path, 1.8x slower than a plain matmul on GPT-2's embedding.
        out = _newton_schulz_matrix(mats[0], rows, eps, preconditioning)[None]
    else:
        out = jax.vmap(lambda m: _newton_schulz_matrix(m, rows, eps, preconditioning))(mats)
    return view.from_matrices(out)


def orthogonalize_via_newton_schulz(
    x: jax.typing.ArrayLike,
    ns_coeffs: str | Sequence[float] | Sequence[Sequence[float]] | jax.typing.ArrayLike = _QUINTIC,
    ns_steps: int = 5,
    preconditioning: str = "frobenius",
    eps: float = 1e-8,
    dimension_numbers: MuonDimensionNumbers | None = None,
) -> jax.Array:
    r"""Approximately orthogonalises ``x``: :math:`U S V^\top \mapsto U S' V^\top` with
    :math:`S' \approx I`.

    After :math:`X \leftarrow X / (\|X\|_F + \epsilon)` (for ``preconditioning="frobenius"``),
    each step is :math:`X \leftarrow aX + (bA + cA^2)X` with :math:`A = XX^\top`, on the wide
    orientation of the matrix (a tall matrix is transposed and back). With the quintic
    coefficients :math:`(3.4445, -4.7750, 2.0315)` and 5 steps the singular values land in about
    :math:`[0.5, 1.5]` rather than exactly 1, which is what Muon wants: fast, not exact.

    Args:
      x: a matrix, or a tensor with ``dimension_numbers`` saying which axes form the matrix.
      ns_coeffs: ``(a, b, c)`` used at every step, a sequence of per-step rows, or a preset
        (``"standard"``, ``"dion"``).
      ns_steps: number of steps (per-step rows, when given, set the number instead).
      preconditioning: ``"frobenius"`` (default), ``"spectral"``, ``"aol"`` or ``"schatten"``.
      eps: added to the norm before dividing.
      dimension_numbers: a :class:`MuonDimensionNumbers`; default: ``x`` must be 2-D.

    Runs in ``x``'s dtype. Same as optax's ``orthogonalize_via_newton_schulz``.
    """
    rows = _coefficient_rows(ns_coeffs, ns_steps)
    if preconditioning not in _PRECONDITIONINGS:
        raise ValueError(
            f"preconditioning must be one of {_PRECONDITIONINGS}, got {preconditioning!r}"
        )
    x = jnp.asarray(x)
    if dimension_numbers is None and x.ndim != 2:
        raise ValueError(
            f"orthogonalize_via_newton_schulz: x has shape {x.shape}; give "
            f"dimension_numbers for a tensor that is not a matrix"
        )
    dims = dimension_numbers or MuonDimensionNumbers()
    view = matrix_view(x.shape, dims.reduction_axis, dims.output_axis, "x")
    return _orthogonalize(x, view, rows, eps, preconditioning, x.dtype)


# ---------------------------------------------------------------------------------------------
# Dimension numbers per leaf


def _leaf_dims(tree, weight_dimension_numbers, transform_name):
    """A :class:`MatrixView` for every leaf of ``tree`` (None for None leaves); errors name the
    path of the leaf."""
    spec = weight_dimension_numbers
    if callable(spec) and not isinstance(spec, MuonDimensionNumbers):
        spec = spec(tree)
    try:
        dims_leaves = entries_per_leaf(spec, tree, _is_dims_leaf)
    except ValueError as e:
        raise ValueError(f"{transform_name}: weight_dimension_numbers: {e}") from None
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is None)[0]
    out: list[Any] = []
    for (path, leaf), dims in zip(leaves, dims_leaves):
        if leaf is None:
            out.append(None)
            continue
        where = f"{transform_name}: parameter {jax.tree_util.keystr(path) or '<root>'}"
        if dims is None:
            if jnp.ndim(leaf) != 2:
                raise ValueError(
                    f"{where} has shape {jnp.shape(leaf)}; Muon orthogonalises matrices. Send "
                    f"biases, norms and other non-matrix leaves to AdamW with "
                    f"muon(..., param_labels=...) (its default labels every 2-D leaf 'muon' and "
                    f"the rest 'adam'), or give MuonDimensionNumbers for a tensor that holds "
                    f"matrices"
                )
            dims = MuonDimensionNumbers()
        if not isinstance(dims, MuonDimensionNumbers):
            raise ValueError(f"{where}: expected MuonDimensionNumbers or None, got {dims!r}")
        out.append(matrix_view(jnp.shape(leaf), dims.reduction_axis, dims.output_axis, where))
    return out


# ---------------------------------------------------------------------------------------------
# scale_by_muon


@state_class(extras=("hyperparams",))
class MuonState:
    """optax's ``MuonState``: ``count``: updates done; ``mu``: the momentum buffer;
    ``ns_coeffs``: the Newton-Schulz coefficients, ``(3,)`` or one row per step ``(n, 3)``.
    Extra (see :mod:`gradchain.core.base`): ``hyperparams``, beta and eps as used by the latest
    update."""

    count: jax.Array
    mu: Any
    ns_coeffs: jax.Array
    hyperparams: dict | None


def _state_coefficients(ns_coeffs, ns_steps: int) -> jax.Array:
    """The coefficients as optax keeps them in :class:`MuonState`: the ``(3,)`` row given, or
    the last ``ns_steps`` of the per-step rows (all of them, as validation allows no more)."""
    if isinstance(ns_coeffs, str):
        ns_coeffs = _NS_PRESETS[ns_coeffs]
    coeffs = jnp.asarray(ns_coeffs)
    if not jnp.issubdtype(coeffs.dtype, jnp.inexact):
        coeffs = coeffs.astype(jnp.result_type(float))
    return coeffs if coeffs.ndim == 1 else coeffs[-ns_steps:]


def _state_rows(coeffs: jax.Array, ns_steps: int, dtype) -> list[tuple[Any, Any, Any]]:
    """One ``(a, b, c)`` row per Newton-Schulz step from the state's coefficients, in ``dtype``
    (as optax casts them to the iteration's dtype)."""
    coeffs = coeffs.astype(dtype)
    rows = [coeffs] * ns_steps if coeffs.ndim == 1 else list(coeffs)
    return [(r[0], r[1], r[2]) for r in rows]


@transformation("scale_by_muon", hyperparams=("beta", "eps"))
class ScaleByMuon(GradientTransformation):
    r"""Orthogonalised momentum: the Muon direction for each weight matrix.

    With :math:`t` the 1-based step and :math:`\mathrm{NS}` the Newton-Schulz iteration of
    :func:`orthogonalize_via_newton_schulz`,

    .. math::
        m_t = \beta m_{t-1} + (1-\beta) g_t, \qquad u_t = \mathrm{NS}(\hat m_t),

    where, with ``bias_correction=True`` (optax),
    :math:`\hat m_t = m_t/(1-\beta^t)`, or with Nesterov
    :math:`\hat m_t = \beta m_t/(1-\beta^{t+1}) + (1-\beta) g_t/(1-\beta^t)`;
    with ``bias_correction=False`` (the reference, Keller Jordan's ``Muon``)
    :math:`\hat m_t = m_t`, or with Nesterov :math:`\hat m_t = \beta m_t + (1-\beta) g_t`.
    ``adaptive=True`` multiplies :math:`u_t` by :math:`\langle \hat m_t, u_t\rangle`.

    Args:
      ns_coeffs: Newton-Schulz coefficients, default the quintic (3.4445, -4.7750, 2.0315); or
        per-step rows, or a preset (``"standard"``, ``"dion"``).
      ns_steps: Newton-Schulz steps, default 5.
      beta: momentum :math:`\beta \in [0, 1)`, default 0.95.
      eps: :math:`\epsilon \ge 0` added to the norm before the iteration, default 1e-8.
      mu_dtype: dtype of the buffer. Default: the parameter's, as optax.
      nesterov: Nesterov momentum (default True, as optax and the reference).
      adaptive: the dual-norm scaling of Bernstein et al. (2024).
      preconditioning: ``"frobenius"`` (default), ``"spectral"``, ``"aol"``, ``"schatten"``.
      weight_dimension_numbers: None (every leaf must be a matrix), one
        :class:`MuonDimensionNumbers` for every leaf, a pytree of them (None: a plain matrix), or
        a callable ``params -> pytree``.
      bias_correction: Adam-style bias correction of the momentum (default True, optax).
      ns_dtype: dtype the iteration runs in. Default: the momentum's compute dtype (float32 for
        bfloat16 parameters); the reference runs it in bfloat16.

    Differs from the reference (ALGORITHMS.md §15 row 20): optax bias-corrects the momentum
    (NAdam-style with Nesterov), runs the iteration in the parameter dtype, and uses eps 1e-8;
    Keller Jordan's ``Muon`` uses the raw EMA, bfloat16 and eps 1e-7. Select the reference with
    ``bias_correction=False, ns_dtype=jnp.bfloat16, eps=1e-7``. Without Nesterov the correction is
    a positive scalar, which the normalisation cancels, so the two agree up to eps.
    A leaf that is not a matrix and has no dimension numbers raises a ``ValueError`` naming its
    path at ``init``. Reference: Jordan, "Muon: An optimizer for hidden layers in neural
    networks" (2024); same as ``optax.contrib.scale_by_muon``.

    Complex parameters are supported as in optax: the iteration uses the Hermitian Gram matrix
    :math:`XX^H` and ``adaptive`` the inner product :math:`\langle \hat m, u\rangle =
    \sum \bar{\hat m}\, u`.

    State: optax's :class:`MuonState` ``(count, mu, ns_coeffs)``; the update reads the
    coefficients from the state, as optax does, so a state restored from optax runs with its own.
    """

    complex_params = True

    ns_coeffs: Any = _QUINTIC
    ns_steps: int = 5
    beta: ScalarOrSchedule = 0.95
    eps: ScalarOrSchedule = 1e-8
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    nesterov: bool = True
    adaptive: bool = False
    preconditioning: str = "frobenius"
    weight_dimension_numbers: Any = None
    bias_correction: bool = True
    ns_dtype: Any = None

    def __post_init__(self):
        check_int("ns_steps", self.ns_steps, low=1, what="a positive int")
        _coefficient_rows(self.ns_coeffs, self.ns_steps)
        check_number("beta", self.beta, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("ns_dtype", self.ns_dtype)
        check_bools(self, "nesterov", "adaptive", "bias_correction")
        if self.preconditioning not in _PRECONDITIONINGS:
            raise ValueError(
                f"preconditioning must be one of {_PRECONDITIONINGS}, got {self.preconditioning!r}"
            )
        check_dimension_numbers(self.weight_dimension_numbers, MuonDimensionNumbers)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        _leaf_dims(params, self.weight_dimension_numbers, self.name)
        mu = jax.tree.map(
            lambda p: zeros_like_param(p, state_dtype(p.dtype, self.mu_dtype)), params
        )
        return MuonState(
            count=init_count(),
            mu=mu,
            ns_coeffs=_state_coefficients(self.ns_coeffs, self.ns_steps),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        beta, eps = hp["beta"], hp["eps"]
        t = safe_increment(state.count)
        leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
        mus = treedef.flatten_up_to(state.mu)
        views = _leaf_dims(updates, self.weight_dimension_numbers, self.name)
        # The bias corrections' divisors, formed once per step rather than once per leaf.
        k_beta: Any = bias_divisor(beta, t) if self.bias_correction else None
        nk_beta: Any = (
            nesterov_divisors(beta, t) if self.bias_correction and self.nesterov else None
        )

        def step(g, m, view):
            dt = compute_dtype(g.dtype)
            g32, b = g.astype(dt), beta.astype(dt)
            m = ema(m.astype(dt), g32, b)
            if self.bias_correction and self.nesterov:
                m_hat = nesterov_debiased(m, g32, beta, 1 - b, *nk_beta)
            elif self.bias_correction:
                m_hat = debias(m, k_beta)
            elif self.nesterov:
                m_hat = b * m + (1 - b) * g32
            else:
                m_hat = m
            ns_dt = dt if self.ns_dtype is None else jnp.dtype(self.ns_dtype)
            rows = _state_rows(state.ns_coeffs, self.ns_steps, ns_dt)
            o = _orthogonalize(m_hat, view, rows, eps.astype(ns_dt), self.preconditioning, ns_dt)
            o = o.astype(dt)
            if self.adaptive:
                o = jnp.sum(m_hat.conj() * o) * o
            return o.astype(g.dtype), m

        out: list[Any] = []
        new_mu: list[Any] = []
        for g, m, view in zip(leaves, mus, views):
            if g is None:
                out.append(None)
                new_mu.append(None)
                continue
            o, m_new = step(g, m, view)
            out.append(o)
            new_mu.append(m_new.astype(m.dtype))
        return treedef.unflatten(out), MuonState(
            count=t, mu=treedef.unflatten(new_mu), ns_coeffs=state.ns_coeffs, hyperparams=hp
        )


scale_by_muon = ScaleByMuon


@transformation("scale_by_shape")
class ScaleByShape(GradientTransformation):
    r"""Scales each matrix's update by a factor of its shape, so one learning rate fits all widths.

    With :math:`d_{in}` the product of the reduction axes and :math:`d_{out}` of the output axes
    (optax's ``(in, out)`` layout; a PyTorch ``(out, in)`` weight has rows :math:`d_{out}`):
    :math:`u = \sqrt{\max(1, d_{out}/d_{in})}\, g` (Keller Jordan's width scaling), or with
    ``consistent_rms=c``: :math:`u = c\sqrt{\max(d_{in}, d_{out})}\, g` (Liu et al. 2025, "Muon is
    scalable": ``c = 0.2`` matches AdamW's update RMS).

    Args:
      weight_dimension_numbers: as in :func:`scale_by_muon`.
      consistent_rms: None or :math:`c > 0`. A fixed constant (it selects the rule), not a live
        hyperparameter.

    Same as optax's ``scale_by_shape`` (in ``optax.contrib._muon``). State: none.
    """

    complex_params = True

    weight_dimension_numbers: Any = None
    consistent_rms: float | None = None

    def __post_init__(self):
        check_number(
            "consistent_rms",
            self.consistent_rms,
            low=0.0,
            low_open=True,
            allow_schedule=False,
            allow_none=True,
        )

    def init(self, params):
        _leaf_dims(params, self.weight_dimension_numbers, self.name)
        return EmptyState()

    def update(self, updates, state, params=None, **extra_args):
        leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
        views = _leaf_dims(updates, self.weight_dimension_numbers, self.name)
        out: list[Any] = []
        for g, view in zip(leaves, views):
            if g is None:
                out.append(None)
                continue
            d_in, d_out = view.rows, view.cols
            if self.consistent_rms is None:
                factor = max(1.0, d_out / max(d_in, 1)) ** 0.5  # d_in = 0: a zero-size leaf
            else:
                factor = self.consistent_rms * max(d_in, d_out) ** 0.5
            out.append((g * jnp.asarray(factor, compute_dtype(g.dtype))).astype(g.dtype))
        return treedef.unflatten(out), state


scale_by_shape = ScaleByShape


# ---------------------------------------------------------------------------------------------
# Labels: which leaves get Muon


_REFERENCE_EXCLUDE = r"(^|/)(\w*embed\w*|wte|wpe|head|\w*_head|classifier|logits)(_\d+)?(/|$)"


def _path_string(path) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def muon_labels(params: Params, exclude: str = _REFERENCE_EXCLUDE) -> PyTree:
    r"""The reference's parameter groups: ``"muon"`` for hidden matrices, ``"adam"`` for the rest.

    A leaf is ``"muon"`` when it has at least two axes and its path, written ``"a/b/c"``, does not
    match ``exclude`` (searched, case-insensitively). The default ``exclude`` matches a path
    component that contains ``embed`` (``embed``, ``embedding``, ``embed_tokens``, ``Embed_0``,
    ``pos_embed``), or is ``wte``, ``wpe``, ``head``, ``*_head`` (``lm_head``), ``classifier`` or
    ``logits``, optionally with a ``_<n>`` suffix; a component that merely contains ``head``
    (``MultiHeadAttention``) does not match. Biases, norm gains and scalars are ``"adam"`` because
    they have fewer than two axes.

    Use as ``muon(lr, param_labels=muon_labels)``, or
    ``functools.partial(muon_labels, exclude=...)`` for other names. Keller Jordan's Muon README
    recommends exactly this split (embeddings, the output head, biases and gains to AdamW);
    optax's default sends every 2-D leaf, embeddings and heads included, to Muon
    (ALGORITHMS.md §15 row 21). A tensor with more than two axes labelled ``"muon"`` needs
    ``MuonDimensionNumbers`` (for example a conv kernel or a stack of scanned layers).
    """
    pattern = re.compile(exclude, re.IGNORECASE)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    labels = [
        "muon" if jnp.ndim(leaf) >= 2 and not pattern.search(_path_string(path)) else "adam"
        for path, leaf in leaves
    ]
    return treedef.unflatten(labels)


@dataclasses.dataclass(frozen=True)
class _DefaultLabels:
    """optax's labelling: a leaf is Muon's when its dimension numbers are not None (with none
    given, when it is 2-D)."""

    weight_dimension_numbers: Any

    def __call__(self, params):
        dims = self.weight_dimension_numbers
        if dims is None:
            return jax.tree.map(lambda p: "muon" if jnp.ndim(p) == 2 else "adam", params)
        if callable(dims) and not isinstance(dims, MuonDimensionNumbers):
            dims = dims(params)
        entries = entries_per_leaf(dims, params, _is_dims_leaf)
        treedef = jax.tree.structure(params, is_leaf=lambda x: x is None)
        return treedef.unflatten(["adam" if d is None else "muon" for d in entries])


# ---------------------------------------------------------------------------------------------
# Routing leaves to groups


@transformation("muon")
class Muon(Partition):
    """:func:`muon`'s transformation: optax's ``partition`` of the ``"muon"`` and ``"adam"``
    groups, which also records the arguments :func:`muon` was called with (``config``), so that
    ``repr`` shows them and ``tx.learning_rate`` reads them back."""

    config: Mapping = dataclasses.field(default_factory=dict, kw_only=True)

    def __getattr__(self, key):
        config = self.__dict__.get("config", {})
        if key.startswith("__") or key not in config:
            raise AttributeError(f"muon has no attribute {key!r}")
        return config[key]

    def __repr__(self):
        inner = ",\n".join(
            f"  {label}=" + repr(t).replace("\n", "\n  ") for label, t in self.transforms.items()
        )
        args = ", ".join(f"{k}={_short_repr(v)}" for k, v in self.config.items())
        return f"{self.name}({args}) = partition(\n{inner}\n)"


def muon(
    learning_rate: ScalarOrSchedule,
    ns_coeffs: str | Sequence[float] | Sequence[Sequence[float]] | jax.typing.ArrayLike = _QUINTIC,
    ns_steps: int = 5,
    beta: ScalarOrSchedule = 0.95,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: str = "frobenius",
    adam_b1: ScalarOrSchedule = 0.9,
    adam_b2: ScalarOrSchedule = 0.999,
    adam_eps_root: ScalarOrSchedule = 0.0,
    adam_weight_decay: ScalarOrSchedule = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
    muon_weight_dimension_numbers: PyTree | Callable[[Params], PyTree] | None = None,
    consistent_rms: float | None = None,
    param_labels: PyTree | Callable[[Params], PyTree] | None = None,
    bias_correction: bool = True,
    ns_dtype: Any | None = None,
) -> Muon:
    r"""Muon for the hidden matrices, AdamW for every other leaf.

    Leaves labelled ``"muon"`` get ``chain(scale_by_muon(...), scale_by_shape(...),
    add_decoupled_weight_decay(weight_decay, weight_decay_mask), scale_by_learning_rate(lr))``:

    .. math:: p_t = p_{t-1} - \eta\,\big(s\cdot \mathrm{NS}(\hat m_t) + \lambda p_{t-1}\big),
              \qquad s = \sqrt{\max(1, d_{out}/d_{in})}

    (the reference's ``p(1 - \eta\lambda) - \eta\, s\,\mathrm{NS}(\hat m)``); leaves labelled
    ``"adam"`` get ``adamw(adam_learning_rate or learning_rate, adam_b1, adam_b2, eps,
    adam_eps_root, mu_dtype, adam_weight_decay, nesterov=nesterov)``.

    Which leaves are Muon's (ALGORITHMS.md §15 row 21):

    * default (optax): every 2-D leaf, embeddings and output heads included; with
      ``muon_weight_dimension_numbers``, every leaf whose dimension numbers are not None;
    * ``param_labels=gradchain.muon_labels``: the reference recommendation, hidden matrices only;
      embeddings, heads, biases and norms go to AdamW;
    * ``param_labels``: any pytree of ``"muon"``/``"adam"`` (a prefix of the params' tree is
      broadcast) or a callable ``params -> pytree``.

    A leaf labelled ``"muon"`` that is not a matrix and has no dimension numbers raises a
    ``ValueError`` naming its path at ``init``.

    Arguments are optax's (``optax.contrib.muon``), with three additions: ``param_labels``, and
    ``bias_correction``/``ns_dtype`` of :func:`scale_by_muon` for the reference's momentum
    (ALGORITHMS.md §15 row 20). The reference's settings are ``learning_rate=0.02, beta=0.95,
    bias_correction=False, ns_dtype=jnp.bfloat16, eps=1e-7, param_labels=muon_labels`` with an
    auxiliary AdamW of ``adam_learning_rate=3e-4, adam_b2=0.95`` (its eps 1e-10 differs from the
    shared ``eps``).

    State: optax's, a ``PartitionState`` whose ``inner_states`` hold each group's chain state in
    a ``MaskedState``, with ``MaskedNode()`` on the leaves of the other group (optax's test reads
    Muon's momentum as ``state[0]["muon"][0][0][1]``). ``state["muon"]`` is the Muon chain's
    state, so ``state["muon"][0].mu`` is the momentum (a :class:`MuonState`) and
    ``state["adam"][0].nu`` AdamW's second moment.
    """
    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    config = dict(
        learning_rate=learning_rate,
        ns_coeffs=ns_coeffs,
        ns_steps=ns_steps,
        beta=beta,
        eps=eps,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        mu_dtype=mu_dtype,
        nesterov=nesterov,
        adaptive=adaptive,
        preconditioning=preconditioning,
        adam_b1=adam_b1,
        adam_b2=adam_b2,
        adam_eps_root=adam_eps_root,
        adam_weight_decay=adam_weight_decay,
        adam_learning_rate=adam_learning_rate,
        muon_weight_dimension_numbers=muon_weight_dimension_numbers,
        consistent_rms=consistent_rms,
        param_labels=param_labels,
        bias_correction=bias_correction,
        ns_dtype=ns_dtype,
    )
    muon_part = chain(
        scale_by_muon(
            ns_coeffs,
            ns_steps,
            beta,
            eps,
            mu_dtype,
            nesterov=nesterov,
            adaptive=adaptive,
            preconditioning=preconditioning,
            weight_dimension_numbers=muon_weight_dimension_numbers,
            bias_correction=bias_correction,
            ns_dtype=ns_dtype,
        ),
        scale_by_shape(muon_weight_dimension_numbers, consistent_rms),
        add_decoupled_weight_decay(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    with _argument_names(
        learning_rate="adam_learning_rate",
        b1="adam_b1",
        b2="adam_b2",
        eps_root="adam_eps_root",
        weight_decay="adam_weight_decay",
    ):
        adam_part = adamw(
            adam_learning_rate,
            adam_b1,
            adam_b2,
            eps,
            adam_eps_root,
            mu_dtype,
            adam_weight_decay,
            nesterov=nesterov,
        )
    labels = param_labels
    if labels is None:
        labels = _DefaultLabels(muon_weight_dimension_numbers)
    return Muon({"muon": muon_part, "adam": adam_part}, labels, config=config)


# Annotations resolved, as optax's: code inspecting the signature (optax's tests pass a schedule
# where learning_rate is annotated ScalarOrSchedule) reads types, not the strings PEP 563 leaves.
muon.__signature__ = inspect.signature(muon, eval_str=True)  # type: ignore[attr-defined]
