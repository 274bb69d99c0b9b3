"""Adafactor's pieces: the factored second moment and the parameter-scale step size.

For a matrix gradient :math:`G \\in \\mathbb{R}^{n \\times m}` Adafactor keeps moving averages of
the row means and the column means of :math:`G^2` (:math:`n + m` numbers) instead of the whole
:math:`n \\times m` second moment, and rebuilds it as their normalised outer product (Shazeer &
Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", 2018; ALGORITHMS.md §4).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core import numerics
from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_bool,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    count_of,
    require_params,
    state_class,
    stateless_call,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    abs_sq,
    compute_dtype,
    init_count,
    safe_increment,
    state_dtype,
    zeros_like_param,
    zeros_like_reduced,
)
from gradchain.transforms.clipping import ClipByBlockRms, ClipState, block_rms_clip
from gradchain.transforms.scaling import ScaleState

__all__ = [
    "FactoredState",
    "adafactor_decay_rate",
    "factored_axes",
    "factored_second_moment",
    "scale_by_factored_rms",
    "scale_by_param_block_rms",
]

FACTORED_AXES_RULES = ("largest", "last")


def factored_axes(
    shape: Sequence[int], rule: str = "largest", min_dim_size_to_factor: int = 128
) -> tuple[int, int] | None:
    """The pair of axes ``(d1, d0)`` a parameter of this shape is factored over, or None.

    ``d0`` is the axis the *row* statistic ``v_row`` averages over and ``d1`` the axis the
    *column* statistic ``v_col`` averages over; every other axis is kept in both.

    * ``rule="largest"`` (optax, t5x/mesh-TF): the two largest axes. Ties are broken by position:
      **among axes of equal size the later one counts as the larger**, so ``d0`` is the last of
      the largest axes and ``d1`` the last of the remaining largest. For an ``(n, n)`` matrix
      ``d0 = 1`` and ``d1 = 0``: ``v_row`` holds one number per row, as for a wide matrix. This is
      the order a stable ascending sort of the sizes gives, and what optax's ``numpy.argsort``
      gives (numpy sorts fewer than 16 elements stably).
    * ``rule="last"`` (HF transformers, PyTorch): the last two axes, ``d1 = ndim-2``,
      ``d0 = ndim-1``, whatever their sizes.

    Not factored (None): fewer than two axes, or the smaller of the two chosen axes is shorter
    than ``min_dim_size_to_factor``. HF and PyTorch factor every matrix:
    ``rule="last", min_dim_size_to_factor=1``.
    """
    ndim = len(shape)
    if ndim < 2:
        return None
    if rule == "last":
        d1, d0 = ndim - 2, ndim - 1
    elif rule == "largest":
        by_size = sorted(range(ndim), key=lambda axis: (shape[axis], axis))
        d1, d0 = by_size[-2], by_size[-1]
    else:
        raise ValueError(f"factored_axes must be one of {FACTORED_AXES_RULES}, got {rule!r}")
    if min(shape[d0], shape[d1]) < min_dim_size_to_factor:
        return None
    return d1, d0


def adafactor_decay_rate(step: jax.typing.ArrayLike, exponent: jax.typing.ArrayLike) -> jax.Array:
    r"""Adafactor's second-moment decay :math:`\hat\beta_t = 1 - t^{-c}`, :math:`t` = ``step`` + 1.

    Formed in float32, as optax does; :math:`\hat\beta_1 = 0`, so no bias correction is needed.
    """
    t = jnp.asarray(step, jnp.float32) + 1  # in float: int32 step + 1 wraps at 2^31 - 1
    return 1.0 - t ** (-jnp.asarray(exponent, jnp.float32))


# optax's stand-in for the statistics a leaf does not use (v_row and v_col of an unfactored
# leaf, v of a factored one): the same key paths for every leaf.
_PLACEHOLDER = (1,)


def _is_none(x) -> bool:
    return x is None


@state_class(extras=("hyperparams",))
class FactoredState:
    """``count``: updates done; per parameter, ``v_row`` and ``v_col``: the moving averages of
    the mean of :math:`g^2 + \\epsilon_1` over axis ``d0`` and over axis ``d1``, each kept as an
    axis of size 1 (factored leaves; a ``(1,)`` zero placeholder for the others, as optax's),
    ``v``: the moving average of :math:`g^2 + \\epsilon_1` (unfactored leaves; a ``(1,)``
    placeholder for factored ones). ``hyperparams`` (extra): decay_rate, epsilon."""

    count: jax.Array
    v_row: Any
    v_col: Any
    v: Any
    hyperparams: dict | None


@transformation("factored_second_moment", hyperparams=("decay_rate", "epsilon"))
class FactoredSecondMoment(GradientTransformation):
    r"""Scales updates by Adafactor's factored estimate of their root mean square.

    With :math:`\hat\beta_t` = ``decay_rate_fn(count - step_offset, decay_rate)`` (by default
    :math:`1 - (\text{count} - \text{step\_offset} + 1)^{-\text{decay\_rate}}`, which is 0 at the
    first step) and :math:`G^2 = g^2 + \epsilon_1`, for a leaf factored over axes
    :math:`(d_1, d_0)` (see :func:`factored_axes`):

    .. math::
        r_t = \hat\beta_t r_{t-1} + (1-\hat\beta_t)\operatorname{mean}_{d_0} G^2, \qquad
        c_t = \hat\beta_t c_{t-1} + (1-\hat\beta_t)\operatorname{mean}_{d_1} G^2, \\
        u_t = g_t \Big/ \sqrt{\frac{r_t\, c_t}{\operatorname{mean}_{d_1} r_t}}

    (:math:`r_t` keeps :math:`d_0` as an axis of size 1, :math:`c_t` keeps :math:`d_1`, so they
    broadcast); every other leaf keeps the whole
    :math:`v_t = \hat\beta_t v_{t-1} + (1-\hat\beta_t) G^2` and :math:`u_t = g_t/\sqrt{v_t}`.
    An ``n x m`` matrix thus keeps ``n + m`` numbers: ``v_row`` of shape ``(n, 1)`` and ``v_col``
    of shape ``(1, m)`` (for ``d0 = 1``), with a ``(1,)`` placeholder ``v``; unfactored leaves
    have ``(1,)`` placeholders ``v_row`` and ``v_col``, as optax's, so the state has optax's key
    paths.

    Args:
      factored: factor the leaves that qualify (default True); False keeps every full
        :math:`v`.
      decay_rate: the exponent :math:`c \ge 0` of the decay schedule (a float or a schedule),
        default 0.8.
      step_offset: subtracted from the count (an int >= 0), for fine-tuning; default 0.
      min_dim_size_to_factor: factor only when both factored axes have at least this size
        (an int >= 0), default 128.
      epsilon: :math:`\epsilon_1 \ge 0` added to :math:`g^2` (a float or a schedule), default 1e-30.
      decay_rate_fn: ``(step, decay_rate) -> beta_hat``, default :func:`adafactor_decay_rate`;
        e.g. a capped decay as in Zhai et al. (2021).
      factored_axes: keyword-only, ``"largest"`` (default: optax and t5x, the two largest axes
        with the tie-break stated in :func:`factored_axes`) or ``"last"`` (HF transformers and
        PyTorch: the last two axes). HF and PyTorch factor every matrix:
        ``factored_axes="last", min_dim_size_to_factor=1``.

    The statistics keep the parameter's dtype, as optax (float32 under ``with_float32_state``),
    and the factors keep the reduced axis (as PyTorch's ``Adafactor`` does); optax drops the
    reduced axis (``(n,)`` and ``(m,)``). Keeping the axis records the parameter's shape in the
    state, so the state of a ``(2, 3)`` matrix is not taken for that of a ``(3, 2)`` one, and says
    which axis each factor reduced (which the sharding rules read). ``params`` are not needed.
    The updates are the same as ``optax.scale_by_factored_rms`` (also exported under that name).
    PyTorch's ``Adafactor`` does not add :math:`\epsilon_1` to :math:`g^2` but clamps the
    estimate at ``finfo(dtype).eps`` (ALGORITHMS.md §4.4, §15 rows 11-12); that variant is not
    provided.
    """

    complex_params = True

    factored: bool = True
    decay_rate: ScalarOrSchedule = 0.8
    step_offset: int = 0
    min_dim_size_to_factor: int = 128
    epsilon: ScalarOrSchedule = 1e-30
    decay_rate_fn: Any = adafactor_decay_rate
    _: dataclasses.KW_ONLY
    factored_axes: str = "largest"

    def __post_init__(self):
        check_bool("factored", self.factored)
        check_number("decay_rate", self.decay_rate, low=0.0)
        check_int("step_offset", self.step_offset, what="an int in [0, inf)")
        check_int("min_dim_size_to_factor", self.min_dim_size_to_factor, what="an int in [0, inf)")
        check_number("epsilon", self.epsilon, low=0.0)
        if not callable(self.decay_rate_fn):
            raise ValueError(f"decay_rate_fn must be callable, got {self.decay_rate_fn!r}")
        if self.factored_axes not in FACTORED_AXES_RULES:
            raise ValueError(
                f"factored_axes must be one of {FACTORED_AXES_RULES}, got {self.factored_axes!r}"
            )

    def axes(self, shape):
        """The ``(d1, d0)`` axes a leaf of ``shape`` is factored over, or None."""
        if not self.factored:
            return None
        return factored_axes(tuple(shape), self.factored_axes, self.min_dim_size_to_factor)

    def _state_shapes(self, shape):
        """Shapes of ``(v_row, v_col, v)`` for a leaf of ``shape``, ``(1,)`` for an unused
        entry (optax's placeholder)."""
        shape = tuple(shape)
        axes = self.axes(shape)
        if axes is None:
            return _PLACEHOLDER, _PLACEHOLDER, shape
        d1, d0 = axes
        # The reduced axis is kept with size 1: together the two factors record the parameter's
        # shape, so the state of a (2, 3) matrix is not mistaken for the state of a (3, 2) one.
        one = lambda axis: tuple(1 if i == axis else s for i, s in enumerate(shape))
        return one(d0), one(d1), _PLACEHOLDER

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)

        def init_leaf(p):
            dtype = state_dtype(p.dtype)
            axes = self.axes(p.shape)
            placeholder = lambda: jnp.zeros(_PLACEHOLDER, dtype)
            if axes is None:
                # The full moment mirrors the parameter and takes its sharding.
                return placeholder(), placeholder(), zeros_like_param(p, dtype)
            # Each factor keeps the parameter's sharding on the axes it keeps.
            d1, d0 = axes
            return (
                zeros_like_reduced(p, d0, dtype, keepdims=True),
                zeros_like_reduced(p, d1, dtype, keepdims=True),
                placeholder(),
            )

        v_row, v_col, v = tree_map_multi(init_leaf, 3, params)
        return FactoredState(
            count=init_count(), v_row=v_row, v_col=v_col, v=v, hyperparams=self.init_hyperparams()
        )

    def _check_state(self, updates, state):
        # Each of v_row, v_col and v has an entry (a statistic or a placeholder) per leaf.
        as_leaf = lambda tree: jax.tree.map(lambda _: 0, tree, is_leaf=_is_none)
        paths, treedef = jax.tree_util.tree_flatten_with_path(updates)
        per_leaf = {}
        for name in ("v", "v_row", "v_col"):
            try:
                per_leaf[name] = treedef.flatten_up_to(getattr(state, name))
            except (ValueError, TypeError):
                check_tree_match(
                    as_leaf(updates), as_leaf(getattr(state, name)), "updates", f"state.{name}"
                )
                raise
        shape_of = lambda x: None if x is None else tuple(jnp.shape(x))
        for (path, g), r, c, v in zip(paths, per_leaf["v_row"], per_leaf["v_col"], per_leaf["v"]):
            got = tuple(shape_of(x) for x in (r, c, v))
            if self._state_shapes(g.shape) != got:
                raise ValueError(
                    f"updates at {jax.tree_util.keystr(path)} have shape {g.shape}, but the state "
                    f"there was made for another shape (v_row {got[0]}, v_col {got[1]}, "
                    f"v {got[2]})"
                )

    def update(self, updates, state, params=None, **extra_args):
        return self._update(updates, state)

    def fuse_next(self, following):
        r"""Fuses a following ``clip_by_block_rms`` (Adafactor's update clipping).

        Unfused, the clip reads the scaled updates :math:`U = G \odot (a b^\top)` to take their
        RMS, so :math:`U` is written to memory and read twice. For a factored leaf the fused step
        takes the same sum from the gradient and the factors,
        :math:`\sum_{ij} U_{ij}^2 = \sum_i a_i^2 \sum_j G_{ij}^2 b_j^2`, a reduction that reads
        :math:`G` without writing :math:`U`, and applies the clip where :math:`U` is formed: 28
        bytes per parameter for the Adafactor step instead of 36. Leaves that are not factored,
        or not float32 (where the unfused step rounds :math:`U` before taking its RMS), take the
        unfused arithmetic.
        """
        if type(following) is not ClipByBlockRms:
            return None

        def fused(updates, state, clip_state, params, extra_args):
            hp = following.current_hyperparams(clip_state)
            out, new_state = self._update(updates, state, clip_threshold=hp["threshold"])
            return (
                out,
                new_state,
                ClipState(count=safe_increment(count_of(clip_state)), hyperparams=hp),
            )

        return fused

    def _update(self, updates, state, clip_threshold=None):
        self._check_state(updates, state)
        hp = self.current_hyperparams(state)
        beta = self.decay_rate_fn(state.count - self.step_offset, hp["decay_rate"])
        eps = hp["epsilon"]

        def clip(u, mean_square=None):
            """``clip_by_block_rms`` of ``u`` (already rounded to the updates' dtype)."""
            return u if clip_threshold is None else block_rms_clip(u, clip_threshold, mean_square)

        def step(g, r, c, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            b = jnp.asarray(beta).astype(dt)
            axes = self.axes(g.shape)
            if axes is None:
                v = numerics.ema(v.astype(dt), abs_sq(g32) + eps.astype(dt), b)
                return clip((g32 * numerics.inverse_sqrt(v)).astype(g.dtype)), r, c, v
            d1, d0 = axes
            # mean(g^2) + eps is mean(g^2 + eps) up to rounding, and lets each reduction square
            # g as it reads it: a broadcast eps, or one g^2 shared by both reductions, would be
            # written to memory first (XLA:CPU's reductions fuse neither). Each further
            # reduction squares g under another name so that XLA does not merge the squares.
            g_again, g_third = jax.lax.optimization_barrier((g32, g32))
            r = numerics.ema(
                r.astype(dt), jnp.mean(abs_sq(g32), axis=d0, keepdims=True) + eps.astype(dt), b
            )
            c = numerics.ema(
                c.astype(dt),
                jnp.mean(abs_sq(g_again), axis=d1, keepdims=True) + eps.astype(dt),
                b,
            )
            row_factor = (r / jnp.mean(r, axis=d1, keepdims=True)) ** -0.5
            col_factor = c**-0.5
            u = g32 * row_factor * col_factor
            if clip_threshold is None or g.dtype != dt:
                return clip(u.astype(g.dtype)), r, c, v
            # sum(u^2) without forming u: row_factor^2 varies along d1 and col_factor^2 along
            # d0, so reduce g^2 times one of them along its axis (the later axis, whose reads
            # are contiguous), then sum the result weighted by the other.
            row_sq = jnp.mean(r, axis=d1, keepdims=True) / r
            inner = max(d0, d1)
            along, across = (1 / c, row_sq) if inner == d0 else (row_sq, 1 / c)
            partial = jnp.sum(abs_sq(g_third) * along, axis=inner, keepdims=True)
            mean_square = jnp.sum(partial * across) / g.size
            return clip(u, mean_square), r, c, v

        out, v_row, v_col, v = tree_map_multi(step, 4, updates, state.v_row, state.v_col, state.v)
        cast = lambda new, old: jax.tree.map(lambda n, o: n.astype(o.dtype), new, old)
        return out, FactoredState(
            count=safe_increment(state.count),
            v_row=cast(v_row, state.v_row),
            v_col=cast(v_col, state.v_col),
            v=cast(v, state.v),
            hyperparams=hp,
        )


factored_second_moment = FactoredSecondMoment
scale_by_factored_rms = FactoredSecondMoment


@transformation("scale_by_param_block_rms", hyperparams=("min_scale",))
class ScaleByParamBlockRms(GradientTransformation):
    r"""Multiplies each leaf's updates by the root mean square of its parameter (Adafactor's
    relative step size).

    .. math:: u = g \cdot \max\!\big(\operatorname{RMS}(p), s\big), \qquad
              \operatorname{RMS}(p) = \sqrt{\operatorname{mean}_i\, p_i^2}

    so that a step is a fraction of the parameter's scale rather than an absolute size.

    Args:
      min_scale: :math:`s \ge 0` (a float or a schedule), default 1e-3 (Adafactor's
        :math:`\epsilon_2`).

    Needs ``params``. The RMS is computed in float32 for low-precision parameters. Same as
    ``optax.scale_by_param_block_rms``; HF's ``scale_parameter=True`` and PyTorch's Adafactor
    apply the same factor :math:`\max(\epsilon_2, \operatorname{RMS}(p))`. Reference: Shazeer &
    Stern (2018), Algorithm 4, :math:`\alpha_t = \max(\epsilon_2, \operatorname{RMS}(X_{t-1}))
    \rho_t`.
    """

    complex_params = True

    min_scale: ScalarOrSchedule = 1e-3

    def __post_init__(self):
        check_number("min_scale", self.min_scale, low=0.0)

    def init(self, params):
        return ScaleState(count=init_count(), hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, params, "updates", "params")
        hp = self.current_hyperparams(state)
        min_scale = hp["min_scale"]

        def scale_leaf(u, p):
            dt = compute_dtype(jnp.promote_types(u.dtype, p.dtype))
            p32 = jnp.asarray(p).astype(dt)
            floor = min_scale.astype(dt)
            rms = jnp.sqrt(jnp.mean(abs_sq(p32)).real)
            return (u.astype(dt) * jnp.maximum(rms, floor)).astype(u.dtype)

        out = jax.tree.map(scale_leaf, updates, params)
        if stateless_call(state):
            return out, state
        return out, ScaleState(count=safe_increment(state.count), hyperparams=hp)


scale_by_param_block_rms = ScaleByParamBlockRms
