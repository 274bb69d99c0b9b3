"""Euclidean projections of pytrees onto convex sets, as in ``optax.projections``.

Each function returns ``argmin_{y in C} ||y - x||_2`` for a set ``C`` (a box, a ball, the
simplex, ...), treating the whole pytree as one vector, so that projected gradient descent is
``params = projection(apply_updates(params, updates), ...)``. Names, signatures and results are
optax's.
"""

from typing import Any

import jax
import jax.numpy as jnp
from jax import flatten_util

from gradchain.core import tree as tu

PyTree = Any

__all__ = [
    "projection_box",
    "projection_halfspace",
    "projection_hypercube",
    "projection_hyperplane",
    "projection_l1_ball",
    "projection_l1_sphere",
    "projection_l2_ball",
    "projection_l2_sphere",
    "projection_linf_ball",
    "projection_non_negative",
    "projection_simplex",
    "projection_vector",
]


def projection_non_negative(tree: PyTree) -> PyTree:
    """Projection onto the non-negative orthant: ``max(x, 0)`` leafwise."""
    return jax.tree.map(jax.nn.relu, tree)


def projection_box(tree: PyTree, lower: Any, upper: Any) -> PyTree:
    """Projection onto the box ``lower <= x <= upper``.

    ``lower`` and ``upper`` are scalars or trees with the structure of ``tree``.
    """
    return jax.tree.map(jnp.clip, tree, lower, upper)


def projection_hypercube(tree: PyTree, scale: Any = 1) -> PyTree:
    """Projection onto the hypercube ``0 <= x <= scale``."""
    return projection_box(tree, lower=0, upper=scale)


@jax.custom_jvp
def _unit_simplex(values: jax.Array) -> jax.Array:
    # Held, Wolfe and Crowder (1974) / Condat (2016): with u sorted decreasingly, the support
    # is the largest prefix k with u_k > (sum_{j<=k} u_j - 1) / k, and the projection is
    # max(x - tau, 0) with tau = (sum_{j<=k} u_j - 1) / k.
    u = jnp.sort(values)[::-1]
    cumsum = jnp.cumsum(u)
    k = jnp.arange(1, values.shape[0] + 1)
    support = jnp.count_nonzero(1 / k + (u - cumsum / k) > 0)
    return jax.nn.relu(1 / support + (values - cumsum[support - 1] / support))


@_unit_simplex.defjvp
def _unit_simplex_jvp(primals, tangents):
    # On the support S the projection is x_S - mean(x_S) + const, so its Jacobian is the
    # centering matrix on S and zero elsewhere.
    (values,), (values_dot,) = primals, tangents
    out = _unit_simplex(values)
    support = out > 0
    size = jnp.count_nonzero(support)
    return out, support * values_dot - jnp.dot(support, values_dot) / size * support


def projection_simplex(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the simplex ``{x >= 0, sum(x) = scale}`` of all entries of ``tree``.

    Differentiable (a custom JVP through the support of the result).
    """
    values, unravel = flatten_util.ravel_pytree(tree)
    return unravel(scale * _unit_simplex(values / scale))


def projection_l1_sphere(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the l1 sphere ``{||x||_1 = scale}``: the simplex projection of ``|x|``
    with the signs put back."""
    magnitudes = projection_simplex(jax.tree.map(jnp.abs, tree), scale)
    return tu.tree_mul(jax.tree.map(jnp.sign, tree), magnitudes)


def projection_l1_ball(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the l1 ball ``{||x||_1 <= scale}`` (identity inside it)."""
    return jax.lax.cond(
        tu.tree_norm(tree, ord=1) <= scale,
        lambda t: t,
        lambda t: projection_l1_sphere(t, scale),
        tree,
    )


def projection_l2_sphere(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the l2 sphere ``{||x||_2 = scale}``: ``scale * x / ||x||_2``."""
    return tu.tree_scale(scale / tu.tree_norm(tree), tree)


def projection_l2_ball(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the l2 ball ``{||x||_2 <= scale}``: ``x * scale / max(||x||_2, scale)``."""
    squared_norm = tu.tree_norm(tree, squared=True)
    return tu.tree_scale(scale / jnp.sqrt(jnp.maximum(squared_norm, scale**2)), tree)


def projection_linf_ball(tree: PyTree, scale: jax.typing.ArrayLike = 1) -> PyTree:
    """Projection onto the l-infinity ball ``{||x||_inf <= scale}``: clip to ``[-scale, scale]``."""
    return projection_box(
        tree, lower=tu.tree_full_like(tree, -scale), upper=tu.tree_full_like(tree, scale)
    )


def projection_vector(x: PyTree, a: PyTree) -> PyTree:
    """Projection of ``x`` onto the line spanned by ``a``: ``(<x, a> / <a, a>) a``."""
    return tu.tree_scale(tu.tree_vdot(x, a) / tu.tree_vdot(a, a), a)


def _hyperplane_step(x: PyTree, a: PyTree, b) -> jax.Array:
    return (b - tu.tree_vdot(x, a)) / tu.tree_vdot(a, a)


def projection_hyperplane(x: PyTree, a: PyTree, b: jax.typing.ArrayLike) -> PyTree:
    """Projection onto the hyperplane ``{y : <a, y> = b}``: ``x + ((b - <a, x>) / <a, a>) a``."""
    return tu.tree_add_scale(x, _hyperplane_step(x, a, b), a)


def projection_halfspace(x: PyTree, a: PyTree, b: jax.typing.ArrayLike) -> PyTree:
    """Projection onto the halfspace ``{y : <a, y> <= b}`` (identity inside it)."""
    return tu.tree_add_scale(x, jnp.clip(_hyperplane_step(x, a, b), max=0), a)
