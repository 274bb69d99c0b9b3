"""Matrix algorithms optimizers build on: power iteration, inverse p-th roots, non-negative least
squares.

These are optax's ``power_iteration``, ``matrix_inverse_pth_root`` and ``nnls``, with optax's
signatures, iterations and results; the arguments are checked up front and the errors name them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradchain.core.base import PyTree, check_int, check_number
from gradchain.core.tree import tree_norm, tree_scale, tree_sub, tree_vdot

__all__ = ["matrix_inverse_pth_root", "nnls", "power_iteration"]


def _normalized(tree: PyTree) -> PyTree:
    return tree_scale(1.0 / tree_norm(tree), tree)


def _check_square(name: str, matrix, where: str) -> None:
    shape = np.shape(matrix)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{where}: {name} must be a square matrix, got shape {shape}")


def power_iteration(
    matrix: jax.typing.ArrayLike | Callable[[PyTree], PyTree],
    *,
    v0: PyTree | None = None,
    num_iters: jax.typing.ArrayLike = 100,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
    key: jax.Array | None = None,
) -> tuple[jax.Array, PyTree]:
    r"""The dominant eigenvalue of a diagonalizable matrix and its unit eigenvector.

    .. math:: v_{k+1} = \frac{A v_k}{\|A v_k\|}, \qquad \lambda_{k+1} = v_k^\top A v_k

    stopping after ``num_iters`` products or once :math:`\|A v_k - \lambda v_k\| / |\lambda|`
    is below ``error_tolerance``.

    Args:
      matrix: a square array, or a function computing the product :math:`A v` of a pytree
        :math:`v` (a Hessian-vector product, say).
      v0: the starting vector: a vector for an array ``matrix``, a pytree shaped like the
        function's argument for a callable (then required). Default for an array: uniform in
        :math:`[-1, 1]` drawn with ``key``.
      num_iters: the most iterations (default 100).
      error_tolerance: the relative residual that stops the iteration (default 1e-6).
      precision: the precision of the matrix products (default ``HIGHEST``).
      key: the random key for the default ``v0`` (default ``jax.random.PRNGKey(0)``).

    Returns ``(eigenvalue, eigenvector)``, the eigenvector normalized in the Euclidean norm of
    the pytree. Same as ``optax.power_iteration``. A matrix whose dominant eigenvalue is not
    unique in magnitude need not converge.
    """
    if callable(matrix):
        matvec = matrix
        if v0 is None:
            raise ValueError(
                "power_iteration: v0 must be given when matrix is a function (the shape of "
                "its argument is not known)"
            )
    else:
        _check_square("matrix", matrix, "power_iteration")
        mat = jnp.asarray(matrix)

        def matvec(v):
            return jnp.matmul(mat, v, precision=precision)

        if v0 is None:
            v0 = jax.random.uniform(
                jax.random.PRNGKey(0) if key is None else key,
                shape=mat.shape[-1:],
                dtype=mat.dtype,
                minval=-1.0,
                maxval=1.0,
            )
    v0 = _normalized(v0)

    def not_done(carry):
        vec, product, eig, i = carry
        residual = tree_norm(tree_sub(product, tree_scale(eig, vec)))
        converged = jnp.abs(residual / eig) < error_tolerance
        return ~converged & (i < num_iters)

    def body(carry):
        _, product, _, i = carry
        vec = _normalized(product)
        product = matvec(vec)
        return vec, product, tree_vdot(vec, product), i + 1

    init = (v0, matvec(v0), jnp.asarray(0.0), jnp.asarray(0))
    _, product, eig, _ = lax.while_loop(not_done, body, init)
    return eig, _normalized(product)


def _matrix_power(m: jax.Array, p: int, precision) -> jax.Array:
    """``m ** p`` by repeated squaring (the products optax unrolls for p = 1, 2, 4, 8)."""
    result, square = None, m
    while True:
        if p % 2:
            result = square if result is None else jnp.matmul(result, square, precision=precision)
        p //= 2
        if not p:
            assert result is not None  # p >= 1 has a highest set bit
            return result
        square = jnp.matmul(square, square, precision=precision)


def matrix_inverse_pth_root(
    matrix: jax.typing.ArrayLike,
    p: jax.typing.ArrayLike,
    num_iters: jax.typing.ArrayLike = 100,
    ridge_epsilon: jax.typing.ArrayLike = 1e-6,
    error_tolerance: jax.typing.ArrayLike = 1e-6,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> tuple[jax.Array, Any]:
    r"""``(matrix + ridge)^(-1/p)`` of a symmetric positive semi-definite matrix, by the coupled
    Newton iteration (Higham, *Functions of Matrices*, 2008, eq. 7.18).

    With :math:`\alpha = -1/p`, :math:`\epsilon = \text{ridge\_epsilon} \cdot
    \max(\lambda_{\max}, 10^{-16})` (:math:`\lambda_{\max}` by :func:`power_iteration`),
    :math:`A = M + \epsilon I`, :math:`z = (1+p) / (2 \|A\|_F)`, :math:`M_0 = z A`,
    :math:`H_0 = z^{1/p} I`:

    .. math:: T_k = (1-\alpha) I + \alpha M_k, \qquad M_{k+1} = T_k^p M_k, \qquad
              H_{k+1} = H_k T_k

    until ``num_iters`` iterations or :math:`\max|M_k - I| \le` ``error_tolerance``; an
    iteration that raises the error by more than 20% is undone. Computed in float32 (a 1x1
    matrix in closed form).

    Args:
      matrix: a symmetric PSD matrix, shape ``(n, n)``.
      p: the root, a positive integer.
      num_iters: the most iterations (default 100).
      ridge_epsilon: the ridge, relative to the largest eigenvalue (default 1e-6).
      error_tolerance: the error :math:`\max|M_k - I|` that stops the iteration (default 1e-6).
      precision: the precision of the matrix products (default ``HIGHEST``).

    Returns ``(root, error)``, ``error`` the final :math:`\max|M_k - I|`. Same as
    ``optax.matrix_inverse_pth_root`` for p = 1, 2, 4, 8; for other p, optax raises
    :math:`T_k` to the power of two nearest p (``round(log2(p))``), which is not the p-th root,
    while here :math:`T_k^p` is formed exactly (docs/DIVERGENCES.md). ``p`` must therefore be a
    concrete integer, not a traced value.
    """
    _check_square("matrix", matrix, "matrix_inverse_pth_root")
    check_int("p", p, low=1, what="a positive int")
    check_number("ridge_epsilon", ridge_epsilon, low=0.0)
    check_number("error_tolerance", error_tolerance, low=0.0)
    p = int(np.asarray(p))
    matrix = jnp.asarray(matrix)
    size = matrix.shape[0]
    alpha = jnp.asarray(-1.0 / p, jnp.float32)
    identity = jnp.eye(size, dtype=jnp.float32)
    max_ev, _ = power_iteration(matrix, num_iters=100, error_tolerance=1e-6, precision=precision)
    ridge = ridge_epsilon * jnp.maximum(max_ev, 1e-16)

    if size == 1:
        return (matrix + ridge) ** alpha, 0

    def not_done(carry):
        i, _, _, _, error, improving = carry
        return (i < num_iters) & (error > error_tolerance) & improving

    def body(carry):
        i, mat_m, mat_h, _, error, _ = carry
        t = (1 - alpha) * identity + alpha * mat_m
        new_m = jnp.matmul(_matrix_power(t, p, precision), mat_m, precision=precision)
        new_h = jnp.matmul(mat_h, t, precision=precision)
        new_error = jnp.max(jnp.abs(new_m - identity))
        # The error may rise for an iteration before it falls; more than 20% means divergence.
        return i + 1, new_m, new_h, mat_h, new_error, new_error < error * 1.2

    damped = matrix + ridge * identity
    z = (1 + p) / (2 * jnp.linalg.norm(damped))
    m0 = damped * z
    h0 = identity * jnp.power(z, 1.0 / p)
    init = (0, m0, h0, h0, jnp.max(jnp.abs(m0 - identity)), True)
    _, mat_m, mat_h, previous_h, _, improving = lax.while_loop(not_done, body, init)
    error = jnp.max(jnp.abs(mat_m - identity))
    keep = jnp.asarray(improving, previous_h.dtype)
    root = keep * mat_h + (1 - keep) * previous_h
    return jnp.asarray(root, matrix.dtype), error


def _spectral_radius_bound(q: jax.Array) -> jax.Array:
    """``min(||Q||_F, ||Q||_1)``, an upper bound on the spectral radius of ``Q``."""
    frobenius = jnp.linalg.matrix_norm(q, ord="fro")
    one = jnp.linalg.matrix_norm(q, ord=1) if q.size else 0
    return jnp.minimum(frobenius, one)


def nnls(
    A: jax.Array,
    b: jax.Array,
    iters: int,
    unroll: int | bool = 1,
    L: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Non-negative least squares, :math:`\min_{x \ge 0} \|A x - b\|_2`, by Polyak's fast
    projected gradient (FPG) method.

    With :math:`Q = A^\top A`, :math:`q = A^\top b`, :math:`x_0 = p_0 = 0`, :math:`c_0 = 0`:

    .. math:: c_{k+1} = \tfrac{1 + \sqrt{1 + 4 c_k^2}}{2}, \quad
              x_{k+1} = \max\!\big(p_k - (Q p_k - q)/L,\ 0\big), \quad
              p_{k+1} = x_{k+1} + \tfrac{c_k - 1}{c_{k+1}} (x_{k+1} - x_k)

    Args:
      A: the matrix, shape ``(M, N)``.
      b: the target, shape ``(M,)`` or ``(M, K)`` (K problems at once).
      iters: the number of iterations (a positive int).
      unroll: ``lax.scan``'s unroll.
      L: an upper bound on the spectral radius of :math:`Q` (default
        :math:`\min(\|Q\|_F, \|Q\|_1)`; 0 is taken as 1).

    Returns ``x`` of shape ``(N,)`` or ``(N, K)``. Reference: R. A. Polyak, "Projected gradient
    method for non-negative least square", 2015. Same as ``optax.nnls``, which checks the shapes
    with ``assert``; here a ``ValueError`` names the argument.
    """
    if np.ndim(A) != 2:
        raise ValueError(f"nnls: A must be a matrix (M, N), got shape {np.shape(A)}")
    if np.ndim(b) not in (1, 2) or np.shape(b)[0] != np.shape(A)[0]:
        raise ValueError(
            f"nnls: b must have shape (M,) or (M, K) with M = {np.shape(A)[0]} (A's rows), "
            f"got {np.shape(b)}"
        )
    check_int("iters", iters, low=0, what="an int >= 0")
    q_mat = A.mT @ A
    q = A.mT @ b
    bound = _spectral_radius_bound(q_mat) if L is None else L
    bound = jnp.where(bound == 0, 1, bound)

    def step(carry, _):
        x, p, c = carry
        c_next = (1 + jnp.sqrt(1 + 4 * c**2)) / 2
        momentum = (c - 1) / c_next
        x_next = (p - (q_mat @ p - q) / bound).clip(0)
        return (x_next, x_next + momentum * (x_next - x), c_next), None

    x0 = jnp.zeros_like(b, shape=A.shape[-1:] + b.shape[1:])
    (x, _, _), _ = lax.scan(step, (x0, x0, 0.0), length=iters, unroll=unroll)
    return x
