"""Sophia: momentum divided by a clipped, periodically refreshed estimate of the Hessian diagonal.

The Hessian estimate comes from a separate transformation, the *estimator*, whose ``update``
returns a diagonal estimate shaped like the parameters. Two are provided:

* :func:`hutchinson_estimator_diag_hessian` (Sophia-H):
  :math:`\\hat h = z \\odot (\\nabla^2 L\\, z)` with random :math:`z`; it needs the loss, passed as
  ``update(..., obj_fn=lambda p: loss(p))``.
* :func:`gauss_newton_bartlett_estimator_diag_hessian` (Sophia-G):
  :math:`\\hat h = B\\, \\hat g \\odot \\hat g` with :math:`\\hat g` the gradient of the loss on
  labels sampled from the model; it needs that gradient as a function,
  ``update(..., sampled_grad_fn=lambda p, key: grad_on_sampled_labels(p, key))``.

Any optax transformation computing a diagonal estimate also works as the estimator.
"""

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
    _call_update,
    check_bools,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_params_match,
    check_tree_match,
    cond,
    named_optimizer,
    require_params,
    state_class,
    transformation,
    tree_map_multi,
)
from gradchain.core.numerics import (
    bias_divisor,
    cast_like,
    compute_dtype,
    debias,
    ema,
    init_count,
    moments_like,
    safe_increment,
)
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "HutchinsonState",
    "SophiaState",
    "gauss_newton_bartlett_estimator_diag_hessian",
    "hutchinson_estimator_diag_hessian",
    "scale_by_sophia",
    "sophia",
]

_NOISES = ("rademacher", "gaussian")


def _as_key(seed, name):
    if seed is None:
        return jax.random.PRNGKey(0)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return jax.random.PRNGKey(seed)
    if isinstance(seed, jax.Array) and (
        jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
        or (seed.dtype == jnp.uint32 and seed.shape == (2,))
    ):
        return seed
    raise ValueError(f"{name}: random_seed must be None, an int or a PRNG key, got {seed!r}")


def _per_leaf_keys(key, tree):
    treedef = jax.tree.structure(tree)
    return treedef.unflatten(list(jax.random.split(key, treedef.num_leaves)))


def _check_callable_arg(transform_name, arg_name, fn, example):
    if fn is None:
        raise ValueError(
            f"{transform_name} needs {arg_name}: call update(grads, state, params, "
            f"{arg_name}={example})"
        )
    if not callable(fn):
        raise ValueError(f"{transform_name}: {arg_name} must be callable, got {fn!r}")


@state_class
class EstimatorState:
    """``key``: the PRNG key the next estimate draws its randomness from."""

    key: jax.Array


# optax's name for the Hutchinson estimator's state, ``HutchinsonState(key)``.
HutchinsonState = EstimatorState


@transformation("hutchinson_estimator_diag_hessian")
class HutchinsonEstimator(GradientTransformation):
    r"""Estimates the Hessian diagonal with Hutchinson's method (Sophia-H).

    .. math:: \hat h = z \odot (\nabla^2 L(p)\, z), \qquad
              \mathbb E[\hat h] = \mathrm{diag}\,\nabla^2 L(p)

    with :math:`z` Rademacher (default, as optax) or standard normal (``noise="gaussian"``, the
    paper; ALGORITHMS.md §15 row 16), drawn per leaf from a key kept in the state. The
    Hessian-vector product is forward-over-reverse (``jax.jvp`` of ``jax.grad``). The estimate
    is unbiased but may be negative.

    ``update(updates, state, params, obj_fn=...)`` needs ``obj_fn(params) -> scalar loss`` on
    the current batch; ``updates`` are ignored. The result is cast to each parameter's dtype.

    Args:
      random_seed: a PRNG key or an int (default: ``PRNGKey(0)``, as optax).
      noise: ``"rademacher"`` or ``"gaussian"``.

    With the same key this draws the same vectors as
    ``optax.contrib.hutchinson_estimator_diag_hessian``.
    """

    random_seed: Any = None
    _: dataclasses.KW_ONLY
    noise: str = "rademacher"

    def __post_init__(self):
        _as_key(self.random_seed, self.name)
        if self.noise not in _NOISES:
            raise ValueError(f"noise must be one of {_NOISES}, got {self.noise!r}")

    def init(self, params):
        check_floating(params, self.name)  # a Hessian needs float parameters
        return EstimatorState(key=_as_key(self.random_seed, self.name))

    def check_extra_args(self, params, obj_fn=None, **extra_args):
        """Raises a ``ValueError`` unless ``obj_fn`` is a function of params returning a scalar."""
        _check_callable_arg(self.name, "obj_fn", obj_fn, "lambda p: loss(p, batch)")
        out = jax.eval_shape(obj_fn, params)
        if not (hasattr(out, "shape") and out.shape == ()):
            raise ValueError(f"{self.name}: obj_fn(params) must return a scalar loss, got {out}")

    def update(self, updates, state, params=None, obj_fn=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        self.check_extra_args(params, obj_fn)
        key, subkey = jax.random.split(state.key)
        keys = _per_leaf_keys(subkey, params)

        def draw(p, k):
            if self.noise == "rademacher":
                z = jax.random.rademacher(k, jnp.shape(p), jnp.float32)
            else:
                z = jax.random.normal(k, jnp.shape(p), jnp.float32)
            return z.astype(p.dtype)

        z = jax.tree.map(draw, params, keys)
        hvp = jax.jvp(jax.grad(obj_fn), (params,), (z,))[1]
        estimate = jax.tree.map(lambda h, v: (h * v).astype(v.dtype), hvp, z)
        return estimate, EstimatorState(key=key)


def hutchinson_estimator_diag_hessian(
    random_seed: jax.Array | int | None = None, *, noise: str = "rademacher"
) -> HutchinsonEstimator:
    """The Hutchinson estimator of the Hessian diagonal; see :class:`HutchinsonEstimator`."""
    return HutchinsonEstimator(random_seed, noise=noise)


@transformation("gauss_newton_bartlett_estimator_diag_hessian")
class GaussNewtonBartlettEstimator(GradientTransformation):
    r"""Estimates the Gauss-Newton diagonal with the Bartlett identity (Sophia-G).

    .. math:: \hat h = B\; \hat g \odot \hat g, \qquad
              \hat g = \nabla_p \tfrac1B \textstyle\sum_b \ell(f(p, x_b), \hat y_b),
              \quad \hat y_b \sim \mathrm{softmax}(f(p, x_b))

    The estimate is never negative. ``update(updates, state, params, sampled_grad_fn=...)``
    needs ``sampled_grad_fn(params, key) -> grads``: the gradient of the mean loss over the
    mini-batch on labels sampled from the model with ``key`` (a fresh key from the state each
    call). ``updates`` are ignored.

    Args:
      batch_size: :math:`B \ge 1`, the number of examples (or tokens) the mean is over. The
        official SophiaG code leaves it out of the estimate and folds it into the step instead
        (:math:`\gamma = \rho \cdot B`); ``batch_size=1`` reproduces that.
      random_seed: a PRNG key or an int (default: ``PRNGKey(0)``).

    Reference: Liu et al. (2023), Algorithm 2.
    """

    batch_size: int
    random_seed: Any = None

    def __post_init__(self):
        check_int("batch_size", self.batch_size, low=1)
        _as_key(self.random_seed, self.name)

    def init(self, params):
        check_floating(params, self.name)  # a Hessian needs float parameters
        return EstimatorState(key=_as_key(self.random_seed, self.name))

    def check_extra_args(self, params, sampled_grad_fn=None, **extra_args):
        """Raises a ``ValueError`` unless ``sampled_grad_fn(params, key)`` returns a tree like
        ``params``."""
        _check_callable_arg(
            self.name,
            "sampled_grad_fn",
            sampled_grad_fn,
            "lambda p, key: grad_on_sampled_labels(p, batch, key)",
        )
        out = jax.eval_shape(sampled_grad_fn, params, jax.random.PRNGKey(0))
        check_tree_match(out, params, "sampled_grad_fn(params, key)", "params")

    def update(self, updates, state, params=None, sampled_grad_fn=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        self.check_extra_args(params, sampled_grad_fn)
        key, subkey = jax.random.split(state.key)
        grads = sampled_grad_fn(params, subkey)

        def estimate(g, p):
            dt = compute_dtype(g.dtype)
            return (self.batch_size * jnp.square(g.astype(dt))).astype(p.dtype)

        return jax.tree.map(estimate, grads, params), EstimatorState(key=key)


gauss_newton_bartlett_estimator_diag_hessian = GaussNewtonBartlettEstimator


@state_class(extras=("win_rate", "hyperparams"))
class SophiaState:
    """``count``: updates done; ``mu``: the momentum; ``nu``: the EMA of the Hessian-diagonal
    estimates; ``hessian_fn_state``: the estimator's state; ``win_rate``: the fraction of
    coordinates the latest update did *not* clip (the README of the official code advises
    keeping it in 0.1-0.5); ``hyperparams``: as used last."""

    count: jax.Array
    mu: Any
    nu: Any
    hessian_fn_state: Any
    win_rate: jax.Array | None
    hyperparams: dict | None


@transformation("scale_by_sophia", hyperparams=("b1", "b2", "eps", "gamma", "clip_threshold"))
class ScaleBySophia(GradientTransformation):
    r"""Rescales updates by Sophia: momentum over a clipped Hessian-diagonal estimate.

    With :math:`t` the 1-based step and :math:`k` the update interval,

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \qquad \hat m_t = m_t/(1-\beta_1^t),\\
        u_t = \mathrm{clip}\Big(\frac{\hat m_t}{\max(\gamma\, h, \epsilon)},\, -c,\, c\Big),\\
        h \leftarrow \beta_2 h + (1-\beta_2)\,\hat h(p_{t-1})
        \quad\text{on steps } t = 1, k+1, 2k+1, \dots

    By default (optax) the step uses the Hessian EMA from *before* the refresh, so the estimate
    taken at step 1 is first used at step 2 and step 1 is a pure sign step
    :math:`u_1 = c\,\mathrm{sign}(g_1)`. The fraction of coordinates with :math:`|u| < c` is kept
    as ``win_rate`` in the state.

    ``update(updates, state, params, **extra)`` passes the keyword arguments on to the
    estimator: ``obj_fn=`` for the default Hutchinson estimator, ``sampled_grad_fn=`` for
    Gauss-Newton-Bartlett. A missing one is a ``ValueError`` naming it.

    Args:
      b1: momentum decay in [0, 1), default 0.965.
      b2: Hessian EMA decay in [0, 1), default 0.99 (per refresh: effectively
        :math:`1-(1-\beta_2)/k` per step).
      eps: :math:`\epsilon > 0`, the floor of the denominator, default 1e-8 (0 would give 0/0 on
        the first step wherever a gradient is 0).
      gamma: :math:`\gamma \ge 0`, default 0.01 (the paper's :math:`\gamma`, or
        :math:`\rho\cdot B` of the official code).
      clip_threshold: :math:`c > 0`, default 1; None disables clipping (kept as ``inf``, so
        ``tree_set`` can turn it on later).
      update_interval: :math:`k \ge 1`, default 10.
      hessian_diagonal_fn: the estimator, default :func:`hutchinson_estimator_diag_hessian`.
      mu_dtype: dtype of the momentum (default: the parameter's, float32 for bf16/f16).
      verbose, print_win_rate_every_n_steps: print the win rate every n steps (n >= 1).
      mu_bias_correction: True (optax) divides :math:`m_t` by :math:`1-\beta_1^t`; the paper and
        the official code do not (ALGORITHMS.md §15 row 15).
      estimate_before_step: False (optax, and the official training loop up to the phase of
        the refresh) steps with the previous Hessian EMA and refreshes afterwards; True (the
        paper) refreshes first and steps with the new EMA on refresh steps.

    Reference: Liu et al., "Sophia: A Scalable Stochastic Second-order Optimizer for Language
    Model Pre-training" (2023). Same as ``optax.contrib.scale_by_sophia`` by default (which
    draws the same Rademacher vectors from the same key).
    """

    b1: ScalarOrSchedule = 0.965
    b2: ScalarOrSchedule = 0.99
    eps: ScalarOrSchedule = 1e-8
    gamma: ScalarOrSchedule = 0.01
    clip_threshold: ScalarOrSchedule | None = 1.0
    update_interval: int = 10
    hessian_diagonal_fn: Any = HutchinsonEstimator()
    mu_dtype: Any = None
    verbose: bool = False
    print_win_rate_every_n_steps: int = 0
    _: dataclasses.KW_ONLY
    mu_bias_correction: bool = True
    estimate_before_step: bool = False

    def __post_init__(self):
        check_number("b1", self.b1, low=0.0, high=1.0, high_open=True)
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        check_number("eps", self.eps, low=0.0, low_open=True)
        check_number("gamma", self.gamma, low=0.0)
        if self.clip_threshold is None:
            object.__setattr__(self, "clip_threshold", float("inf"))
        check_number("clip_threshold", self.clip_threshold, low=0.0, low_open=True)
        check_int("update_interval", self.update_interval, low=1)
        check_int("print_win_rate_every_n_steps", self.print_win_rate_every_n_steps, low=0)
        if not (
            hasattr(self.hessian_diagonal_fn, "init")
            and hasattr(self.hessian_diagonal_fn, "update")
        ):
            raise ValueError(
                "hessian_diagonal_fn must be a gradient transformation (with init and update) "
                f"returning a Hessian-diagonal estimate, got {self.hessian_diagonal_fn!r}"
            )
        check_dtype("mu_dtype", self.mu_dtype)
        check_bools(self, "verbose", "mu_bias_correction", "estimate_before_step")
        if self.verbose and self.print_win_rate_every_n_steps < 1:
            raise ValueError(
                "verbose=True prints the win rate every print_win_rate_every_n_steps steps, "
                f"which must then be >= 1, got {self.print_win_rate_every_n_steps}"
            )

    def init(self, params):
        check_floating(params, self.name)
        return SophiaState(
            count=init_count(),
            mu=moments_like(params, self.mu_dtype),
            nu=moments_like(params),
            hessian_fn_state=self.hessian_diagonal_fn.init(params),
            win_rate=jnp.ones((), jnp.float32),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.mu, "updates", "state.mu")
        check = getattr(self.hessian_diagonal_fn, "check_extra_args", None)
        if check is not None:
            check(params, **extra_args)
        hp = self.current_hyperparams(state)
        b1, b2, eps, gamma, clip = (
            hp["b1"],
            hp["b2"],
            hp["eps"],
            hp["gamma"],
            hp["clip_threshold"],
        )
        c1, c2 = self.complement("b1", hp), self.complement("b2", hp)
        t = safe_increment(state.count)
        k_b1: Any = bias_divisor(b1, t) if self.mu_bias_correction else None

        def refresh(fn_state, nu):
            estimate, fn_state = _call_update(
                self.hessian_diagonal_fn, updates, fn_state, params, extra_args
            )
            check_tree_match(estimate, nu, "the Hessian-diagonal estimate", "state.nu")

            def mix(h, n):
                dt = compute_dtype(n.dtype)
                return ema(n.astype(dt), h.astype(dt), b2.astype(dt), c2.astype(dt)).astype(n.dtype)

            return fn_state, jax.tree.map(mix, estimate, nu)

        def maybe_refresh(fn_state, nu):
            return cond(
                state.count % self.update_interval == 0,
                refresh,
                lambda f, n: (f, n),
                fn_state,
                nu,
            )

        fn_state, nu = state.hessian_fn_state, state.nu
        if self.estimate_before_step:
            fn_state, nu = maybe_refresh(fn_state, nu)

        def step(g, m, h):
            dt = compute_dtype(g.dtype)
            m = ema(m.astype(dt), g.astype(dt), b1.astype(dt), c1.astype(dt))
            m_hat = debias(m, k_b1) if self.mu_bias_correction else m
            return m_hat / jnp.maximum(gamma.astype(dt) * h.astype(dt), eps.astype(dt)), m

        raw, mu = tree_map_multi(step, 2, updates, state.mu, nu)
        raw_leaves = jax.tree.leaves(raw)
        kept = sum(
            jnp.sum(jnp.abs(u) < clip.astype(u.dtype), dtype=jnp.float32) for u in raw_leaves
        )
        # float32 like init's, also for a tree without leaves (where ``kept`` is the int 0).
        win_rate = jnp.asarray(kept / max(sum(u.size for u in raw_leaves), 1), jnp.float32)
        out = jax.tree.map(
            lambda u, g: jnp.clip(u, -clip.astype(u.dtype), clip.astype(u.dtype)).astype(g.dtype),
            raw,
            updates,
        )

        if not self.estimate_before_step:
            fn_state, nu = maybe_refresh(fn_state, nu)
        if self.verbose:
            cond(
                t % self.print_win_rate_every_n_steps == 0,
                lambda: jax.debug.print("Sophia win rate: {}", win_rate),
                lambda: None,
            )
        return out, SophiaState(
            count=t,
            mu=cast_like(mu, state.mu),
            nu=nu,
            hessian_fn_state=fn_state,
            win_rate=win_rate,
            hyperparams=hp,
        )


scale_by_sophia = ScaleBySophia


@named_optimizer
def sophia(
    learning_rate: ScalarOrSchedule,
    b1: ScalarOrSchedule = 0.965,
    b2: ScalarOrSchedule = 0.99,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 1e-4,
    weight_decay_mask: MaskOrFn = None,
    gamma: ScalarOrSchedule = 0.01,
    clip_threshold: ScalarOrSchedule = 1.0,
    update_interval: int = 10,
    hessian_diagonal_fn: GradientTransformation = HutchinsonEstimator(),
    mu_dtype: Any | None = None,
    verbose: bool = False,
    print_win_rate_every_n_steps: int = 0,
    *,
    mu_bias_correction: bool = True,
    estimate_before_step: bool = False,
) -> Parts:
    r"""Sophia with decoupled weight decay.

    ``chain(scale_by_sophia(...), add_decoupled_weight_decay(weight_decay, weight_decay_mask),
    scale_by_learning_rate(learning_rate))``:
    :math:`p_t = p_{t-1} - \eta_{t-1}\big(\mathrm{clip}(\hat m_t/\max(\gamma h, \epsilon), c)
    + \lambda p_{t-1}\big)`; see :func:`scale_by_sophia`. Pass the estimator's input to
    ``update``: ``tx.update(grads, state, params, obj_fn=lambda p: loss(p, batch))``.

    Same as ``optax.contrib.sophia`` by default. The official SophiaG code corresponds to
    ``mu_bias_correction=False``,
    ``hessian_diagonal_fn=gauss_newton_bartlett_estimator_diag_hessian(1)``,
    ``gamma = rho * tokens_per_step`` and ``eps = 1e-15``.
    """
    return (
        scale_by_sophia(
            b1,
            b2,
            eps,
            gamma,
            clip_threshold,
            update_interval,
            hessian_diagonal_fn,
            mu_dtype,
            verbose,
            print_win_rate_every_n_steps,
            mu_bias_correction=mu_bias_correction,
            estimate_before_step=estimate_before_step,
        ),
        add_decoupled_weight_decay(weight_decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
