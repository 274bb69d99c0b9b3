"""Adaptive (per-coordinate) scaling by moment estimates: Adam and its relatives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core import numerics
from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    Updates,
    check_bool,
    check_bools,
    check_dtype,
    check_floating,
    check_number,
    check_tree_match,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    abs_sq,
    adam_moments,
    bias_divisor,
    cast_like,
    compute_dtype,
    debias,
    ema,
    init_count,
    inverse_root,
    moments_like,
    nesterov_debiased,
    nesterov_divisors,
    safe_increment,
)

__all__ = [
    "ScaleByAdamState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "scale_by_adam",
    "scale_by_rms",
    "scale_by_stddev",
]


@state_class(extras=("hyperparams",))
class ScaleByAdamState:
    """``count``: updates done (saturates at 2^31-1); ``mu``, ``nu``: first and second moments;
    ``hyperparams``: b1, b2, eps, eps_root as used by the latest update."""

    count: jax.Array
    mu: Any
    nu: Any
    hyperparams: dict | None


def init_adam_state(tx: GradientTransformation, params, mu_dtype=None, nu_dtype=None):
    """The zero :class:`ScaleByAdamState` of ``tx`` (an Adam relative) for ``params``."""
    check_floating(params, tx.name, complex_ok=tx.complex_params)
    return ScaleByAdamState(
        count=init_count(),
        mu=moments_like(params, mu_dtype),
        nu=moments_like(params, nu_dtype),
        hyperparams=tx.init_hyperparams(),
    )


def check_adam_hyperparams(tx: Any) -> None:
    """Validates the hyperparameters every Adam relative has: ``b1``, ``b2`` in [0, 1), ``eps``
    and ``eps_root`` >= 0."""
    check_number("b1", tx.b1, low=0.0, high=1.0, high_open=True)
    check_number("b2", tx.b2, low=0.0, high=1.0, high_open=True)
    check_number("eps", tx.eps, low=0.0)
    check_number("eps_root", tx.eps_root, low=0.0)


def adam_step_inputs(tx: GradientTransformation, updates, state):
    r"""What every Adam relative's ``update`` starts from: ``(hp, c1, c2, t)``.

    Checks the updates against ``state.mu``; ``hp`` are the live hyperparameters, ``c1``, ``c2``
    the complements :math:`1-\beta_1`, :math:`1-\beta_2` and ``t`` the 1-based step.
    """
    check_tree_match(updates, state.mu, "updates", "state.mu")
    hp = tx.current_hyperparams(state)
    c1, c2 = tx.complement("b1", hp), tx.complement("b2", hp)
    return hp, c1, c2, safe_increment(state.count)


def step_moments(
    step: Callable[..., tuple[jax.Array, jax.Array, jax.Array]],
    updates: Updates,
    state: Any,
    count: jax.Array,
    hyperparams: dict[str, jax.Array],
    **other_fields: Any,
) -> tuple[Updates, Any]:
    """What every two-moment transformation's ``update`` ends with.

    Runs ``step(g, m, v) -> (u, m, v)`` over the leaves of ``updates``, ``state.mu`` and
    ``state.nu``; returns the tree of ``u`` and a copy of ``state`` holding the new moments (cast
    back to their dtypes), ``count``, ``hyperparams`` and ``other_fields``.
    """
    out, mu, nu = tree_map_multi(step, 3, updates, state.mu, state.nu)
    new_state = dataclasses.replace(
        state,
        count=count,
        mu=cast_like(mu, state.mu),
        nu=cast_like(nu, state.nu),
        hyperparams=hyperparams,
        **other_fields,
    )
    return out, new_state


@transformation("scale_by_adam", hyperparams=("b1", "b2", "eps", "eps_root"))
class ScaleByAdam(GradientTransformation):
    r"""Rescales updates by Adam's bias-corrected moment estimates.

    With :math:`t` the 1-based step number,

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \\
        \hat m_t = \frac{m_t}{1-\beta_1^t}, \qquad \hat v_t = \frac{v_t}{1-\beta_2^t}, \qquad
        u_t = \frac{\hat m_t}{\sqrt{\hat v_t + \epsilon_{root}} + \epsilon}.

    With ``nesterov=True`` (NAdam as in optax),
    :math:`\hat m_t = \beta_1 m_t/(1-\beta_1^{t+1}) + (1-\beta_1) g_t/(1-\beta_1^t)`.

    Args:
      b1: :math:`\beta_1 \in [0, 1)`, default 0.9.
      b2: :math:`\beta_2 \in [0, 1)`, default 0.999.
      eps: :math:`\epsilon \ge 0` added outside the square root, default 1e-8.
      eps_root: :math:`\epsilon_{root} \ge 0` added inside it (for meta-gradients), default 0.
      mu_dtype, nu_dtype: dtypes of the moments. Default: the parameter's dtype, as optax
        (bfloat16 moments, whose :math:`\beta_2 = 0.999` rounds to 1 and stalls, ALGORITHMS.md
        §14: ``with_float32_state`` keeps them in float32).
      nesterov: use the Nesterov form above.

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015), Algorithm 1.
    Same as ``optax.scale_by_adam`` and ``torch.optim.Adam`` (epsilon after bias correction).
    The bias corrections are formed in float32 (float64 with x64); PyTorch forms them in Python
    double, a 1e-5 relative difference at step 1 for :math:`\beta_2 = 0.999`.
    """

    complex_params = True

    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8
    eps_root: ScalarOrSchedule = 0.0
    mu_dtype: Any = None
    _: dataclasses.KW_ONLY
    nu_dtype: Any = None
    nesterov: bool = False

    def __post_init__(self):
        check_adam_hyperparams(self)
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("nu_dtype", self.nu_dtype)
        check_bool("nesterov", self.nesterov)

    def init(self, params):
        return init_adam_state(self, params, self.mu_dtype, self.nu_dtype)

    def update(self, updates, state, params=None, **extra_args):
        hp, c1, c2, t = adam_step_inputs(self, updates, state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        # The bias corrections' divisors are scalars: formed once here, not once per leaf.
        k1 = nesterov_divisors(b1, t) if self.nesterov else (bias_divisor(b1, t),)
        scalars = (b1, b2, eps, eps_root, c1, c2, k1, bias_divisor(b2, t))
        out, mu, nu = tree_map_multi(
            lambda g, m, v: _adam_leaf(g, m, v, *scalars, nesterov=self.nesterov),
            3,
            updates,
            state.mu,
            state.nu,
        )
        return out, ScaleByAdamState(count=t, mu=mu, nu=nu, hyperparams=hp)


scale_by_adam = ScaleByAdam


@numerics.leaf_kernel("nesterov")
def _adam_leaf(g, m, v, b1, b2, eps, eps_root, c1, c2, k1, k2, nesterov: bool):
    """One leaf of Adam: the update and the two moments, stored in their own dtypes.

    ``k1`` is ``(1 - b1^t,)``, or :func:`nesterov_divisors` with ``nesterov``; ``k2`` is
    ``1 - b2^t``.
    """
    g32, new_m, new_v = adam_moments(g, m, v, b1, c1, b2, c2)
    if nesterov:
        m_hat = nesterov_debiased(new_m, g32, b1, c1, *k1)
    else:
        m_hat = debias(new_m, *k1)
    v_hat = debias(new_v, k2)
    vt = v_hat.dtype
    u = m_hat / (jnp.sqrt(v_hat + eps_root.astype(vt)) + eps.astype(vt))
    return u.astype(g.dtype), new_m.astype(m.dtype), new_v.astype(v.dtype)


# ---------------------------------------------------------------------------------------------
# RMSProp's scalings


def _check_rms_args(tx) -> None:
    check_number("decay", tx.decay, low=0.0, high=1.0, high_open=True)
    check_number("eps", tx.eps, low=0.0)
    check_number("initial_scale", tx.initial_scale, low=0.0, allow_schedule=False)
    check_bools(tx, "eps_in_sqrt", "bias_correction")


@state_class(extras=("count", "hyperparams"))
class ScaleByRmsState:
    """``count``: updates done; ``nu``: the EMA of squared updates; ``hyperparams``: decay, eps
    as used by the latest update."""

    count: jax.Array | None
    nu: Any
    hyperparams: dict | None


@transformation("scale_by_rms", hyperparams=("decay", "eps"))
class ScaleByRms(GradientTransformation):
    r"""Divides updates by the root of an exponential moving average of their squares (RMSProp).

    .. math::
        \nu_t = \rho\, \nu_{t-1} + (1-\rho)\, g_t^2, \qquad
        \hat\nu_t = \nu_t / (1-\rho^t) \text{ if bias\_correction else } \nu_t, \\
        u_t = g_t / \sqrt{\hat\nu_t + \epsilon} \;\;(\texttt{eps\_in\_sqrt=True})
        \quad\text{or}\quad u_t = g_t / (\sqrt{\hat\nu_t} + \epsilon),

    with :math:`\nu_0` = ``initial_scale`` and :math:`t` the 1-based step number.

    Args:
      decay: :math:`\rho \in [0, 1)` (a float or a schedule), default 0.9.
      eps: :math:`\epsilon \ge 0` (a float or a schedule), default 1e-8.
      initial_scale: :math:`\nu_0 \ge 0`, default 0 (TensorFlow 1 used 1.0). A plain number:
        it is only used by ``init``.
      eps_in_sqrt: where :math:`\epsilon` goes, default True (inside the root).
      bias_correction: divide :math:`\nu_t` by :math:`1-\rho^t`, default False.

    ``nu`` keeps the parameter's dtype, as optax (float32 under ``with_float32_state``).
    Same as ``optax.scale_by_rms``; ``scale_by_rms(decay=b2, eps_in_sqrt=False,
    bias_correction=True)`` equals ``scale_by_adam(b1=0, b2=b2)``.

    Differs from PyTorch's ``RMSprop`` (ALGORITHMS.md §2, §15 rows 3-4): torch puts
    :math:`\epsilon` outside the root and defaults to :math:`\rho = 0.99` (``alpha``); use
    ``eps_in_sqrt=False, decay=0.99`` to reproduce it. Reference: Tieleman & Hinton, Lecture 6.5
    of "Neural Networks for Machine Learning" (2012).
    """

    complex_params = True

    decay: ScalarOrSchedule = 0.9
    eps: ScalarOrSchedule = 1e-8
    initial_scale: float = 0.0
    eps_in_sqrt: bool = True
    bias_correction: bool = False

    def __post_init__(self):
        _check_rms_args(self)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        nu = moments_like(params, fill=self.initial_scale)
        return ScaleByRmsState(count=init_count(), nu=nu, hyperparams=self.init_hyperparams())

    def kept_extras(self):
        # The bias correction needs the step count, which optax then keeps too.
        kept = super().kept_extras()
        return kept | {"count"} if self.bias_correction else kept

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "updates", "state.nu")
        hp = self.current_hyperparams(state)
        decay, eps = hp["decay"], hp["eps"]
        one_minus_decay = self.complement("decay", hp)
        t = safe_increment(state.count)

        divisor = bias_divisor(decay, t) if self.bias_correction else None

        def step(g, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            v = ema(v.astype(dt), abs_sq(g32), decay.astype(dt), one_minus_decay.astype(dt))
            v_hat = v if divisor is None else debias(v, divisor)
            u = inverse_root(v_hat, eps.astype(dt), self.eps_in_sqrt) * g32
            return u.astype(g.dtype), v

        out, nu = tree_map_multi(step, 2, updates, state.nu)
        return out, ScaleByRmsState(count=t, nu=cast_like(nu, state.nu), hyperparams=hp)


scale_by_rms = ScaleByRms


@state_class(extras=("count", "hyperparams"))
class ScaleByStddevState:
    """``count``: updates done; ``mu``, ``nu``: the EMAs of the updates and of their squares;
    ``hyperparams``: decay, eps as used by the latest update."""

    count: jax.Array | None
    mu: Any
    nu: Any
    hyperparams: dict | None


@transformation("scale_by_stddev", hyperparams=("decay", "eps"))
class ScaleByStddev(GradientTransformation):
    r"""Divides updates by a running estimate of their standard deviation (centered RMSProp).

    .. math::
        \mu_t = \rho\, \mu_{t-1} + (1-\rho)\, g_t, \qquad
        \nu_t = \rho\, \nu_{t-1} + (1-\rho)\, g_t^2, \\
        u_t = g_t / \sqrt{\max(\hat\nu_t - \hat\mu_t^2, 0) + \epsilon} \;\;(\texttt{eps\_in\_sqrt})
        \quad\text{or}\quad u_t = g_t / (\sqrt{\max(\hat\nu_t - \hat\mu_t^2, 0)} + \epsilon),

    where the hats divide both moments by :math:`1-\rho^t` when ``bias_correction`` is set.
    :math:`\mu_0 = 0`, :math:`\nu_0` = ``initial_scale``.

    Args: as :class:`scale_by_rms` (decay 0.9, eps 1e-8, initial_scale 0, eps_in_sqrt True,
    bias_correction False).

    The variance estimate is clamped at 0: in exact arithmetic :math:`\hat\nu \ge \hat\mu^2`, but
    rounding can make the difference slightly negative, where optax's ``scale_by_stddev`` returns
    NaN (with ``eps_in_sqrt=False``, or when the excursion exceeds eps). Otherwise the same as
    optax. PyTorch's ``RMSprop(centered=True)`` is ``eps_in_sqrt=False, decay=0.99``
    (ALGORITHMS.md §2). Reference: Graves, "Generating Sequences With Recurrent Neural Networks"
    (2013), eq. 38-41.
    """

    complex_params = True

    decay: ScalarOrSchedule = 0.9
    eps: ScalarOrSchedule = 1e-8
    initial_scale: float = 0.0
    eps_in_sqrt: bool = True
    bias_correction: bool = False

    def __post_init__(self):
        _check_rms_args(self)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        return ScaleByStddevState(
            count=init_count(),
            mu=moments_like(params),
            nu=moments_like(params, fill=self.initial_scale),
            hyperparams=self.init_hyperparams(),
        )

    def kept_extras(self):
        # The bias correction needs the step count, which optax then keeps too.
        kept = super().kept_extras()
        return kept | {"count"} if self.bias_correction else kept

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.nu, "updates", "state.nu")
        hp = self.current_hyperparams(state)
        decay, eps = hp["decay"], hp["eps"]
        t = safe_increment(state.count)
        divisor = bias_divisor(decay, t) if self.bias_correction else None

        def step(g, m, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            m = ema(m.astype(dt), g32, decay.astype(dt))
            v = ema(v.astype(dt), abs_sq(g32), decay.astype(dt))
            m_hat, v_hat = m, v
            if divisor is not None:
                m_hat, v_hat = debias(m, divisor), debias(v, divisor)
            variance = jnp.maximum(v_hat - abs_sq(m_hat), 0)
            u = inverse_root(variance, eps.astype(dt), self.eps_in_sqrt) * g32
            return u.astype(g.dtype), m, v

        return step_moments(step, updates, state, t, hp)


scale_by_stddev = ScaleByStddev

# optax names of the same states.
ScaleByRStdDevState = ScaleByStddevState
