"""Adaptive (per-coordinate) scaling by moment estimates: Adam and its relatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradchain.base import (
    GradientTransformation,
    check_dtype,
    check_floating,
    check_number,
    check_tree_match,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.numerics import (
    bias_correction,
    compute_dtype,
    ema,
    init_count,
    safe_increment,
    state_dtype,
    zeros_like_param,
)

__all__ = ["scale_by_adam"]


@state_class
class ScaleByAdamState:
    """``count``: updates done (saturates at 2^31-1); ``mu``, ``nu``: first and second moments;
    ``hyperparams``: b1, b2, eps, eps_root as used by the latest update."""

    count: jax.Array
    mu: object
    nu: object
    hyperparams: dict


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
      mu_dtype, nu_dtype: dtypes of the moments. Default: the parameter's dtype, promoted to
        float32 for bfloat16/float16 parameters (optax keeps bfloat16 moments, whose
        :math:`\beta_2 = 0.999` rounds to 1 and stalls; ALGORITHMS.md §14).
      nesterov: use the Nesterov form above.

    Reference: Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015), Algorithm 1.
    Same as ``optax.scale_by_adam`` and ``torch.optim.Adam`` (epsilon after bias correction).
    The bias corrections are formed in float32 (float64 with x64); PyTorch forms them in Python
    double, a 1e-5 relative difference at step 1 for :math:`\beta_2 = 0.999`.
    """

    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    eps_root: float = 0.0
    mu_dtype: object = None
    nu_dtype: object = None
    nesterov: bool = False

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0)
        check_number("eps_root", self.eps_root, low=0.0)
        check_dtype("mu_dtype", self.mu_dtype)
        check_dtype("nu_dtype", self.nu_dtype)
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"nesterov must be a bool, got {self.nesterov!r}")

    def init(self, params):
        check_floating(params, self.name)
        mu = jax.tree.map(lambda p: zeros_like_param(p, state_dtype(p.dtype, self.mu_dtype)), params)
        nu = jax.tree.map(lambda p: zeros_like_param(p, state_dtype(p.dtype, self.nu_dtype)), params)
        return ScaleByAdamState(count=init_count(), mu=mu, nu=nu, hyperparams=self.init_hyperparams())

    def update(self, updates, state, params=None, **extra_args):
        check_tree_match(updates, state.mu, "updates", "state.mu")
        hp = self.current_hyperparams(state)
        b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
        c1, c2 = self.complement("b1", hp), self.complement("b2", hp)
        t = safe_increment(state.count)

        def step(g, m, v):
            dt = compute_dtype(g.dtype)
            g32 = g.astype(dt)
            m = ema(m.astype(dt), g32, b1.astype(dt), c1.astype(dt))
            v = ema(v.astype(dt), g32 * g32, b2.astype(dt), c2.astype(dt))
            if self.nesterov:
                m_hat = b1.astype(dt) * bias_correction(m, b1, safe_increment(t)) + (
                    1 - b1.astype(dt)
                ) * bias_correction(g32, b1, t)
            else:
                m_hat = bias_correction(m, b1, t)
            v_hat = bias_correction(v, b2, t)
            u = m_hat / (jnp.sqrt(v_hat + eps_root.astype(dt)) + eps.astype(dt))
            return u.astype(g.dtype), m, v

        out, mu, nu = tree_map_multi(step, 3, updates, state.mu, state.nu)
        mu = jax.tree.map(lambda new, old: new.astype(old.dtype), mu, state.mu)
        nu = jax.tree.map(lambda new, old: new.astype(old.dtype), nu, state.nu)
        return out, ScaleByAdamState(count=t, mu=mu, nu=nu, hyperparams=hp)


scale_by_adam = ScaleByAdam
