"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner, refreshed every few steps."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_floating,
    check_int,
    check_number,
    check_tree_match,
    named_optimizer,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    count_power,
    ema,
    float32_or_better,
    init_count,
    leaf_kernel,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["ScaleBySoapState", "scale_by_soap", "soap"]


@state_class(extras=("hyperparams",))
class ScaleBySoapState:
    """``count``: updates done (the first only sets up the preconditioner); ``mu``: the first
    moment, in the parameters' basis; ``nu``: the second moment, in the eigenbasis; ``gg``: per
    leaf, per axis, Shampoo's statistic :math:`L_i` (None where the axis is not
    preconditioned); ``q``: per leaf, per axis, its eigenbasis :math:`Q_i`; ``hyperparams``: as
    used last."""

    count: jax.Array
    mu: Any
    nu: Any
    gg: Any
    q: Any
    hyperparams: dict | None


def _preconditioned(p, max_precond_dim: int) -> tuple[bool, ...]:
    if jnp.ndim(p) < 2:
        return (False,) * jnp.ndim(p)
    return tuple(d <= max_precond_dim for d in jnp.shape(p))


def _project(x, qs, back: bool = False):
    """``x`` multiplied along each preconditioned axis ``i`` by :math:`Q_i^T` (or :math:`Q_i`
    with ``back``)."""
    for i, q in enumerate(qs):
        if q is not None:
            x = jnp.moveaxis(jnp.tensordot(x, q, axes=([i], [1 if back else 0])), -1, i)
    return x


def _statistic(g, i):
    """:math:`G_{(i)} G_{(i)}^T`: the Gram matrix of the axis-``i`` unfolding of ``g``."""
    others = [a for a in range(g.ndim) if a != i]
    return jnp.tensordot(g, g, axes=(others, others))


def _eigenbasis(gg):
    """Eigenvectors of ``gg`` by decreasing eigenvalue (the authors' ``flip`` of ``eigh``)."""
    _, vecs = jnp.linalg.eigh(gg + 1e-30 * jnp.eye(gg.shape[0], dtype=gg.dtype))
    return vecs[:, ::-1]


def _refresh(gg, q, v, axis):
    """One power-iteration step towards the eigenbasis, as the authors'
    ``get_orthogonal_matrix_QR``: reorder the basis by its estimated eigenvalues (and the second
    moment with it), multiply by the statistic, re-orthonormalise by QR."""
    order = jnp.argsort(-jnp.diagonal(q.T @ gg @ q))
    q = q[:, order]
    return jnp.linalg.qr(gg @ q)[0], jnp.take(v, order, axis=axis)


@transformation("scale_by_soap", hyperparams=("b1", "b2", "eps"))
class ScaleBySoap(GradientTransformation):
    r"""Rescales updates by SOAP: Adam in the eigenbasis of Shampoo's Kronecker factors.

    For a leaf with axes :math:`i` of size at most ``max_precond_dim`` (every axis of a matrix
    or tensor; none of a vector or scalar, which get plain Adam), with :math:`G_{(i)}` the
    axis-:math:`i` unfolding of the gradient and :math:`g \times_i Q_i^T` the product along
    axis :math:`i`:

    .. math::
        L_i \leftarrow \beta_s L_i + (1-\beta_s) G_{(i)} G_{(i)}^T, \qquad
        \tilde g = g \times_1 Q_1^T \cdots \times_k Q_k^T, \\
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \tilde g^2, \\
        u_t = \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}
              \Big(\frac{\tilde m_t}{\sqrt{v_t} + \epsilon}\Big) \times_1 Q_1 \cdots \times_k Q_k

    with :math:`\tilde m_t` the first moment in the eigenbasis. The first update only sets
    :math:`L_i` and :math:`Q_i = \mathrm{eigh}(L_i)` (eigenvalues decreasing) and returns 0, as
    the authors' optimizer skips its first step; :math:`t` counts from the second. After each
    step the statistics take in the gradient, and every ``precondition_frequency`` steps each
    :math:`Q_i` takes one power-iteration step: columns sorted by
    :math:`\mathrm{diag}(Q_i^T L_i Q_i)` (and :math:`v` permuted with them), then
    :math:`Q_i = \mathrm{QR}(L_i Q_i)`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.95.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.95.
      shampoo_beta: :math:`\beta_s \in [0, 1)`, the statistics' decay (a number, not live),
        default None: ``b2`` (the authors' ``shampoo_beta=-1``).
      eps: :math:`\epsilon \ge 0`, added to :math:`\sqrt{v_t}` before the bias correction (as
        the authors' code), default 1e-8.
      precondition_frequency: steps between eigenbasis refreshes, default 10.
      max_precond_dim: axes longer than this are not preconditioned, default 10000.

    Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam" (2024),
    Algorithms 1-4, and the authors' ``SOAP`` (nikhilvyas/SOAP), whose defaults these are
    (``merge_dims=False``, ``precondition_1d=False``, ``normalize_grads=False``,
    ``correct_bias=True``). The authors keep the first moment in the eigenbasis and rotate it
    when :math:`Q` changes; it is kept here in the parameters' basis and projected each step,
    the same numbers. State memory: the two moments plus :math:`2\sum_i d_i^2` floats per leaf.
    optax has no counterpart.
    """

    b1: ScalarOrSchedule = 0.95
    b2: ScalarOrSchedule = 0.95
    shampoo_beta: float | None = None
    eps: ScalarOrSchedule = 1e-8
    precondition_frequency: int = 10
    max_precond_dim: int = 10000

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number(
            "shampoo_beta",
            self.shampoo_beta,
            low=0.0,
            high=1.0,
            high_open=True,
            allow_schedule=False,
            allow_none=True,
        )
        check_number("eps", self.eps, low=0.0)
        check_int("precondition_frequency", self.precondition_frequency, low=1)
        check_int("max_precond_dim", self.max_precond_dim, low=1)

    def init(self, params):
        check_floating(params, self.name)

        def factors(p):
            flags = _preconditioned(p, self.max_precond_dim)
            dt = float32_or_better(p.dtype)
            return tuple(
                jnp.zeros((d, d), dt) if on else None for d, on in zip(jnp.shape(p), flags)
            )

        gg = jax.tree.map(factors, params)
        return ScaleBySoapState(
            count=init_count(),
            mu=moments_like(params, float32=True),
            nu=moments_like(params, float32=True),
            gg=gg,
            q=gg,
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        bs = (
            hp["b2"]
            if self.shampoo_beta is None
            else jnp.asarray(self.shampoo_beta, hp["b2"].dtype)
        )
        scalars = dict(
            b1=hp["b1"],
            c1=1 - hp["b1"],
            b2=hp["b2"],
            c2=1 - hp["b2"],
            bs=bs,
            cs=1 - bs,
            eps=hp["eps"],
        )
        count = state.count
        # The bias corrections, scalars: formed once per step rather than once per leaf.
        t = jnp.maximum(count, 1)
        scalars["scale"] = jnp.sqrt(1 - count_power(hp["b2"], t)) / (1 - count_power(hp["b1"], t))
        leaves, treedef = jax.tree.flatten(updates)
        rest = [treedef.flatten_up_to(x) for x in (state.mu, state.nu, state.gg, state.q)]
        outs = [
            _soap_leaf(g, m, v, gg, q, count, self.precondition_frequency, **scalars)
            for g, m, v, gg, q in zip(leaves, *rest)
        ]
        u, mu, nu, gg, q = (treedef.unflatten([o[k] for o in outs]) for k in range(5))
        return u, ScaleBySoapState(
            count=safe_increment(count), mu=mu, nu=nu, gg=gg, q=q, hyperparams=hp
        )


scale_by_soap = ScaleBySoap


@leaf_kernel("frequency")
def _soap_leaf(g, m, v, gg, q, count, frequency, *, b1, c1, b2, c2, bs, cs, eps, scale):
    dt = float32_or_better(g.dtype)
    g32, m32, v32 = g.astype(dt), m.astype(dt), v.astype(dt)
    first = count == 0

    new_m = ema(m32, g32, b1.astype(dt), c1.astype(dt))
    new_v = ema(v32, jnp.square(_project(g32, q)), b2.astype(dt), c2.astype(dt))
    direction = _project(_project(new_m, q) / (jnp.sqrt(new_v) + eps.astype(dt)), q, back=True)
    u = jnp.where(first, 0, direction * scale.astype(dt))
    new_m = jnp.where(first, m32, new_m)
    new_v = jnp.where(first, v32, new_v)

    gg = tuple(
        None if s is None else ema(s, _statistic(g32, i), bs.astype(dt), cs.astype(dt))
        for i, s in enumerate(gg)
    )

    def setup(q, v):
        return tuple(qi if s is None else _eigenbasis(s) for s, qi in zip(gg, q)), v

    def refresh(q, v):
        out = []
        for i, (s, qi) in enumerate(zip(gg, q)):
            if s is not None:
                qi, v = _refresh(s, qi, v, i)
            out.append(qi)
        return tuple(out), v

    def keep(q, v):
        return tuple(q), v

    if any(s is not None for s in gg):
        branch = jnp.where(first, 0, jnp.where(count % frequency == 0, 1, 2))
        q, new_v = jax.lax.switch(branch, (setup, refresh, keep), tuple(q), new_v)
    return (
        u.astype(g.dtype),
        new_m.astype(m.dtype),
        new_v.astype(v.dtype),
        gg,
        tuple(q),
    )


@named_optimizer
def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    b1: ScalarOrSchedule = 0.95,
    b2: ScalarOrSchedule = 0.95,
    shampoo_beta: float | None = None,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    mask: MaskOrFn = None,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
) -> Parts:
    r"""SOAP: ``chain(scale_by_soap(...), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, see :func:`scale_by_soap`; defaults as the
    authors' ``SOAP``. The authors decay the parameters after the step,
    :math:`p \leftarrow (p - \eta u)(1 - \eta\lambda)`, and not on the first (set-up) step; here
    :math:`p \leftarrow p - \eta(u + \lambda p)` on every step, a difference of
    :math:`\eta^2\lambda u` per step.
    """
    return (
        scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
