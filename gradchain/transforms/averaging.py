"""Parameter averaging: an exponential moving average of the parameters, and Lookahead.

Both average *parameters*. optax's ``ema`` is something else: an EMA of the *updates* (a
momentum, ``e_t = decay e_{t-1} + (1 - decay) g_t``); its parameter average is the function
``optax.incremental_update(params, ema_params, 1 - decay)`` called by hand after each step, which
:func:`params_ema` does inside the optimizer, with its state saved and restored with the rest.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    GradientTransformation,
    ScalarOrSchedule,
    _call_update,
    check_bool,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_params_match,
    check_tree_match,
    count_of,
    require_params,
    require_values,
    state_class,
    transformation,
)
from gradchain.core.numerics import (
    as_dtype_of,
    compute_dtype,
    ema,
    init_count,
    safe_increment,
    state_dtype,
)

__all__ = [
    "LookaheadParams",
    "LookaheadState",
    "lookahead",
    "params_ema",
]


# ---------------------------------------------------------------------------------------------
# EMA of the parameters (Polyak averaging)


@state_class(extras=("count", "hyperparams"))
class ParamsEmaState:
    """``count``: updates done; ``params_ema``: the moving average of the parameters (after the
    latest update); ``hyperparams``: the decay the latest update used."""

    count: jax.Array | None
    params_ema: Any
    hyperparams: dict | None


@transformation("params_ema", hyperparams=("decay",))
class ParamsEma(GradientTransformation):
    r"""Keeps an exponential moving average of the parameters; passes the updates through.

    With :math:`p_t = p_{t-1} + u_t` the parameters after update :math:`t`,

    .. math:: \bar p_0 = p_0, \qquad \bar p_t = \delta\, \bar p_{t-1} + (1 - \delta)\, p_t

    Place it **last** in the chain, so that the updates it sees are those applied to the
    parameters; evaluate with ``gc.tree_get(state, "params_ema")``::

        tx = gc.chain(gc.adamw(3e-4), gc.params_ema(0.999))

    Args:
      decay: :math:`\delta \in [0, 1]` (a float or a schedule of the update count; a warm-up
        such as ``lambda t: jnp.minimum(0.999, (1 + t) / (10 + t))`` lets the average follow
        the early, fast-moving parameters).
      accumulator_dtype: dtype of the average. Default: the parameter's dtype, float32 for
        bfloat16/float16 parameters (a bfloat16 average with :math:`\delta = 0.999` would not
        move: ``bf16(0.999) == 1``).

    The average starts at the initial parameters, without bias correction, as in PyTorch's
    ``torch.optim.swa_utils.AveragedModel`` with an EMA ``multi_avg_fn`` and timm's
    ``ModelEmaV2``. It is not optax's ``ema``, which averages the updates; it is the
    ``optax.incremental_update(new_params, ema, 1 - decay)`` of a hand-written loop.
    """

    decay: ScalarOrSchedule
    accumulator_dtype: Any = None

    def __post_init__(self):
        check_number("decay", self.decay, low=0.0, high=1.0)
        check_dtype("accumulator_dtype", self.accumulator_dtype)

    def init(self, params):
        check_floating(params, self.name)
        require_values(params, self.name)
        average = jax.tree.map(
            lambda p: jnp.array(p, dtype=state_dtype(p.dtype, self.accumulator_dtype), copy=True),
            params,
        )
        return ParamsEmaState(
            count=init_count(), params_ema=average, hyperparams=self.init_hyperparams()
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_params_match(updates, params)
        check_tree_match(updates, state.params_ema, "updates", "state.params_ema")
        hp = self.current_hyperparams(state)
        decay = hp["decay"]

        def average(u, p, e):
            new_p = (p + u).astype(p.dtype)  # exactly what apply_updates will make
            dt = compute_dtype(e.dtype)
            return ema(e.astype(dt), new_p.astype(dt), decay.astype(dt)).astype(e.dtype)

        averaged = jax.tree.map(average, updates, params, state.params_ema)
        return updates, ParamsEmaState(
            count=safe_increment(count_of(state)), params_ema=averaged, hyperparams=hp
        )


params_ema = ParamsEma


# ---------------------------------------------------------------------------------------------
# Lookahead


class LookaheadParams(NamedTuple):
    """The fast and slow parameters of :func:`lookahead`.

    Compute gradients at ``fast``; evaluate at ``slow``. Same as ``optax.LookaheadParams``.
    """

    fast: Any
    slow: Any

    @classmethod
    def init_synced(cls, params) -> LookaheadParams:
        """Fast and slow parameters both equal to ``params``."""
        return cls(fast=params, slow=params)


@state_class(extras=("count", "hyperparams"))
class LookaheadState:
    """``fast_state``: the fast optimizer's state; ``steps_since_sync``: fast steps since the
    last synchronisation; ``count``: updates done; ``hyperparams``: the slow step size used."""

    fast_state: Any
    steps_since_sync: jax.Array
    count: jax.Array | None
    hyperparams: dict | None


@transformation("lookahead", hyperparams=("slow_step_size",))
class Lookahead(GradientTransformation):
    r"""Lookahead: ``sync_period`` fast steps forward, then one step back towards the slow weights.

    The fast weights :math:`\theta` take the fast optimizer's steps; every :math:`k` steps the
    slow weights :math:`\phi` move towards them and the fast weights restart from there:

    .. math:: \phi \leftarrow \phi + \alpha (\theta - \phi), \qquad \theta \leftarrow \phi

    The parameters are a :class:`LookaheadParams` ``(fast, slow)`` and so are the updates::

        tx = gc.lookahead(gc.adam(1e-3), sync_period=6, slow_step_size=0.5)
        params = gc.LookaheadParams.init_synced(params)
        state = tx.init(params)
        grads = jax.grad(loss)(params.fast, batch)
        updates, state = tx.update(grads, state, params)
        params = gc.apply_updates(params, updates)   # evaluate params.slow

    Updates must be applied as returned, not transformed further.

    Args:
      fast_optimizer: the inner optimizer.
      sync_period: :math:`k \ge 1`, fast steps between synchronisations.
      slow_step_size: :math:`\alpha \in [0, 1]` (a float or a schedule).
      reset_state: restart the fast optimizer's state at each synchronisation.

    Reference: Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer: k steps forward, 1 step back"
    (2019), Algorithm 1. Same as ``optax.lookahead``.
    """

    fast_optimizer: Any
    sync_period: int
    slow_step_size: ScalarOrSchedule
    reset_state: bool = False

    def __post_init__(self):
        if not (hasattr(self.fast_optimizer, "init") and hasattr(self.fast_optimizer, "update")):
            raise TypeError(
                f"fast_optimizer must be a gradient transformation, got {self.fast_optimizer!r}"
            )
        check_int("sync_period", self.sync_period, low=1, what="an int >= 1")
        check_number("slow_step_size", self.slow_step_size, low=0.0, high=1.0)
        check_bool("reset_state", self.reset_state)

    def init(self, params):
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(
            fast_state=self.fast_optimizer.init(fast),
            steps_since_sync=jnp.zeros((), jnp.int32),
            count=init_count(),
            hyperparams=self.init_hyperparams(),
        )

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        if not isinstance(params, LookaheadParams):
            raise ValueError(
                f"{self.name} needs the parameters as gc.LookaheadParams(fast, slow) (use "
                f"LookaheadParams.init_synced(params)), got {type(params).__name__}"
            )
        check_tree_match(updates, params.fast, "updates", "params.fast")
        check_tree_match(params.slow, params.fast, "params.slow", "params.fast")
        hp = self.current_hyperparams(state)
        alpha = hp["slow_step_size"]
        fast_updates, fast_state = _call_update(
            self.fast_optimizer, updates, state.fast_state, params.fast, extra_args
        )
        sync = state.steps_since_sync == self.sync_period - 1
        # One merged step: the last fast step, then the synchronisation, with
        # d = fast + u - slow:  slow += alpha*d,  fast += u - (1 - alpha)*d.
        diff = jax.tree.map(lambda f, u, s: f + u - s, params.fast, fast_updates, params.slow)
        # The factors take the difference's dtype before multiplying, as optax's Python float
        # does: a bfloat16 step is rounded as optax rounds it.
        slow_updates = jax.tree.map(lambda d: as_dtype_of(alpha * sync, d) * d, diff)
        fast_updates = jax.tree.map(
            lambda u, d: (u - as_dtype_of(sync * (1 - alpha), d) * d).astype(u.dtype),
            fast_updates,
            diff,
        )
        if self.reset_state:
            fresh = self.fast_optimizer.init(params.fast)
            fast_state = jax.tree.map(lambda old, new: jnp.where(sync, new, old), fast_state, fresh)
        return LookaheadParams(fast=fast_updates, slow=slow_updates), LookaheadState(
            fast_state=fast_state,
            steps_since_sync=(state.steps_since_sync + 1) % self.sync_period,
            count=safe_increment(count_of(state)),
            hyperparams=hp,
        )


lookahead = Lookahead
