"""Momentum: heavy-ball and Nesterov traces, and exponential moving averages of updates."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core import numerics
from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    check_bool,
    check_dtype,
    check_floating,
    check_number,
    check_tree_match,
    count_of,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    compute_dtype,
    init_count,
    safe_increment,
    state_dtype,
    zeros_like_param,
)

__all__ = [
    "EmaState",
    "TraceState",
    "ema",
    "trace",
]


@state_class(extras=("count", "hyperparams"))
class TraceState:
    """``count``: updates done; ``trace``: the momentum buffer ``b``; ``hyperparams``: decay."""

    count: jax.Array | None
    trace: Any
    hyperparams: dict | None


@transformation("trace", hyperparams=("decay",))
class Trace(GradientTransformation):
    r"""Heavy-ball or Nesterov momentum.

    .. math::
        b_t = g_t + \mu\, b_{t-1}, \qquad
        u_t = b_t \;\text{(heavy ball)} \quad\text{or}\quad u_t = g_t + \mu\, b_t \;\text{(Nesterov)}

    with :math:`b_0 = 0`. The learning rate is applied outside the buffer (by a later
    ``scale_by_learning_rate``), as in PyTorch's SGD and optax's ``sgd``.

    Args:
      decay: the momentum :math:`\mu \in [0, 1]` (a float or a schedule).
      nesterov: use Nesterov's look-ahead form.
      accumulator_dtype: dtype of the buffer. Default: the parameter's dtype, as optax
        (float32 for bfloat16/float16 parameters under ``with_float32_state``).

    Differs from PyTorch: torch's ``dampening`` has no equivalent (ALGORITHMS.md §15 row 1); with
    zero dampening the two agree exactly. Reference: Polyak (1964); Sutskever et al. (2013).
    """

    complex_params = True

    decay: ScalarOrSchedule
    nesterov: bool = False
    accumulator_dtype: Any = None

    def __post_init__(self):
        check_number("decay", self.decay, low=0.0, high=1.0)
        check_bool("nesterov", self.nesterov)
        check_dtype("accumulator_dtype", self.accumulator_dtype)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        buf = jax.tree.map(
            lambda p: zeros_like_param(p, state_dtype(p.dtype, self.accumulator_dtype)), params
        )
        return TraceState(count=init_count(), trace=buf, hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.trace, "updates", "state.trace")
        hp = self.current_hyperparams(state)
        mu = hp["decay"]
        out, buf = tree_map_multi(
            lambda g, b: _trace_leaf(g, b, mu, self.nesterov), 2, updates, state.trace
        )
        return out, TraceState(count=safe_increment(count_of(state)), trace=buf, hyperparams=hp)


trace = Trace


@numerics.leaf_kernel("nesterov")
def _trace_leaf(g, b, mu, nesterov: bool):
    dt = compute_dtype(g.dtype)
    g32, b32 = g.astype(dt), b.astype(dt)
    new_b = g32 + mu.astype(dt) * b32
    out = g32 + mu.astype(dt) * new_b if nesterov else new_b
    return out.astype(g.dtype), new_b.astype(b.dtype)


@state_class(extras=("hyperparams",))
class EmaState:
    """``count``: updates done; ``ema``: the moving average (not debiased);
    ``hyperparams``: decay."""

    count: jax.Array
    ema: Any
    hyperparams: dict | None


@transformation("ema", hyperparams=("decay",))
class Ema(GradientTransformation):
    r"""An exponential moving average of the updates, optionally debiased.

    .. math::
        e_t = \beta\, e_{t-1} + (1-\beta)\, g_t, \qquad
        u_t = e_t / (1-\beta^t) \text{ if debias else } e_t,

    with :math:`e_0 = 0` and :math:`t` the 1-based step number. Unlike :class:`trace`, the new
    update is weighted by :math:`1-\beta`. Adafactor's momentum is ``ema(b1, debias=False)``
    placed after the learning rate (ALGORITHMS.md §4.2).

    Args:
      decay: :math:`\beta \in [0, 1)` (a float or a schedule).
      debias: divide by :math:`1-\beta^t` (default True), so that the first update is
        :math:`g_1`.
      accumulator_dtype: dtype of ``ema``. Default: the parameter's dtype, promoted to float32
        for bfloat16/float16 parameters (optax keeps the parameter's dtype).

    Same as ``optax.ema``. PyTorch's SGD with ``dampening=momentum`` is close but copies
    :math:`g_1` into the buffer on the first step (ALGORITHMS.md §1, §15 row 1).
    """

    complex_params = True

    decay: ScalarOrSchedule
    debias: bool = True
    accumulator_dtype: Any = None

    def __post_init__(self):
        check_number("decay", self.decay, low=0.0, high=1.0, high_open=True)
        check_bool("debias", self.debias)
        check_dtype("accumulator_dtype", self.accumulator_dtype)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        acc = jax.tree.map(
            lambda p: zeros_like_param(p, state_dtype(p.dtype, self.accumulator_dtype)), params
        )
        return EmaState(count=init_count(), ema=acc, hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.ema, "updates", "state.ema")
        hp = self.current_hyperparams(state)
        decay = hp["decay"]
        t = safe_increment(state.count)
        divisor = numerics.bias_divisor(decay, t) if self.debias else None

        def step(g, e):
            dt = compute_dtype(jnp.promote_types(g.dtype, e.dtype))
            new_e = numerics.ema(e.astype(dt), g.astype(dt), decay.astype(dt))
            out = new_e if divisor is None else numerics.debias(new_e, divisor)
            return out.astype(g.dtype), new_e.astype(e.dtype)

        out, acc = tree_map_multi(step, 2, updates, state.ema)
        return out, EmaState(count=t, ema=acc, hyperparams=hp)


ema = Ema
