"""Lion: the sign of an interpolated momentum, one state array per parameter."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_dtype,
    check_floating,
    check_number,
    check_tree_match,
    named_optimizer,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    after,
    compute_dtype,
    ema,
    init_count,
    leaf_kernel,
    materialized,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScaleByLionState",
    "lion",
    "scale_by_lion",
]

_MODES = ("hard", "smooth", "refined")


@state_class(extras=("hyperparams",))
class ScaleByLionState:
    """``count``: updates done; ``mu``: the momentum :math:`m_t`; ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    hyperparams: dict | None


@transformation("scale_by_lion", hyperparams=("b1", "b2", "smooth_beta"))
class ScaleByLion(GradientTransformation):
    r"""Rescales updates to the sign of an interpolation of momentum and gradient (Lion).

    .. math::
        c_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad u_t = \mathrm{sign}(c_t), \qquad
        m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t

    (:math:`\beta_1` interpolates, :math:`\beta_2` decays the state). Every coordinate with
    :math:`c_t \ne 0` moves by exactly the learning rate.

    Args:
      b1: :math:`\beta_1 \in [0, 1]`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.99.
      mu_dtype: dtype of the momentum (default: the parameter's, float32 for bf16/f16).
      mode: ``"hard"`` (the sign, default), ``"smooth"`` (:math:`\tanh(\text{smooth\_beta}\,c)`)
        or ``"refined"`` (:math:`c` where :math:`|c| < 1`, else its sign).
      smooth_beta: :math:`> 0`, the slope of the ``"smooth"`` mode, default 1.

    Reference: Chen et al., "Symbolic Discovery of Optimization Algorithms" (2023).
    Same as ``optax.scale_by_lion``; ``lion-pytorch`` agrees with :func:`lion` (its
    ``decoupled_weight_decay=True`` divides the decay by the initial learning rate instead).
    """

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.99
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    mode: str = "hard"
    smooth_beta: ScalarOrSchedule = 1.0

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_dtype("mu_dtype", self.mu_dtype)
        if self.mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {self.mode!r}")
        check_number("smooth_beta", self.smooth_beta, low=0.0, low_open=True)

    def init(self, params):
        check_floating(params, self.name)
        return ScaleByLionState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        b1, b2 = hp["b1"], hp["b2"]
        c1, c2 = self.complement("b1", hp), self.complement("b2", hp)

        smooth_beta = hp["smooth_beta"]
        out, mu = tree_map_multi(
            lambda g, m: _lion_leaf(g, m, b1, b2, c1, c2, smooth_beta, mode=self.mode),
            2,
            updates,
            state.mu,
        )
        return out, ScaleByLionState(count=safe_increment(state.count), mu=mu, hyperparams=hp)


scale_by_lion = ScaleByLion


@leaf_kernel("mode")
def _lion_leaf(g, m, b1, b2, c1, c2, smooth_beta, mode: str):
    """One leaf of Lion: the update and the momentum, stored in its own dtype."""
    dt = compute_dtype(g.dtype)
    g32, m32 = g.astype(dt), m.astype(dt)
    c = ema(m32, g32, b1.astype(dt), c1.astype(dt))
    new = ema(m32, g32, b2.astype(dt), c2.astype(dt))
    if mode == "hard" and c.size >= _ORDERED_SIZE:
        # The update reads the old momentum, which the new one overwrites in place when the
        # state is donated: XLA:CPU cannot order the two kernels and copies the old momentum
        # into a temporary first (an extra pass, and above 32 MiB fresh pages at every step).
        # Writing the sign to memory as one byte and computing the momentum after it orders
        # them: no copy, a quarter of the temporary, and 1 byte read back instead of 4.
        code = materialized(_sign_code(c))
        return _sign_value(code, g.dtype), after(new, code).astype(m.dtype)
    if mode == "hard":
        u = jnp.sign(c)
    elif mode == "smooth":
        u = jnp.tanh(smooth_beta.astype(dt) * c)
    else:
        u = jnp.where(jnp.abs(c) < 1, c, jnp.sign(c))
    return u.astype(g.dtype), new.astype(m.dtype)


# Leaves from this size on (4 MiB in float32) are stepped without the momentum's copy
# (``_lion_leaf``). Each such leaf costs one more kernel to compile (about 10 ms of XLA:CPU's
# time); below this size the copy is cheap enough that the compile time would take more than
# 60 steps to win back.
_ORDERED_SIZE = 1 << 20

# int8 codes of sign(c): 1, -1, 0, and the values a float sign has besides (-0.0, NaN, -NaN).
_NEG_ZERO, _NAN, _NEG_NAN = 2, -128, -127


def _sign_code(c: jax.Array) -> jax.Array:
    negative = jnp.signbit(c)
    code = jnp.where(negative, _NEG_ZERO, 0)
    code = jnp.where(jnp.isnan(c), jnp.where(negative, _NEG_NAN, _NAN), code)
    code = jnp.where(c > 0, 1, jnp.where(c < 0, -1, code))
    return code.astype(jnp.int8)


def _sign_value(code: jax.Array, dtype) -> jax.Array:
    """``sign(c)`` in ``dtype`` from :func:`_sign_code`, bit for bit."""
    value = jnp.where(code == _NEG_ZERO, -0.0, code.astype(dtype))
    value = jnp.where(code == _NEG_NAN, -jnp.nan, value)
    return jnp.where(code == _NAN, jnp.nan, value).astype(dtype)


@named_optimizer
def lion(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: ScalarOrSchedule = 1e-3,
    mask: MaskOrFn = None,
) -> Parts:
    r"""Lion with decoupled weight decay.

    ``chain(scale_by_lion(b1, b2, mu_dtype), add_decoupled_weight_decay(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta_{t-1}(\mathrm{sign}(c_t) + \lambda p_{t-1})`. Same as
    ``optax.lion`` (default :math:`\lambda = 10^{-3}`; use a learning rate 3-10x smaller than
    AdamW's and a weight decay correspondingly larger).
    """
    return (
        scale_by_lion(b1, b2, mu_dtype),
        add_decoupled_weight_decay(weight_decay, mask),
        scale_by_learning_rate(learning_rate),
    )
