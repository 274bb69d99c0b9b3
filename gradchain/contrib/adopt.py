"""ADOPT: Adam whose momentum averages gradients normalized by the *previous* second moment."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    MaskOrFn,
    Parts,
    ScalarOrSchedule,
    check_bools,
    check_dtype,
    check_number,
    named_optimizer,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import abs_sq, after, compute_dtype, ema, leaf_kernel
from gradchain.scale_out.flat import register_flat_safe
from gradchain.transforms.adaptive import (
    ScaleByAdamState,
    adam_step_inputs,
    init_adam_state,
)
from gradchain.transforms.decay import add_decayed_weights
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = ["adopt", "scale_by_adopt"]


def quarter_power(count: jax.Array) -> jax.Array:
    r"""The paper's clipping schedule :math:`c_t = t^{1/4}`."""
    return count**0.25


@transformation("scale_by_adopt", hyperparams=("b1", "b2", "eps"))
class ScaleByAdopt(GradientTransformation):
    r"""Rescales updates by ADOPT: the momentum of gradients normalized by the previous
    second moment, so that the normalizer is independent of the gradient it divides.

    With :math:`t` the 0-based step count (the paper's :math:`t`, whose step 0 only
    initializes :math:`v_0 = g_0^2` and emits a zero update),

    .. math::
        \tilde g_t = \mathrm{clip}\Big(\frac{g_t}{\max(\sqrt{v_{t-1}}, \epsilon)}, c_t\Big),
        \qquad m_t = \beta_1 m_{t-1} + (1-\beta_1) \tilde g_t, \qquad u_t = m_t, \\
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \qquad (t \ge 1),

    :math:`\mathrm{clip}(x, c) = \min(\max(x, -c), c)` with :math:`c_t` = ``clip_value_fn(t)``
    (default :math:`t^{1/4}`, no clipping with ``use_clipping=False``). With ``nesterov=True``,
    :math:`u_t = \beta_1 m_t + (1-\beta_1)\tilde g_t`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.9999.
      eps: :math:`\epsilon \ge 0`, the floor of the normalizer, default 1e-6.
      mu_dtype: dtype of the momentum (default: the parameter's, float32 for bf16/f16).
      nesterov, use_clipping, clip_value_fn: keyword-only, as above (defaults False, True,
        :math:`t^{1/4}`).

    State: ``count``, ``mu``, ``nu`` (optax's ``ScaleByAdamState``). Reference: Taniguchi et al.,
    "ADOPT: Modified Adam Can Converge with Any :math:`\beta_2` with the Optimal Rate" (NeurIPS
    2024), Algorithm 2 (clipped). Same as ``optax.contrib.scale_by_adopt`` and the authors'
    PyTorch ``ADOPT`` (iShohei220/adopt: ``clip_lambda(step)`` at the 0-based step, the first
    step only fills ``exp_avg_sq``); ``nesterov`` is optax's addition.
    """

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.9999
    eps: ScalarOrSchedule = 1e-6
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    nesterov: bool = False
    use_clipping: bool = True
    clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_bools(self, "nesterov", "use_clipping")
        if not callable(self.clip_value_fn):
            raise ValueError(
                f"clip_value_fn must be a function of the step count, got {self.clip_value_fn!r}"
            )

    def init(self, params):
        return init_adam_state(self, params, self.mu_dtype)

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        started = state.count > 0
        b1 = jnp.where(started, hp["b1"], 1)
        c1 = jnp.where(started, c1, 0)
        b2 = jnp.where(started, hp["b2"], 0)
        c2 = jnp.where(started, c2, 1)
        clip = self.clip_value_fn(state.count) if self.use_clipping else None
        out, mu, nu = tree_map_multi(
            lambda g, m, v: _adopt_leaf(
                g, m, v, b1, c1, b2, c2, hp["eps"], clip, nesterov=self.nesterov
            ),
            3,
            updates,
            state.mu,
            state.nu,
        )
        return out, ScaleByAdamState(count=t, mu=mu, nu=nu, hyperparams=hp)


scale_by_adopt = ScaleByAdopt
# Each coordinate alone (the clip value is one scalar per step): flat buffers give the same numbers.
register_flat_safe(ScaleByAdopt)


@leaf_kernel("nesterov")
def _adopt_leaf(g, m, v, b1, c1, b2, c2, eps, clip, nesterov: bool):
    dt = compute_dtype(g.dtype)
    g32, v32 = g.astype(dt), v.astype(dt)
    normed = g32 / jnp.maximum(jnp.sqrt(v32), eps.astype(dt))
    if clip is not None:
        c = jnp.asarray(clip).astype(dt)
        normed = jnp.clip(normed, -c, c)
    new_m = ema(m.astype(dt), normed, b1.astype(dt), c1.astype(dt))
    u = ema(new_m, normed, b1.astype(dt), c1.astype(dt)) if nesterov else new_m
    new_v = ema(v32, abs_sq(g32), b2.astype(dt), c2.astype(dt))
    if not nesterov:
        # new_m read the old v, which new_v overwrites in place (a donated state): written after
        # new_m, it needs no copy of the old v. (The Nesterov update reads the old v in the
        # parameters' kernel, which no order inside this step reaches.)
        new_v = after(new_v, new_m)
    return u.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)


@named_optimizer
def adopt(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.9999,
    eps: ScalarOrSchedule = 1e-6,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    use_clipping: bool = True,
    clip_value_fn: Callable[[jax.Array], jax.Array] = quarter_power,
    weight_decay: ScalarOrSchedule | None = None,
    mask: MaskOrFn = None,
) -> Parts:
    r"""ADOPT: ``chain(scale_by_adopt(...), add_decayed_weights(weight_decay, mask),
    scale_by_learning_rate(learning_rate))``, see :func:`scale_by_adopt`.

    Same as ``optax.contrib.adopt``, which has no weight decay: ``weight_decay`` and ``mask`` are
    gradchain's, keyword-only; with the default ``weight_decay=None`` the chain and its state
    are optax's two pieces. The decay is decoupled and multiplied by the learning rate, as the authors'
    ``ADOPT(decouple=True)``, except that the authors skip it at the initializing step 0, where
    this decays by :math:`\eta\lambda p_0`.
    """
    scale: tuple[GradientTransformation, ...] = (
        scale_by_adopt(
            b1,
            b2,
            eps,
            mu_dtype,
            nesterov=nesterov,
            use_clipping=use_clipping,
            clip_value_fn=clip_value_fn,
        ),
    )
    if weight_decay is not None:
        scale += (add_decayed_weights(weight_decay, mask),)
    elif mask is not None:
        raise ValueError("mask selects the leaves to decay: give weight_decay too")
    return (*scale, scale_by_learning_rate(learning_rate))
