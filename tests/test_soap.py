"""SOAP against the authors' algorithm, written out in numpy.

optax has no SOAP. The reference is nikhilvyas/SOAP's ``SOAP.step`` (``merge_dims=False``,
``precondition_1d=False``, ``correct_bias=True``, ``normalize_grads=False``) transcribed to
float64 numpy as docs/ALGORITHMS.md §16.6 states it: the first moment lives in the eigenbasis
and is rotated when the basis changes (gradchain keeps it in the parameters' basis). The update
is invariant to the signs of the eigenvectors, so numpy's and XLA's ``eigh``/``qr`` sign choices
do not matter. gradchain runs in float32 under ``jax.jit``; eigenvectors of a float32 statistic
are accurate to about 1e-6 relative per refresh, hence 1e-4 over 14 steps.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from crosscheck import float32_trajectory

import gradchain as gc

STEPS = 14
# Every unfolding of the first gradient has full rank (a square matrix; a tensor whose axes are
# each shorter than the product of the others): the first eigenbasis is then unique up to signs.
# (With a rank-deficient first statistic, any basis of its null space is an eigenbasis, and the
# authors' and any other implementation may pick different ones.)
SHAPES = {"w": (4, 4), "t": (2, 3, 4), "b": (4,)}


def _params():
    return {k: np.linspace(-1.0, 1.0, int(np.prod(s))).reshape(s) for k, s in SHAPES.items()}


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s) + 0.3 for k, s in SHAPES.items()} for _ in range(STEPS)]


def _run(tx, grads):
    return float32_trajectory(tx, _params(), grads)[0]


class _Leaf:
    """The authors' per-parameter state and step, for one leaf."""

    def __init__(self, p, b1, b2, shampoo_beta, eps, frequency, max_dim):
        self.p, self.b1, self.b2, self.sb, self.eps, self.freq = (
            p,
            b1,
            b2,
            shampoo_beta,
            eps,
            frequency,
        )
        on = [p.ndim >= 2 and d <= max_dim for d in p.shape]
        self.gg = [np.zeros((d, d)) if o else None for d, o in zip(p.shape, on)]
        self.q = None
        self.step = 0
        self.m, self.v = np.zeros_like(p), np.zeros_like(p)

    def project(self, x, back=False):
        for i, q in enumerate(self.q):
            if q is not None:
                x = np.moveaxis(np.tensordot(x, q, axes=([i], [1 if back else 0])), -1, i)
        return x

    def update_preconditioner(self, g):
        if self.q is not None:
            self.m = self.project(self.m, back=True)
        for i, s in enumerate(self.gg):
            if s is not None:
                others = [a for a in range(g.ndim) if a != i]
                self.gg[i] = s + (1 - self.sb) * (np.tensordot(g, g, axes=(others, others)) - s)
        if self.q is None:
            self.q = [
                None if s is None else np.linalg.eigh(s + 1e-30 * np.eye(len(s)))[1][:, ::-1]
                for s in self.gg
            ]
        if self.step > 0 and self.step % self.freq == 0:
            for i, (s, q) in enumerate(zip(self.gg, self.q)):
                if s is None:
                    continue
                order = np.argsort(-np.diag(q.T @ s @ q))
                self.v = np.take(self.v, order, axis=i)
                self.q[i] = np.linalg.qr(s @ q[:, order])[0]
        self.m = self.project(self.m)

    def __call__(self, g, lr):
        if self.q is None:
            self.update_preconditioner(g)
            return self.p
        gp = self.project(g)
        self.step += 1
        self.m = self.b1 * self.m + (1 - self.b1) * gp
        self.v = self.b2 * self.v + (1 - self.b2) * gp * gp
        denom = np.sqrt(self.v) + self.eps
        step_size = lr * np.sqrt(1 - self.b2**self.step) / (1 - self.b1**self.step)
        self.p = self.p - step_size * self.project(self.m / denom, back=True)
        self.update_preconditioner(g)
        return self.p


def _reference(grads, lr, b1, b2, shampoo_beta, eps, frequency, max_dim):
    leaves = {
        k: _Leaf(p, b1, b2, shampoo_beta, eps, frequency, max_dim) for k, p in _params().items()
    }
    return [{k: leaves[k](g[k], lr) for k in SHAPES} for g in grads]


@pytest.mark.parametrize(
    "shampoo_beta, frequency, max_dim", [(None, 3, 10000), (0.9, 5, 10000), (None, 2, 3)]
)
def test_soap_matches_the_authors_step(shampoo_beta, frequency, max_dim):
    grads = _grads(seed=frequency)
    tx = gc.soap(
        0.01,
        0.95,
        0.95,
        shampoo_beta,
        1e-8,
        weight_decay=0.0,
        precondition_frequency=frequency,
        max_precond_dim=max_dim,
    )
    ref = _reference(grads, 0.01, 0.95, 0.95, shampoo_beta or 0.95, 1e-8, frequency, max_dim)
    for k, (a, b) in enumerate(zip(_run(tx, grads), ref)):
        for name in SHAPES:
            np.testing.assert_allclose(
                a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=f"{name} at step {k + 1}"
            )


def test_the_eigenbasis_makes_soap_differ_from_adam_on_matrices_only():
    grads = _grads(seed=1)
    ours = _run(gc.soap(0.01, weight_decay=0.0), grads)[-1]
    # Adam with the authors' bias correction (eps before it), first step skipped: SOAP on a vector.
    adam = _reference(grads, 0.01, 0.95, 0.95, 0.95, 1e-8, 10, 0)[-1]
    np.testing.assert_allclose(ours["b"], adam["b"], rtol=1e-5)
    assert not np.allclose(ours["w"], adam["w"], rtol=1e-3)


def test_the_first_update_only_sets_up_the_preconditioner():
    tx = gc.scale_by_soap()
    g = jnp.arange(6.0).reshape(3, 2)
    u, state = tx.update(g, tx.init(g))
    np.testing.assert_array_equal(np.asarray(u), 0.0)
    np.testing.assert_allclose(np.asarray(state.gg[0]), 0.05 * np.asarray(g @ g.T), rtol=1e-6)
    q = np.asarray(state.q[1])
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-6)


def test_soap_arguments_are_validated_by_name():
    for kw, name in [
        ({"precondition_frequency": 0}, "precondition_frequency"),
        ({"max_precond_dim": 2.5}, "max_precond_dim"),
        ({"shampoo_beta": 1.0}, "shampoo_beta"),
    ]:
        with pytest.raises(ValueError, match=name):
            gc.soap(0.1, **kw)
