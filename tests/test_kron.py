"""PSGD Kron against the authors' algorithm, written out in numpy.

optax has no PSGD. The reference is psgd_jax's ``kron.py`` at commit e462796 (Evan Walters,
Dec 2024; a port of Xi-Lin Li's psgd_torch ``kron``) transcribed to float64 numpy as
docs/ALGORITHMS.md §16.7 states it: unfoldings and explicit inverses instead of einsum strings
and triangular solves, the authors' two-branch spectral-norm bound, no rebalancing of the
factors (the authors rebalance with probability 0.01; rebalancing leaves the preconditioner
and its updates unchanged in exact arithmetic). The random vectors are the ones gradchain
draws, fed in: ``normal(fold_in(fold_in(key(seed), k), j))`` for leaf ``j`` at update ``k``.
gradchain runs in float32 under ``jax.jit``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from crosscheck import float32_trajectory

import gradchain as gc

STEPS = 12
SEED = 3
# A matrix (two triangular factors), a vector and a scalar (diagonal), a 3-D tensor whose
# middle axis is longer than max_size_triangular below (triangular, diagonal, triangular).
SHAPES = {"w": (4, 5), "b": (6,), "t": (3, 10, 2), "s": ()}
MAX_SIZE = 8


def _params():
    return {
        k: np.linspace(-1.0, 1.0, max(int(np.prod(s)), 1)).reshape(s) for k, s in SHAPES.items()
    }


def _grads(seed=0):
    rng = np.random.default_rng(seed)
    return [{k: rng.standard_normal(s) + 0.3 for k, s in SHAPES.items()} for _ in range(STEPS)]


def _random_vectors(count, shapes):
    """What gradchain draws at update ``count`` (0-based), leaf by leaf in flattening order."""
    key = jax.random.fold_in(jax.random.key(SEED), count)
    return [
        np.asarray(jax.random.normal(jax.random.fold_in(key, j), s or (1,)), np.float64)
        for j, s in enumerate(shapes)
    ]


def _authors_probability(max_prob=1.0, min_prob=0.03, decay=0.001, flat_start=500):
    """psgd_jax's ``precond_update_prob_schedule``, called with the 1-based step."""
    return lambda n: min(max(max_prob * np.exp(-decay * (n - flat_start)), min_prob), max_prob)


def _unfold(x, i):
    return np.moveaxis(x, i, 0).reshape(x.shape[i], -1)


def _fold(m, i, shape):
    moved = (shape[i],) + tuple(s for a, s in enumerate(shape) if a != i)
    return np.moveaxis(m.reshape(moved), 0, i)


def _norm_lower_bound(a):
    """The authors' ``_norm_lower_bound``, both branches."""
    top = np.max(np.abs(a))
    if top == 0:
        return top
    a = a / top
    aa = a * a
    s0, s1 = aa.sum(axis=0), aa.sum(axis=1)
    i, j = np.argmax(s0), np.argmax(s1)
    if s0[i] > s1[j]:
        x = a[:, i] @ a
        return top * np.linalg.norm((x / np.linalg.norm(x)) @ a.T)
    x = a @ a[j, :]
    return top * np.linalg.norm(a.T @ (x / np.linalg.norm(x)))


class _Reference:
    """The authors' ``scale_by_kron`` followed by ``add_decayed_weights`` and the learning rate.

    Factors are kept as full matrices; a diagonal factor is a diagonal matrix updated with the
    diagonals of :math:`T_1, T_2`.
    """

    def __init__(self, params, *, b1, normalize, prob, mode, into, plr, init_scale, lr, wd):
        self.p = {k: np.array(v, np.float64) for k, v in params.items()}
        self.b1, self.normalize, self.prob, self.into = b1, normalize, prob, into
        self.plr, self.lr, self.wd = plr, lr, wd
        self.mu = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.count = 0
        self.counter = 0
        self.q, self.diag = {}, {}
        for k, v in self.p.items():
            shape = v.shape or (1,)
            largest = len(shape) - 1 - int(np.argmax(shape[::-1]))
            diag = [
                size == 1
                or size > MAX_SIZE
                or len(shape) < 2
                or mode == "all_diag"
                or (mode == "one_diag" and i == largest)
                for i, size in enumerate(shape)
            ]
            scale = init_scale ** (1 / len(shape))
            self.q[k] = [scale * np.eye(d) for d in shape]
            self.diag[k] = diag

    def _fit(self, k, h, v):
        qs, shape = self.q[k], h.shape
        h = h + np.sqrt(np.finfo(np.float32).eps) * np.mean(np.abs(h)) * v
        a, b = h, v
        for i, q in enumerate(qs):
            a = _fold(q @ _unfold(a, i), i, shape)
            b = _fold(np.linalg.inv(q).T @ _unfold(b, i), i, shape)
        new = []
        for i, q in enumerate(qs):
            t1 = _unfold(a, i) @ _unfold(a, i).T
            t2 = _unfold(b, i) @ _unfold(b, i).T
            if self.diag[k][i]:
                d1, d2 = np.diag(t1), np.diag(t2)
                step = self.plr * (d1 - d2) / (np.max(np.abs(d1 + d2)) + np.finfo(np.float32).tiny)
                new.append(q - np.diag(step) @ q)
            else:
                step = self.plr * np.triu(t1 - t2)
                step = step / (_norm_lower_bound(t1 + t2) + np.finfo(np.float32).tiny)
                new.append(q - step @ q)
        self.q[k] = new

    def step(self, grads):
        n = self.count + 1
        g = {k: np.array(v, np.float64).reshape(v.shape or (1,)) for k, v in grads.items()}
        if self.normalize:
            g = {k: v / (np.linalg.norm(v) + 1e-16) for k, v in g.items()}
        m = {}
        for k in g:
            if self.b1 > 0:
                self.mu[k] = self.b1 * self.mu[k].reshape(g[k].shape) + (1 - self.b1) * g[k]
                m[k] = self.mu[k] / (1 - self.b1**n)
            else:
                m[k] = g[k]
        self.counter += 1
        if self.counter >= 1 / self.prob(n):
            self.counter = 0
            keys = sorted(g)
            vs = _random_vectors(self.count, [SHAPES[k] for k in keys])
            for k, v in zip(keys, vs):
                self._fit(k, m[k] if self.into else g[k], v)
        for k in g:
            u = m[k]
            for i, q in enumerate(self.q[k]):
                u = _fold(q.T @ q @ _unfold(u, i), i, u.shape)
            self.p[k] = self.p[k] - self.lr * (u.reshape(self.p[k].shape) + self.wd * self.p[k])
        self.count += 1
        return {k: v.copy() for k, v in self.p.items()}


def _run(tx, grads):
    return float32_trajectory(tx, _params(), grads)


CASES = {
    "defaults": {},
    "annealed-one_diag": dict(
        schedule=dict(min_prob=0.3, decay=0.4, flat_start=3), mode="one_diag"
    ),
    "normalized-gradient-fit": dict(normalize=True, b1=0.5, into=False, plr=0.3, init_scale=2.0),
    "no-momentum-all_diag": dict(b1=0.0, prob=0.5, mode="all_diag"),
}


def _errors(case):
    r"""Per leaf, the largest difference from the authors' trajectory over the run, relative to
    the largest distance the leaf travelled, and the same for the preconditioner
    :math:`Q = \bigotimes_i Q_i` against its largest entry; and the final state."""
    c = CASES[case]
    b1, mode, normalize = c.get("b1", 0.9), c.get("mode"), c.get("normalize", False)
    into, plr, init_scale = c.get("into", True), c.get("plr", 0.1), c.get("init_scale", 1.0)
    if "schedule" in c:
        prob = gc.precond_update_prob_schedule(**c["schedule"])
        authors_prob = _authors_probability(**c["schedule"])
    else:
        prob = c.get("prob", gc.precond_update_prob_schedule())
        authors_prob = _authors_probability() if "prob" not in c else (lambda n: c["prob"])
    lr, wd = 0.05, 0.01
    tx = gc.kron(
        lr,
        b1,
        normalize,
        wd,
        preconditioner_update_probability=prob,
        max_size_triangular=MAX_SIZE,
        memory_save_mode=mode,
        momentum_into_precond_update=into,
        preconditioner_lr=plr,
        preconditioner_init_scale=init_scale,
        seed=SEED,
    )
    grads = _grads(seed=len(case))
    ref = _Reference(
        _params(),
        b1=b1,
        normalize=normalize,
        prob=authors_prob,
        mode=mode,
        into=into,
        plr=plr,
        init_scale=init_scale,
        lr=lr,
        wd=wd,
    )
    expected = [ref.step(g) for g in grads]
    ours, state = _run(tx, grads)
    p0 = _params()
    errors = {}
    for name in SHAPES:
        # The distance travelled, not the parameters (whose own size would hide errors),
        # against the largest distance of the run (float32 parameters resolve no finer).
        ours_steps = np.stack([a[name] - p0[name] for a in ours])
        ref_steps = np.stack([b[name] - p0[name] for b in expected])
        errors[name] = np.max(np.abs(ours_steps - ref_steps)) / np.max(np.abs(ref_steps))
        # The Kronecker product, as the rebalancing rescales the factors.
        ours_q = _kron_product([np.asarray(q, np.float64) for q in state.scale_by_kron.qs[name]])
        ref_q = _kron_product(ref.q[name])
        errors[name + ".Q"] = np.max(np.abs(ours_q - ref_q)) / np.max(np.abs(ref_q))
    return errors, state, ref


# The worst measured error of the four cases is 7.6e-7 (docs/ALGORITHMS.md §16.7): float32
# rounding of the steps, carried through 12 fits that each divide by a spectral-norm bound.
# 1e-5 leaves a margin of ten and still catches the smallest transcription error tried: no
# damping of the fit's input moves the run by 7e-5 (Q^-1 for Q^-T: 2e-2; no triu: 0.1; the
# Frobenius norm for the spectral bound: 8e-2; no bias correction: 0.4).
TOL = 1e-5


@pytest.mark.parametrize("case", list(CASES))
def test_kron_matches_the_authors_step(case):
    errors, state, ref = _errors(case)
    assert max(errors.values()) <= TOL, errors
    for name in SHAPES:
        qs = [np.asarray(q) for q in state.scale_by_kron.qs[name]]
        assert [q.ndim < 2 for q in qs] == ref.diag[name]
        assert all(np.array_equal(q, np.triu(q)) for q in qs if q.ndim == 2)


def _kron_product(factors):
    out = np.ones((1, 1))
    for f in factors:
        out = np.kron(out, f if f.ndim == 2 else np.diag(np.atleast_1d(f)))
    return out


def test_the_probability_schedule_is_the_authors_at_the_one_based_step():
    kw = dict(max_prob=0.9, min_prob=0.05, decay=0.3, flat_start=4)
    authors = _authors_probability(**kw)
    np.testing.assert_allclose(
        gc.precond_update_prob_schedule(**kw).values(20),
        [authors(n) for n in range(1, 21)],
        rtol=1e-6,
    )


def test_refits_follow_the_deterministic_counter():
    # p = 0.4: refit when the counter reaches 1/p = 2.5, i.e. on every third update.
    tx = gc.scale_by_kron(preconditioner_update_probability=0.4)
    g = jnp.arange(6.0).reshape(2, 3) + 1
    state = tx.init(g)
    refits = []
    for _ in range(7):
        before = state.qs[0]
        _, state = tx.update(g, state)
        refits.append(not np.array_equal(np.asarray(before), np.asarray(state.qs[0])))
    assert refits == [False, False, True, False, False, True, False]


@pytest.mark.parametrize(
    "shape, kw, triangular",
    [
        ((), {}, [False]),
        ((5,), {}, [False]),
        ((4, 1), {}, [True, False]),
        ((4, 9, 2), {"max_size_triangular": 8}, [True, False, True]),
        ((4, 9, 9), {"memory_save_mode": "one_diag"}, [True, True, False]),
        ((4, 5), {"memory_save_mode": "all_diag"}, [False, False]),
        ((4, 5), {"min_ndim_triangular": 3}, [False, False]),
    ],
)
def test_factor_shapes(shape, kw, triangular):
    qs = gc.scale_by_kron(**kw).init(jnp.zeros(shape)).qs
    assert [q.ndim == 2 for q in qs] == triangular
    assert tuple(q.shape[0] for q in qs if q.ndim) == shape


def test_the_initial_preconditioner_is_the_init_scale():
    qs = gc.scale_by_kron(preconditioner_init_scale=8.0).init(jnp.zeros((2, 3, 4))).qs
    np.testing.assert_allclose(_kron_product([np.asarray(q) for q in qs]), 8.0 * np.eye(24))


def test_without_momentum_no_momentum_is_kept():
    assert gc.scale_by_kron(b1=0.0).init({"w": jnp.zeros((2, 2))}).mu is None


def test_kron_arguments_are_validated_by_name():
    for kw, name in [
        ({"b1": 1.0}, "b1"),
        ({"preconditioner_update_probability": 0.0}, "preconditioner_update_probability"),
        ({"max_size_triangular": 2.5}, "max_size_triangular"),
        ({"min_ndim_triangular": -1}, "min_ndim_triangular"),
        ({"memory_save_mode": "some_diag"}, "memory_save_mode"),
        ({"preconditioner_lr": -0.1}, "preconditioner_lr"),
        ({"preconditioner_init_scale": 0.0}, "preconditioner_init_scale"),
        ({"normalize_grads": 1}, "normalize_grads"),
        ({"mu_dtype": jnp.int32}, "mu_dtype"),
        ({"seed": 1.5}, "seed"),
    ]:
        with pytest.raises(ValueError, match=name):
            gc.kron(0.1, **kw)
    with pytest.raises(ValueError, match="min_prob"):
        gc.precond_update_prob_schedule(min_prob=0.0)
