r"""L-BFGS: the quasi-Newton direction from the last few steps, with a line search."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    Params,
    Parts,
    Updates,
    check_bool,
    check_floating,
    check_int,
    check_params_match,
    identity,
    named_optimizer,
    require_params,
    transformation,
)
from gradchain.core.numerics import init_count, safe_increment, state_dtype
from gradchain.core.tree import tree_norm, tree_vdot
from gradchain.transforms.linesearch import (
    compiled_when_eager,
    scalar_dtype,
    scale_by_zoom_linesearch,
)
from gradchain.transforms.scaling import scale, scale_by_learning_rate

__all__ = ["ScaleByLBFGSState", "lbfgs", "scale_by_lbfgs"]


class ScaleByLBFGSState(NamedTuple):
    r"""optax's fields: ``count``, updates done; ``params`` and ``updates``, the parameters and
    incoming updates of the latest step; ``diff_params_memory`` and ``diff_updates_memory``,
    the last ``memory_size`` differences :math:`s_j, y_j` stacked on a leading axis of each
    leaf (a ring buffer); ``weights_memory``, their :math:`\rho_j`. A NamedTuple, as optax's."""

    count: jax.Array  # type: ignore[assignment]  # optax's field name shadows tuple.count
    params: Params
    updates: Updates
    diff_params_memory: Params
    diff_updates_memory: Updates
    weights_memory: jax.Array


def _dot(x, y, dtype) -> jax.Array:
    return jnp.real(tree_vdot(x, y)).astype(dtype)


def _axpy(alpha, x, y):
    """``y + alpha * x`` in each leaf of ``y``'s dtype."""
    return jax.tree.map(lambda a, b: (b + alpha.astype(b.dtype) * a).astype(b.dtype), x, y)


def _two_loop(updates, s_memory, y_memory, rhos, gamma, newest):
    """:math:`H_k u` by the two-loop recursion, over the ring buffer oldest to newest.

    ``newest`` is the slot the next difference will be written to, so the oldest stored pair
    sits there and the walk starts from it.
    """
    m = rhos.shape[0]
    order = (newest + jnp.arange(m)) % m

    def pair(j):
        return jax.tree.map(lambda x: x[j], s_memory), jax.tree.map(lambda x: x[j], y_memory)

    def newest_first(q, j):
        s, y = pair(j)
        alpha = rhos[j] * _dot(s, q, rhos.dtype)
        return _axpy(-alpha, y, q), alpha

    q, alphas = jax.lax.scan(newest_first, updates, order, reverse=True)
    r = jax.tree.map(lambda x: (gamma.astype(x.dtype) * x).astype(x.dtype), q)

    def oldest_first(r, j_alpha):
        j, alpha = j_alpha
        s, y = pair(j)
        beta = rhos[j] * _dot(y, r, rhos.dtype)
        return _axpy(alpha - beta, s, r), beta

    r, _ = jax.lax.scan(oldest_first, r, (order, alphas))
    return r


@transformation("scale_by_lbfgs")
class ScaleByLBFGS(GradientTransformation):
    r"""Multiplies the updates by L-BFGS's approximation of the inverse Hessian.

    With :math:`w_k` the parameters and :math:`u_k` the incoming updates (gradients) of step
    :math:`k`, :math:`s_j = w_{j+1} - w_j`, :math:`y_j = u_{j+1} - u_j`,
    :math:`\rho_j = 1/\mathrm{Re}\langle y_j, s_j\rangle` (0 where that is 0), the output is
    :math:`H_k u_k` with

    .. math::
        H_k = V_{k-1}^\top \cdots V_{k-m}^\top (\gamma_k I) V_{k-m} \cdots V_{k-1}
        + \sum_{j=k-m}^{k-1} \rho_j\, V_{k-1}^\top \cdots V_{j+1}^\top s_j s_j^\top
        V_{j+1} \cdots V_{k-1},
        \qquad V_j = I - \rho_j y_j s_j^\top,

    over the last :math:`m` pairs, computed by the two-loop recursion without forming
    :math:`H_k`:

    .. math::
        q \leftarrow u_k;\ \text{for } j = k-1, \ldots, k-m:\ \alpha_j = \rho_j s_j^\top q,\
        q \leftarrow q - \alpha_j y_j; \quad r \leftarrow \gamma_k q;\
        \text{for } j = k-m, \ldots, k-1:\ \beta_j = \rho_j y_j^\top r,\
        r \leftarrow r + (\alpha_j - \beta_j) s_j.

    The initial scale is :math:`\gamma_k = \langle s_{k-1}, y_{k-1}\rangle /
    \lVert y_{k-1}\rVert^2` (1 if that is undefined) with ``scale_init_precond``, else 1; at
    the first step, :math:`\gamma_0 = \min(1, 1/\lVert u_0\rVert)`. The pair
    :math:`(s_{k-1}, y_{k-1})` is formed at step :math:`k` from the parameters passed to
    ``update``, so a line search after this transformation (as in :func:`lbfgs`) decides the
    step before it enters the memory. This gives the descent direction :math:`-H_k u_k` once
    negated.

    Args:
      memory_size: :math:`m \ge 1`, the number of pairs kept (default 10).
      scale_init_precond: use :math:`\gamma_k` above rather than 1 (default True).

    State: two copies of the parameters plus :math:`2m` (``4 + 2m`` floats per parameter in
    all), and :math:`m` weights.

    Reference: Nocedal & Wright, "Numerical Optimization" (2006), Algorithms 7.4 and 7.5;
    Liu & Nocedal, "On the limited memory BFGS method for large scale optimization" (1989).
    Same as ``optax.scale_by_lbfgs`` (state fields, ring-buffer order, :math:`\gamma_0`);
    the book takes :math:`H_0 = I` at the first step and skips pairs with
    :math:`y^\top s \le 0`, where optax and gradchain keep them with :math:`\rho = 1/y^\top s`
    and rely on the line search's curvature condition to keep :math:`y^\top s > 0`.
    """

    complex_params = True

    memory_size: int = 10
    scale_init_precond: bool = True

    def __post_init__(self):
        check_int("memory_size", self.memory_size, low=1)
        check_bool("scale_init_precond", self.scale_init_precond)

    def init(self, params):
        check_floating(params, self.name, complex_ok=True)
        m = self.memory_size
        # Differences and the updates' copy in float32 for low-precision parameters (the
        # recursion's inner products need it); the parameters' copy is exact in their dtype.
        stacked = jax.tree.map(lambda p: jnp.zeros((m, *p.shape), state_dtype(p.dtype)), params)
        return ScaleByLBFGSState(
            count=init_count(),
            params=jax.tree.map(lambda p: jnp.zeros(p.shape, p.dtype), params),
            updates=jax.tree.map(lambda p: jnp.zeros(p.shape, state_dtype(p.dtype)), params),
            diff_params_memory=stacked,
            diff_updates_memory=stacked,
            weights_memory=jnp.zeros((m,), scalar_dtype(params)),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        return compiled_when_eager(self._step, None, (updates, state, params))

    def _step(self, _, updates, state, params):
        m = self.memory_size
        dtype = state.weights_memory.dtype
        newest = state.count % m
        previous = (state.count - 1) % m
        started = state.count > 0

        s = jax.tree.map(
            lambda p, q, mem: jnp.where(started, p.astype(mem.dtype) - q.astype(mem.dtype), 0),
            params,
            state.params,
            state.diff_params_memory,
        )
        y = jax.tree.map(
            lambda u, v: jnp.where(started, u.astype(v.dtype) - v, 0).astype(v.dtype),
            updates,
            state.updates,
        )
        sy = _dot(y, s, dtype)
        rho = jnp.where(started & (sy != 0.0), 1.0 / sy, 0.0).astype(dtype)
        s_memory = jax.tree.map(lambda mem, x: mem.at[previous].set(x), state.diff_params_memory, s)
        y_memory = jax.tree.map(
            lambda mem, x: mem.at[previous].set(x), state.diff_updates_memory, y
        )
        rhos = state.weights_memory.at[previous].set(rho)

        if self.scale_init_precond:
            yy = tree_norm(y, squared=True).astype(dtype)
            gamma = jnp.where(yy > 0.0, _dot(y, s, dtype) / yy, 1.0)
            first = jnp.minimum(1.0, 1.0 / tree_norm(jax.lax.stop_gradient(updates)))
            gamma = jnp.where(started, gamma, first).astype(dtype)
        else:
            gamma = jnp.ones((), dtype)

        wide = jax.tree.map(lambda u, v: u.astype(v.dtype), updates, state.updates)
        direction = _two_loop(wide, s_memory, y_memory, rhos, gamma, newest)
        direction = jax.tree.map(lambda d, u: d.astype(u.dtype), direction, updates)
        return direction, ScaleByLBFGSState(
            count=safe_increment(state.count),
            params=jax.tree.map(lambda p, q: jnp.asarray(p).astype(q.dtype), params, state.params),
            updates=jax.tree.map(
                lambda u, v: jnp.asarray(u).astype(v.dtype), updates, state.updates
            ),
            diff_params_memory=s_memory,
            diff_updates_memory=y_memory,
            weights_memory=rhos,
        )


scale_by_lbfgs = ScaleByLBFGS


@named_optimizer
def lbfgs(
    learning_rate=None,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = scale_by_zoom_linesearch(
        max_linesearch_steps=20, initial_guess_strategy="one"
    ),
) -> Parts:
    r"""L-BFGS: ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1) or
    scale_by_learning_rate(learning_rate), linesearch)``.

    .. math::
        w_{k+1} = w_k - \eta_k\, \lambda\, H_k \nabla f(w_k),

    with :math:`H_k` from :func:`scale_by_lbfgs`, :math:`\lambda` the ``learning_rate`` (1 when
    None, the default) and :math:`\eta_k` the line search's step (default: a zoom line search
    for the strong Wolfe conditions, at most 20 evaluations, first trying :math:`\eta = 1`; None
    for :math:`\eta_k = 1`). ``update`` needs ``value=``, ``grad=`` and ``value_fn=`` when a line
    search is used; in a deterministic loop, :func:`value_and_grad_from_state` reuses the loss
    and gradient the search computed::

        value_and_grad = gradchain.value_and_grad_from_state(f)
        value, grad = value_and_grad(params, state=state)
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)

    State: :math:`2m + 2` parameter-sized buffers and the line search's (the gradient at the
    accepted step, one more).

    Reference: Nocedal & Wright, "Numerical Optimization" (2006), Algorithms 7.5, 3.5 and 3.6;
    Liu & Nocedal (1989). Same as ``optax.lbfgs`` (same defaults and chain).
    """
    base = scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate)
    return (
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        base,
        identity() if linesearch is None else linesearch,
    )
