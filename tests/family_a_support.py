"""Test support for the optimizer family (part A): loss-driven runs and their numpy twins.

The reference conventions (PyTorch's, the papers') are checked against numpy transcriptions of
the formulas in ALGORITHMS.md, run in float64; gradchain runs the same problem under
``jax.enable_x64`` so that both sides compute in float64 and agree to ~1e-12 unless the
algebra differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def committed(tree):
    """``tree`` placed on the default device.

    gradchain creates moments with the parameters' placement; parameters that are not
    committed to a device yet would make the second jitted step compile again.
    """
    return jax.device_put(tree, jax.devices()[0])


class Quadratic:
    """``L(p) = 1/2 sum a (p - c)^2`` over a two-leaf tree, ``a`` spread over [0.1, 10]."""

    def __init__(self, seed: int = 0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        shapes = {"w": (4, 3), "b": (5,)}
        self.a = {k: 10.0 ** rng.uniform(-1, 1, s) for k, s in shapes.items()}
        self.c = {k: rng.normal(size=s) for k, s in shapes.items()}
        self.p0 = {k: rng.normal(size=s) for k, s in shapes.items()}
        self.dtype = dtype

    def params(self):
        return committed({k: jnp.asarray(v, self.dtype) for k, v in self.p0.items()})

    def loss(self, p):
        return sum(
            0.5 * jnp.sum(jnp.asarray(self.a[k], p[k].dtype) * (p[k] - self.c[k]) ** 2)
            for k in sorted(p)
        )

    def grad_np(self, p):
        return {k: self.a[k] * (p[k] - self.c[k]) for k in p}


def run_on_loss(tx, params, loss, steps, apply_updates, extra=None, with_grads=False):
    """``steps`` jitted steps of ``tx`` on ``jax.grad(loss)``; returns (params per step, state).

    ``extra`` maps names to functions of ``loss`` giving ``update``'s keyword arguments (for
    example ``{"obj_fn": lambda loss: loss}``).
    """
    extra = extra or {}
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p, **{k: f(loss) for k, f in extra.items()})
        return apply_updates(p, u), s

    traj = []
    p = params
    for _ in range(steps):
        p, state = step(p, state)
        traj.append(p)
    return traj, state


def numpy_run(step_fn, problem, steps):
    """Runs a numpy reference ``step_fn(params, grads, t) -> params`` (t 1-based)."""
    p = {k: np.array(v, np.float64) for k, v in problem.p0.items()}
    traj = []
    for t in range(1, steps + 1):
        p = step_fn(p, problem.grad_np(p), t)
        traj.append(p)
    return traj
