"""PSGD Kron: SGD with momentum, preconditioned by a Kronecker product of factors that are learnt
online (Xi-Lin Li's preconditioned SGD, in Evan Walters' ``kron`` form)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_bool,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    compute_dtype,
    count_power,
    ema,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)
from gradchain.schedules.schedule import Schedule, schedule_class
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByKronState",
    "kron",
    "precond_update_prob_schedule",
    "scale_by_kron",
]

_MEMORY_SAVE_MODES = (None, "one_diag", "all_diag")
# The damping of the preconditioner's input, relative to its mean magnitude (the authors'
# ``sqrt(float32 eps)``): it keeps the fitted preconditioner bounded where the gradient is zero.
_DAMPING = float(np.sqrt(np.finfo(np.float32).eps))


@schedule_class("precond_update_prob_schedule")
class PrecondUpdateProbSchedule(Schedule):
    r"""The authors' annealing of how often PSGD Kron refits its preconditioner.

    At update :math:`k` (0-based; the authors' step is :math:`n = k + 1`):

    .. math:: p(k) = \min\big(\max(p_{max}\, e^{-d\,(k + 1 - s)},\ p_{min}),\ p_{max}\big)

    Args:
      max_prob: :math:`p_{max} \in (0, 1]`, default 1.
      min_prob: :math:`p_{min} \in (0, 1]`, default 0.03.
      decay: :math:`d \ge 0`, default 0.001.
      flat_start: :math:`s \ge 0`, the steps at :math:`p_{max}`, default 500.

    Same as psgd_jax's ``precond_update_prob_schedule`` (Dec 2024 defaults).
    """

    max_prob: float = 1.0
    min_prob: float = 0.03
    decay: float = 0.001
    flat_start: int = 500

    def __post_init__(self):
        check_number("max_prob", self.max_prob, low=0.0, high=1.0, low_open=True)
        check_number("min_prob", self.min_prob, low=0.0, high=1.0, low_open=True)
        check_number("decay", self.decay, low=0.0)
        check_int("flat_start", self.flat_start)

    def _at(self, c):
        n = c.astype(jnp.result_type(float)) + 1
        p = self.max_prob * jnp.exp(-self.decay * (n - self.flat_start))
        return jnp.minimum(jnp.maximum(p, self.min_prob), self.max_prob)


precond_update_prob_schedule = PrecondUpdateProbSchedule


@state_class(extras=("hyperparams",))
class ScaleByKronState:
    """``count``: updates done; ``mu``: the momentum (None when ``b1`` is 0); ``qs``: per leaf,
    per axis, the preconditioner's factor :math:`Q_i` (an upper-triangular matrix, or the
    diagonal of a diagonal one); ``update_counter``: updates since the factors were last fitted;
    ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    qs: Any
    update_counter: jax.Array
    hyperparams: dict | None


def _is_factors(x) -> bool:
    # In ``qs`` a leaf's factors are a tuple of arrays; the containers above hold only tuples.
    return isinstance(x, tuple) and bool(x) and all(hasattr(f, "shape") for f in x)


def _leaf_shapes(qs):
    """The shapes of the leaves ``qs`` was made for (a scalar has one 0-d factor)."""
    return jax.tree.map(
        lambda f: jax.ShapeDtypeStruct(tuple(q.shape[0] for q in f if q.ndim), f[0].dtype),
        qs,
        is_leaf=_is_factors,
    )


def _triangular_axes(
    shape: tuple[int, ...], max_size: int, min_ndim: int, memory_save_mode: str | None
) -> tuple[bool, ...]:
    """Which axes of a leaf of ``shape`` get a triangular factor; the others get a diagonal
    one."""
    diagonal = [memory_save_mode == "all_diag"] * len(shape)
    if memory_save_mode == "one_diag":
        # The largest axis, the last of equals (the authors' reversed argsort).
        diagonal[max(range(len(shape)), key=lambda i: (shape[i], i))] = True
    return tuple(
        not (d or size == 1 or size > max_size or len(shape) < min_ndim)
        for size, d in zip(shape, diagonal)
    )


def _times(x, q, axis: int, transpose: bool = False):
    """``x`` multiplied along ``axis`` by the factor ``q`` (or its transpose)."""
    if q.ndim == 1:
        return x * jnp.expand_dims(q, tuple(a for a in range(x.ndim) if a != axis))
    return jnp.moveaxis(jnp.tensordot(x, q, axes=([axis], [0 if transpose else 1])), -1, axis)


def _solve_transposed(x, q, axis: int):
    """``x`` multiplied along ``axis`` by :math:`Q^{-T}` (a triangular solve, not an inverse)."""
    if q.ndim == 1:
        return _times(x, 1 / q, axis)
    moved = jnp.moveaxis(x, axis, 0)
    solved = jax.scipy.linalg.solve_triangular(
        q, moved.reshape(moved.shape[0], -1), trans="T", lower=False
    )
    return jnp.moveaxis(solved.reshape(moved.shape), 0, axis)


def _gram(x, axis: int, diagonal: bool):
    """:math:`X_{(i)} X_{(i)}^T` of the axis-``i`` unfolding (its diagonal when ``diagonal``)."""
    others = tuple(a for a in range(x.ndim) if a != axis)
    if diagonal:
        return jnp.sum(x * x, axis=others)
    return jnp.tensordot(x, x, axes=(others, others))


def _spectral_norm_lower_bound(s):
    r"""A lower bound of :math:`\|S\|_2` for a symmetric :math:`S`, within about
    :math:`\sqrt 2` of it: :math:`\|S \hat x\|` with :math:`x = S c`, :math:`c` the column of
    largest norm (the authors' ``_norm_lower_bound``, whose two branches agree for symmetric
    :math:`S`); scaled by :math:`\max|S|` so that the squares neither overflow nor underflow."""
    top = jnp.max(jnp.abs(s))
    a = s / jnp.where(top > 0, top, 1)
    column = jnp.take(a, jnp.argmax(jnp.sum(a * a, axis=0)), axis=1)
    x = a @ column
    norm = jnp.linalg.norm(x)
    return jnp.where(top > 0, top * jnp.linalg.norm(a @ (x / jnp.where(norm > 0, norm, 1))), top)


def _balanced(qs):
    """The factors rescaled to equal max-abs, their product unchanged: only the float range the
    factors use changes, not the preconditioner or its updates."""
    if len(qs) < 2:
        return qs
    norms = jnp.stack([jnp.max(jnp.abs(q)).astype(jnp.float32) for q in qs])
    target = jnp.exp(jnp.mean(jnp.log(norms)))
    return tuple(q * (target / n).astype(q.dtype) for q, n in zip(qs, norms))


def _fit_factors(qs, g, v, lr):
    """One step of PSGD's fit of :math:`P = Q^T Q` to the whitening criterion for the pair
    ``(g, v)``: every factor from the same :math:`A` and :math:`B`, each on its Lie group."""
    qs = _balanced(qs)
    a = g
    b = v
    for i, q in enumerate(qs):
        a = _times(a, q, i)
        b = _solve_transposed(b, q, i)
    out = []
    for i, q in enumerate(qs):
        diagonal = q.ndim == 1
        t1, t2 = _gram(a, i, diagonal), _gram(b, i, diagonal)
        tiny = jnp.finfo(t1.dtype).tiny
        if diagonal:
            q = q - lr * (t1 - t2) * q / (jnp.max(jnp.abs(t1 + t2)) + tiny)
        else:
            step = lr * jnp.triu(t1 - t2) / (_spectral_norm_lower_bound(t1 + t2) + tiny)
            q = q - step @ q
        out.append(q)
    return tuple(out)


def _precondition(qs, m):
    r""":math:`P m`, :math:`P = Q^T Q`: ``m`` multiplied along each axis by :math:`Q_i^T Q_i`."""
    for i, q in enumerate(qs):
        m = _times(_times(m, q, i), q, i, transpose=True)
    return m


def _as_computed(factors, dt):
    """The factors in dtype ``dt``, a scalar's 0-d factor as the ``(1,)`` diagonal it is."""
    return tuple(f.reshape(f.shape or (1,)).astype(dt) for f in factors)


@leaf_kernel("seed", "normalize_grads", "momentum_into_precond_update")
def _kron_step(
    grads,
    mus,
    qs,
    count,
    counter,
    prob,
    b1,
    c1,
    precond_lr,
    *,
    seed,
    normalize_grads,
    momentum_into_precond_update,
):
    gs = [g.astype(compute_dtype(g.dtype)).reshape(g.shape or (1,)) for g in grads]
    if normalize_grads:
        gs = [g / (jnp.linalg.norm(g) + 1e-16) for g in gs]
    if mus is None:
        new_mus, ms = None, gs
    else:
        new_mus = [ema(m.astype(g.dtype).reshape(g.shape), g, b1, c1) for m, g in zip(mus, gs)]
        correction = 1 - count_power(b1, safe_increment(count))
        ms = [m / correction.astype(m.dtype) for m in new_mus]
    fit_inputs = ms if momentum_into_precond_update else gs

    counter = safe_increment(counter)
    refit = counter >= 1 / prob
    counter = jnp.where(refit, 0, counter)

    def refresh(qs):
        key = jax.random.fold_in(jax.random.key(seed), count)
        out = []
        for i, (q, x) in enumerate(zip(qs, fit_inputs)):
            if x.size == 0:
                out.append(tuple(q))
                continue
            dt = jnp.promote_types(x.dtype, q[0].dtype)
            x = x.astype(dt)
            v = jax.random.normal(jax.random.fold_in(key, i), x.shape, dt)
            x = x + _DAMPING * jnp.mean(jnp.abs(x)) * v
            fitted = _fit_factors(_as_computed(q, dt), x, v, precond_lr.astype(dt))
            out.append(tuple(f.reshape(f0.shape).astype(f0.dtype) for f, f0 in zip(fitted, q)))
        return out

    qs = jax.lax.cond(refit, refresh, lambda qs: [tuple(q) for q in qs], [tuple(q) for q in qs])
    updates = []
    for g, q, m in zip(grads, qs, ms):
        dt = jnp.promote_types(m.dtype, q[0].dtype)
        u = _precondition(_as_computed(q, dt), m.astype(dt))
        updates.append(u.reshape(g.shape).astype(g.dtype))
    if new_mus is not None:
        new_mus = [m.reshape(old.shape).astype(old.dtype) for m, old in zip(new_mus, mus)]
    return updates, new_mus, qs, counter


@transformation(
    "scale_by_kron", hyperparams=("b1", "preconditioner_update_probability", "preconditioner_lr")
)
class ScaleByKron(GradientTransformation):
    r"""Preconditions momentum with PSGD Kron: :math:`P = Q^T Q`, :math:`Q = \bigotimes_i Q_i`
    learnt online.

    Each leaf keeps, per axis :math:`i` of size :math:`d_i`, a factor :math:`Q_i`: an upper
    triangular :math:`d_i \times d_i` matrix, or a diagonal one (kept as its diagonal) for an
    axis of size 1 or larger than ``max_size_triangular``, every axis of a leaf with fewer than
    ``min_ndim_triangular`` axes (vectors; a scalar has one 0-d factor) and the axes chosen by
    ``memory_save_mode``. :math:`x \times_i M` multiplies :math:`x` along axis :math:`i` by
    :math:`M`, :math:`X_{(i)}` is the axis-:math:`i` unfolding, :math:`t` the 1-based step.

    .. math::
        g \leftarrow g / (\|g\|_F + 10^{-16}) \ \text{(if normalize\_grads)}, \qquad
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g, \qquad \hat m = m_t / (1 - \beta_1^t)

    On a refit step (below), with :math:`h = \hat m` (or :math:`g` when not
    ``momentum_into_precond_update``), :math:`V \sim \mathcal N(0, I)` of :math:`h`'s shape and
    :math:`\delta = \sqrt{\epsilon_{f32}}`:

    .. math::
        h \leftarrow h + \delta\, \overline{|h|}\, V, \qquad
        A = h \times_1 Q_1 \cdots \times_k Q_k, \qquad
        B = V \times_1 Q_1^{-T} \cdots \times_k Q_k^{-T}, \\
        T_1 = A_{(i)} A_{(i)}^T, \ T_2 = B_{(i)} B_{(i)}^T: \quad
        Q_i \leftarrow Q_i - \frac{\eta_p}{\lambda(T_1 + T_2)}\,\mathrm{triu}(T_1 - T_2)\, Q_i
        \ \ \text{(triangular)}, \quad
        q_i \leftarrow q_i - \frac{\eta_p\, (t_1 - t_2) \odot q_i}{\max|t_1 + t_2|}
        \ \ \text{(diagonal, } t = \text{the diagonals)}

    with :math:`\lambda(S) \le \|S\|_2` a lower bound of the spectral norm (the column of
    :math:`S` of largest norm, :math:`x = Sc`, :math:`\lambda = \|S x\|/\|x\|`), every factor
    updated from the same :math:`A, B`. This is one step of Li's fit of :math:`P` to
    :math:`E[h h^T]^{-1/2}` (the whitening criterion :math:`E[h^T P h + V^T P^{-1} V]`) on the
    group of triangular matrices. Then, with the new factors,

    .. math:: u_t = \hat m \times_1 Q_1^T Q_1 \cdots \times_k Q_k^T Q_k

    A refit happens when ``update_counter + 1 >= 1 / p`` (then the counter restarts at 0), with
    :math:`p` = ``preconditioner_update_probability`` at this update: every step at
    :math:`p = 1`, every :math:`\lceil 1/p \rceil` steps otherwise (the authors' deterministic
    schedule). Factors start at :math:`s^{1/k} I` (:math:`s` = ``preconditioner_init_scale``).

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, the momentum, default 0.9 (0 keeps no momentum).
      normalize_grads: divide each leaf's gradient by its norm first, default False.
      preconditioner_update_probability: :math:`p \in (0, 1]`, or a schedule of the 0-based
        count, default :func:`precond_update_prob_schedule` (1 for 500 steps, then annealed to
        0.03).
      max_size_triangular: axes longer than this get a diagonal factor, default 8192.
      min_ndim_triangular: leaves with fewer axes get diagonal factors only, default 2.
      memory_save_mode: None (triangular wherever allowed), ``"one_diag"`` (the largest axis of
        each leaf diagonal) or ``"all_diag"``.
      momentum_into_precond_update: fit the preconditioner to :math:`\hat m` rather than
        :math:`g`, default True.
      preconditioner_lr: :math:`\eta_p \ge 0`, default 0.1.
      preconditioner_init_scale: :math:`s > 0`, default 1.
      mu_dtype: dtype of the momentum (default: float32 for 16-bit parameters, else theirs).
      precond_dtype: dtype of the factors (default: float32, float64 for float64 parameters).
      seed: keyword-only; the random vectors of update :math:`k` are
        ``jax.random.normal(fold_in(fold_in(key(seed), k), j), shape)`` for leaf ``j`` (in
        flattening order), in the leaf's compute dtype; default 5318008, the authors' seed.

    Reference: X.-L. Li, "Preconditioned Stochastic Gradient Descent" (IEEE TNNLS 2018) and
    "Black Box Lie Group Preconditioners for SGD" (2022); the algorithm of Evan Walters'
    psgd_jax ``kron.py`` (commit e462796, Dec 2024), a port of Li's psgd_torch ``kron``.
    Differences from it: the factors are rebalanced (the same max-abs, the same product) on
    every refit rather than with probability 0.01, exact in real arithmetic; the random vectors
    come from ``seed`` as above (the authors split a fixed key, and draw in the gradient's
    dtype); 16-bit leaves are computed in float32; no ``scanned_layers`` /
    ``lax_map_scanned_layers`` (vmap the optimizer instead) and no matmul-precision arguments
    (JAX's default precision); real parameters only. State memory: the momentum plus
    :math:`\sum_i d_i^2` (triangular) or :math:`d_i` (diagonal) floats per leaf. optax has no
    counterpart.
    """

    b1: ScalarOrSchedule = 0.9
    normalize_grads: bool = False
    preconditioner_update_probability: ScalarOrSchedule = PrecondUpdateProbSchedule()
    max_size_triangular: int = 8192
    min_ndim_triangular: int = 2
    memory_save_mode: str | None = None
    momentum_into_precond_update: bool = True
    preconditioner_lr: ScalarOrSchedule = 0.1
    preconditioner_init_scale: float = 1.0
    mu_dtype: Any = None
    precond_dtype: Any = None
    _: dataclasses.KW_ONLY
    seed: int = 5318008

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_bool("normalize_grads", self.normalize_grads)
        check_number(
            "preconditioner_update_probability",
            self.preconditioner_update_probability,
            low=0.0,
            high=1.0,
            low_open=True,
        )
        check_int("max_size_triangular", self.max_size_triangular)
        check_int("min_ndim_triangular", self.min_ndim_triangular)
        if self.memory_save_mode not in _MEMORY_SAVE_MODES:
            raise ValueError(
                f"memory_save_mode must be one of {_MEMORY_SAVE_MODES}, "
                f"got {self.memory_save_mode!r}"
            )
        check_bool("momentum_into_precond_update", self.momentum_into_precond_update)
        check_number("preconditioner_lr", self.preconditioner_lr, low=0.0)
        check_number(
            "preconditioner_init_scale",
            self.preconditioner_init_scale,
            low=0.0,
            low_open=True,
            allow_schedule=False,
        )
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("precond_dtype", self.precond_dtype)
        check_int("seed", self.seed)

    def _keeps_momentum(self) -> bool:
        return callable(self.b1) or not isinstance(self.b1, (int, float)) or self.b1 != 0

    def init(self, params):
        check_floating(params, self.name)

        def factors(p):
            shape = jnp.shape(p)
            dt = self.precond_dtype or compute_dtype(p.dtype)
            if not shape:
                return (jnp.full((), self.preconditioner_init_scale, dt),)
            scale = self.preconditioner_init_scale ** (1 / len(shape))
            flags = _triangular_axes(
                shape, self.max_size_triangular, self.min_ndim_triangular, self.memory_save_mode
            )
            return tuple(
                scale * (jnp.eye(d, dtype=dt) if tri else jnp.ones(d, dt))
                for d, tri in zip(shape, flags)
            )

        return ScaleByKronState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype) if self._keeps_momentum() else None,
            qs=jax.tree.map(factors, params),
            update_counter=init_count(),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, _leaf_shapes(state.qs), "updates", "the parameters of init")
        hp = self.current_hyperparams(state)
        leaves, treedef = jax.tree.flatten(updates)
        mus = None if state.mu is None else treedef.flatten_up_to(state.mu)
        qs = treedef.flatten_up_to(state.qs)
        out, mus, qs, counter = _kron_step(
            leaves,
            mus,
            qs,
            state.count,
            state.update_counter,
            hp["preconditioner_update_probability"],
            hp["b1"],
            self.complement("b1", hp),
            hp["preconditioner_lr"],
            seed=self.seed,
            normalize_grads=self.normalize_grads,
            momentum_into_precond_update=self.momentum_into_precond_update,
        )
        return treedef.unflatten(out), ScaleByKronState(
            count=safe_increment(state.count),
            mu=None if mus is None else treedef.unflatten(mus),
            qs=treedef.unflatten(qs),
            update_counter=counter,
            hyperparams=hp,
        )


scale_by_kron = ScaleByKron


@named_optimizer
def kron(
    learning_rate: ScalarOrSchedule = 0.001,
    b1: ScalarOrSchedule = 0.9,
    normalize_grads: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: MaskOrFn = None,
    preconditioner_update_probability: ScalarOrSchedule = PrecondUpdateProbSchedule(),
    max_size_triangular: int = 8192,
    min_ndim_triangular: int = 2,
    memory_save_mode: str | None = None,
    momentum_into_precond_update: bool = True,
    preconditioner_lr: ScalarOrSchedule = 0.1,
    preconditioner_init_scale: float = 1.0,
    mu_dtype: Any = None,
    precond_dtype: Any = None,
    *,
    seed: int = 5318008,
) -> Parts:
    r"""PSGD Kron: ``chain(scale_by_kron(...), add_decoupled_weight_decay(weight_decay,
    weight_decay_mask), scale_by_learning_rate(learning_rate))``, see :func:`scale_by_kron`;
    the step is :math:`p \leftarrow p - \eta (u_t + \lambda p)`. Defaults as psgd_jax's ``kron``
    (commit e462796), which adds the decay piece only when ``weight_decay > 0``: here it is
    always there (and needs ``params``), so the state's structure does not depend on its value.
    """
    return (
        scale_by_kron(
            b1,
            normalize_grads,
            preconditioner_update_probability,
            max_size_triangular,
            min_ndim_triangular,
            memory_save_mode,
            momentum_into_precond_update,
            preconditioner_lr,
            preconditioner_init_scale,
            mu_dtype,
            precond_dtype,
            seed=seed,
        ),
        add_decoupled_weight_decay(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
