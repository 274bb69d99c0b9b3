"""Schedule-Free: interpolation and averaging in place of momentum and of a decaying schedule.

Defazio et al. (2024) keep three sequences (ALGORITHMS.md §8): ``z``, the base optimizer's
iterate; ``x``, a weighted average of the ``z`` (where to evaluate); and ``y``, an interpolation of
the two where gradients are taken, which is what the model holds during training. Only ``y`` (the
params) and ``z`` (the state) are stored; ``x`` is recovered from them.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import jax
import jax.numpy as jnp

from gradchain.core.base import (
    Chain,
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    _call_update,
    check_bool,
    check_dtype,
    check_floating,
    check_int,
    check_number,
    check_params_match,
    check_tree_match,
    hyperparam_value,
    is_constant_hyperparam,
    require_params,
    require_values,
    state_class,
    transformation,
    tree_map_multi,
    with_live_hyperparams,
)
from gradchain.core.numerics import (
    compute_dtype,
    leaf_kernel,
    safe_increment,
    state_dtype,
)
from gradchain.optimizers.alias import sgd
from gradchain.transforms.adaptive import ScaleByAdam, scale_by_rms
from gradchain.transforms.decay import add_decoupled_weight_decay
from gradchain.transforms.momentum import Trace
from gradchain.transforms.scaling import scale_by_learning_rate

__all__ = [
    "ScheduleFreeState",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]


@state_class(extras=("hyperparams",))
class ScheduleFreeState:
    """optax's ``ScheduleFreeState``: ``b1``: the b1 that built the current params from x and z
    (x is recovered with it). Under :func:`~gradchain.with_live_hyperparams`, setting only the
    live ``hyperparams["b1"]`` (``gradchain.tree_utils.tree_set`` with a ``filtering``) changes
    b1 from the next update without disturbing x; ``tree_set(state, b1=...)`` sets this field
    too, so x is then read with the new b1, as in optax. ``weight_sum``: the sum of the
    averaging weights so far; ``step_count``: updates done plus one (1-based, as optax's);
    ``max_lr``: the largest learning rate seen; ``base_optimizer_state``; ``z``: the base
    optimizer's iterate; ``hyperparams`` (extra): learning_rate (as the averaging weights used
    it), b1, weight_lr_power and r of the latest update."""

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: Any
    z: Any
    hyperparams: dict | None


def _momentum_in(tx):
    """The first part of ``tx`` (searched through chains) that keeps a momentum, or None."""
    if isinstance(tx, Chain):
        for t in tx.transforms:
            found = _momentum_in(t)
            if found is not None:
                return found
        return None
    if isinstance(tx, ScaleByAdam) and not (isinstance(tx.b1, (int, float)) and tx.b1 == 0):
        return tx
    if isinstance(tx, Trace) and not (isinstance(tx.decay, (int, float)) and tx.decay == 0):
        return tx
    return None


@transformation("schedule_free", hyperparams=("learning_rate", "b1", "weight_lr_power", "r"))
class ScheduleFree(GradientTransformation):
    r"""Makes ``base_optimizer`` schedule-free: its steps move ``z``, the params are ``y``.

    With :math:`k` the 0-based update number, :math:`\Delta_k` the base optimizer's update at
    :math:`y_k` (it contains :math:`-\gamma_k`), :math:`\beta = b_1` and :math:`P` the
    ``weight_lr_power``:

    .. math::
        \gamma^{max}_k = \max_{i \le k} \gamma_i, \quad
        w_k = (k+1)^r (\gamma^{max}_k)^P, \quad c_k = \frac{w_k}{\sum_{i\le k} w_i}, \\
        z_{k+1} = z_k + \Delta_k, \quad
        x_{k+1} = (1-c_k)\, x_k + c_k\, z_{k+1}, \quad
        y_{k+1} = \beta\, x_{k+1} + (1-\beta)\, z_{k+1},

    and the update returned is :math:`y_{k+1} - y_k`. ``x`` is not stored: it is
    :math:`(y - (1-\beta) z)/\beta` (:func:`schedule_free_eval_params`). The first update with a
    positive weight has :math:`c = 1`, so after it :math:`x = y = z`.

    One step counter: the averaging weights use ``learning_rate(k)``, the same value a
    ``scale_by_learning_rate(learning_rate)`` inside ``base_optimizer`` uses at update ``k``, so the
    two agree step by step (as in the reference ``schedulefree`` package, where both are
    :math:`\gamma \cdot` the warmup factor of the same step).

    Args:
      base_optimizer: any transformation without momentum (its learning rate included).
        Momentum is what the interpolation replaces: a gradchain ``scale_by_adam`` with
        ``b1 != 0`` or ``trace`` with ``decay != 0`` inside it raises ``ValueError``.
      learning_rate: the base optimizer's learning rate (a float or a schedule); only its running
        maximum enters, through the weights.
      b1: :math:`\beta \in (0, 1]`, default 0.9.
      weight_lr_power: :math:`P \ge 0`, default 2.
      state_dtype: dtype of ``z``. Default: the parameter's, as optax (float32 for
        bfloat16/float16 parameters under ``with_float32_state``).
      r: :math:`r \ge 0`, the reference's polynomial weighting, default 0 (optax has none).
      optax_off_by_one: reproduce ``optax.contrib.schedule_free`` exactly, whose weights use
        ``learning_rate(k + 1)`` while the base optimizer's ``scale_by_learning_rate`` uses
        ``learning_rate(k)``. With a warmup the two then disagree (the first z-step has learning
        rate 0 while its weight does not); ALGORITHMS.md §8.2, §15 row 18. With a constant
        learning rate both settings are identical.

    Reference: Defazio et al., "The Road Less Scheduled" (2024); ``schedulefree`` 1.4.1.
    Differs from ``optax.contrib.schedule_free`` only through ``optax_off_by_one`` (default
    False) and in keeping ``weight_sum``/``max_lr`` in float32 (optax: the lowest parameter dtype).
    Complex parameters are supported when ``base_optimizer`` supports them (the interpolation is
    linear with real weights).
    """

    base_optimizer: Any
    learning_rate: ScalarOrSchedule
    b1: ScalarOrSchedule = 0.9
    weight_lr_power: ScalarOrSchedule = 2.0
    state_dtype: Any = None
    _: dataclasses.KW_ONLY
    r: ScalarOrSchedule = 0.0
    optax_off_by_one: bool = False

    def __post_init__(self):
        if not (hasattr(self.base_optimizer, "init") and hasattr(self.base_optimizer, "update")):
            raise ValueError(
                f"base_optimizer must be a gradient transformation, got {self.base_optimizer!r}"
            )
        found = _momentum_in(self.base_optimizer)
        if found is not None:
            raise ValueError(
                f"schedule_free: base_optimizer has momentum ({found!r}); schedule-free "
                f"interpolation replaces momentum, so the base must have none (b1=0 / no trace)"
            )
        check_number("learning_rate", self.learning_rate, low=0.0)
        check_number("b1", self.b1, low=0.0, high=1.0, low_open=True)
        check_number("weight_lr_power", self.weight_lr_power, low=0.0)
        check_number("r", self.r, low=0.0)
        check_dtype("state_dtype", self.state_dtype)
        check_bool("optax_off_by_one", self.optax_off_by_one)

    def init(self, params):
        check_floating(params, self.name, complex_ok=self.complex_params)
        require_values(params, self.name)
        # A distinct copy, so that both params and z can be donated to a jitted step.
        z = jax.tree.map(
            lambda p: jnp.array(p, dtype=state_dtype(p.dtype, self.state_dtype), copy=True), params
        )
        # Distinct arrays for every leaf: a jitted step may donate the whole state, and XLA
        # refuses to donate one buffer twice.
        zero = lambda: jnp.zeros((), jnp.result_type(float))
        hyperparams = self.init_hyperparams()
        return ScheduleFreeState(
            b1=jnp.array(hyperparams["b1"], copy=True),
            weight_sum=zero(),
            step_count=jnp.ones((), jnp.int32),
            max_lr=zero(),
            base_optimizer_state=self.base_optimizer.init(params),
            z=z,
            hyperparams=hyperparams,
        )

    def current_hyperparams(self, state) -> dict[str, jax.Array]:
        """As :meth:`GradientTransformation.current_hyperparams`, with schedules taken at the
        0-based update number ``step_count - 1`` (the state keeps optax's 1-based count)."""
        hp = super().current_hyperparams(state)
        if isinstance(state, ScheduleFreeState):
            k = state.step_count - 1
            for n in self.hyperparams:
                value = getattr(self, n)
                if callable(value):
                    hp[n] = hyperparam_value(value, k)
        return hp

    def update(self, updates, state, params=None, **extra_args):
        require_params(params, self.name)
        check_tree_match(updates, state.z, "updates", "state.z")
        check_params_match(updates, params)
        hp = self.current_hyperparams(state)
        k = state.step_count - 1
        if self.optax_off_by_one and callable(self.learning_rate):
            hp["learning_rate"] = hyperparam_value(self.learning_rate, state.step_count)
        max_lr, weight_sum, c = _average_weight(
            k, state.max_lr, state.weight_sum, hp["learning_rate"], hp["weight_lr_power"], hp["r"]
        )

        base_updates, base_state = _call_update(
            self.base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        b1 = hp["b1"]
        # A constant b1 is the b1 of every step (``state.b1`` holds it too): used as a constant,
        # as optax uses it, each leaf's kernel takes one runtime scalar fewer (compile time).
        b1_old = b1 if is_constant_hyperparam(b1) else state.b1
        new_updates, z = tree_map_multi(
            lambda y, z, delta: _schedule_free_leaf(y, z, delta, b1_old, b1, c),
            2,
            params,
            state.z,
            base_updates,
        )
        return new_updates, ScheduleFreeState(
            b1=b1,
            weight_sum=weight_sum,
            step_count=safe_increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
            hyperparams=hp,
        )


schedule_free = ScheduleFree


@leaf_kernel()
def _average_weight(k, max_lr, weight_sum, learning_rate, weight_lr_power, r):
    """The new ``max_lr`` and ``weight_sum`` and the interpolation weight ``c`` of step ``k``."""
    dt = weight_sum.dtype
    max_lr = jnp.maximum(max_lr, learning_rate.astype(dt))
    power, r = weight_lr_power.astype(dt), r.astype(dt)
    weight = (k.astype(dt) + 1) ** r * max_lr**power
    weight_sum = weight_sum + weight
    # 0/0 (no positive weight yet) means "keep x"; a NaN weight stays visible.
    c = jnp.where(
        jnp.isnan(weight) | jnp.isnan(weight_sum),
        jnp.nan,
        jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf),
    )
    return max_lr, weight_sum, c


@leaf_kernel()
def _schedule_free_leaf(y, z, delta, b1_old, b1, c):
    """One leaf: the update that moves ``y`` to its new interpolation, and the new ``z``."""
    ct = compute_dtype(jnp.promote_types(y.dtype, z.dtype))
    y32, z32 = y.astype(ct), z.astype(ct)
    z_new = z32 + delta.astype(ct)
    x = (y32 - (1 - b1_old.astype(ct)) * z32) / b1_old.astype(ct)
    x_new = (1 - c.astype(ct)) * x + c.astype(ct) * z_new
    y_new = b1.astype(ct) * x_new + (1 - b1.astype(ct)) * z_new
    return (y_new - y32).astype(delta.dtype), z_new.astype(z.dtype)


def _find_schedule_free_states(state) -> list:
    return [
        s
        for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, ScheduleFreeState))
        if isinstance(s, ScheduleFreeState)
    ]


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    r"""The parameters to evaluate a schedule-free model at: :math:`x = (y - (1-\beta) z)/\beta`.

    ``state`` is the state of a :func:`schedule_free` transformation, or of a chain holding
    exactly one; ``params`` are the training params :math:`y`. ``x`` has the params' dtypes.
    Same as ``optax.contrib.schedule_free_eval_params``.
    """
    found = _find_schedule_free_states(state)
    if len(found) != 1:
        raise ValueError(
            f"schedule_free_eval_params needs the state of exactly one schedule_free "
            f"transformation, found {len(found)} in {type(state).__name__}"
        )
    sf = found[0]
    check_tree_match(params, sf.z, "params", "state.z")
    b1 = sf.b1

    def to_x(y, z):
        ct = compute_dtype(jnp.promote_types(y.dtype, z.dtype))
        b = b1.astype(ct)
        return ((y.astype(ct) - (1 - b) * z.astype(ct)) / b).astype(y.dtype)

    return jax.tree.map(to_x, params, sf.z)


@dataclasses.dataclass(frozen=True)
class _LinearWarmup:
    """``peak * min(1, (k + offset) / warmup_steps)`` at update ``k``.

    ``offset=1`` is the reference ``schedulefree``'s warmup (the first update already uses
    ``peak / warmup_steps``); ``offset=0`` is optax's ``warmup_constant_schedule(0, peak,
    warmup_steps)`` (the first update uses 0).
    """

    peak: float
    warmup_steps: int
    offset: int = 1

    def __call__(self, count):
        frac = (jnp.asarray(count).astype(jnp.result_type(float)) + self.offset) / self.warmup_steps
        return self.peak * jnp.minimum(frac, 1.0)

    def __repr__(self):
        return (
            f"linear_warmup(peak={self.peak!r}, warmup_steps={self.warmup_steps}, "
            f"offset={self.offset})"
        )


def _warmed_up(learning_rate, warmup_steps, optax_off_by_one):
    if warmup_steps is None:
        return learning_rate
    check_int("warmup_steps", warmup_steps, low=1, what="None or a positive int")
    check_number("learning_rate", learning_rate, low=0.0, allow_schedule=False)
    return _LinearWarmup(learning_rate, warmup_steps, offset=0 if optax_off_by_one else 1)


class _ScheduleFreeOptimizer(GradientTransformation):
    """A named schedule-free optimizer: one :class:`ScheduleFree` transformation built from the
    optimizer's arguments (``inner``), so the state is one :class:`ScheduleFreeState`, as
    optax's."""

    def __post_init__(self):
        self.inner  # noqa: B018 (building it validates every argument)

    def _build(self) -> ScheduleFree:
        raise NotImplementedError

    def _over(self, base: GradientTransformation, lr) -> ScheduleFree:
        """:func:`schedule_free` of ``base`` with this optimizer's schedule-free arguments."""
        return schedule_free(
            base,
            lr,
            self.b1,  # type: ignore[attr-defined]
            self.weight_lr_power,  # type: ignore[attr-defined]
            self.state_dtype,  # type: ignore[attr-defined]
            optax_off_by_one=self.optax_off_by_one,  # type: ignore[attr-defined]
        )

    @property
    def inner(self) -> ScheduleFree:
        """The :func:`schedule_free` transformation this optimizer runs."""
        tx = self._build()
        return with_live_hyperparams(tx) if self.live_hyperparams else tx

    @property
    def complex_params(self) -> bool:
        return self.inner.complex_params

    def init(self, params: Params) -> OptState:
        return self.inner.init(params)

    def update(self, updates, state, params=None, **extra_args):
        return self.inner.update(updates, state, params, **extra_args)


@transformation("schedule_free_sgd")
class ScheduleFreeSGD(_ScheduleFreeOptimizer):
    r"""Schedule-Free SGD: :func:`schedule_free` over ``chain(add_decoupled_weight_decay, sgd)``.

    The base step is :math:`z \leftarrow z - \gamma_k (g_k + \lambda y_k)` (decay at ``y``, as
    the reference ``SGDScheduleFree``), with :math:`\gamma_k` = ``learning_rate`` after a linear
    warmup of ``warmup_steps``: :math:`\gamma_k = \gamma \min(1, (k+1)/W)` for the 0-based update
    :math:`k`, as the reference; with ``optax_off_by_one=True``, optax's
    :math:`\gamma \min(1, k/W)` for the base and :math:`\gamma \min(1, (k+1)/W)` for the weights
    (ALGORITHMS.md §8.2). Arguments and defaults as ``optax.contrib.schedule_free_sgd``.
    Memory: ``z``, one copy of the params.
    """

    learning_rate: ScalarOrSchedule = 1.0
    warmup_steps: int | None = None
    b1: ScalarOrSchedule = 0.9
    weight_decay: ScalarOrSchedule | None = None
    weight_lr_power: ScalarOrSchedule = 2.0
    state_dtype: Any | None = None
    _: dataclasses.KW_ONLY
    optax_off_by_one: bool = False

    def _build(self) -> ScheduleFree:
        lr = _warmed_up(self.learning_rate, self.warmup_steps, self.optax_off_by_one)
        base = sgd(lr)
        if self.weight_decay is not None:
            base = Chain(add_decoupled_weight_decay(self.weight_decay), base)
        return self._over(base, lr)


def schedule_free_sgd(
    learning_rate: ScalarOrSchedule = 1.0,
    warmup_steps: int | None = None,
    b1: ScalarOrSchedule = 0.9,
    weight_decay: ScalarOrSchedule | None = None,
    weight_lr_power: ScalarOrSchedule = 2.0,
    state_dtype: Any | None = None,
    *,
    optax_off_by_one: bool = False,
) -> ScheduleFreeSGD:
    """Schedule-Free SGD, one transformation with one :class:`ScheduleFreeState` as optax's; see
    :class:`ScheduleFreeSGD`. Arguments and defaults as ``optax.contrib.schedule_free_sgd``."""
    return ScheduleFreeSGD(
        learning_rate,
        warmup_steps,
        b1,
        weight_decay,
        weight_lr_power,
        state_dtype,
        optax_off_by_one=optax_off_by_one,
    )


@transformation("schedule_free_adamw")
class ScheduleFreeAdamW(_ScheduleFreeOptimizer):
    r"""Schedule-Free AdamW: :func:`schedule_free` over AdamW without momentum.

    The base step (the reference ``AdamWScheduleFree``):

    .. math::
        v_k = \beta_2 v_{k-1} + (1-\beta_2) g_k^2, \quad
        \hat g_k = \frac{g_k}{\sqrt{v_k/(1-\beta_2^{k+1})} + \epsilon} + \lambda y_k, \quad
        z_{k+1} = z_k - \gamma_k \hat g_k,

    with the warmup of :func:`schedule_free_sgd`. Arguments and defaults as
    ``optax.contrib.schedule_free_adamw``; ``optax_off_by_one=True`` reproduces it exactly with a
    warmup (see :func:`schedule_free`).

    The base's scaling is ``scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False,
    bias_correction=True)``, Adam without its first moment (as optax): the state is ``z`` and
    ``v``, 8 bytes per float32 parameter, like the reference's. ``b2`` is its live ``decay``.
    """

    learning_rate: ScalarOrSchedule = 0.0025
    warmup_steps: int | None = None
    b1: ScalarOrSchedule = 0.9
    b2: ScalarOrSchedule = 0.999
    eps: ScalarOrSchedule = 1e-8
    weight_decay: ScalarOrSchedule = 0.0
    weight_lr_power: ScalarOrSchedule = 2.0
    state_dtype: Any | None = None
    _: dataclasses.KW_ONLY
    optax_off_by_one: bool = False

    def _build(self) -> ScheduleFree:
        lr = _warmed_up(self.learning_rate, self.warmup_steps, self.optax_off_by_one)
        # Checked under the caller's name: scale_by_rms would call it ``decay``.
        check_number("b2", self.b2, low=0.0, high=1.0, high_open=True)
        base = Chain(
            scale_by_rms(decay=self.b2, eps=self.eps, eps_in_sqrt=False, bias_correction=True),
            add_decoupled_weight_decay(self.weight_decay),
            scale_by_learning_rate(lr),
        )
        return self._over(base, lr)


def schedule_free_adamw(
    learning_rate: ScalarOrSchedule = 0.0025,
    warmup_steps: int | None = None,
    b1: ScalarOrSchedule = 0.9,
    b2: ScalarOrSchedule = 0.999,
    eps: ScalarOrSchedule = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_lr_power: ScalarOrSchedule = 2.0,
    state_dtype: Any | None = None,
    *,
    optax_off_by_one: bool = False,
) -> ScheduleFreeAdamW:
    """Schedule-Free AdamW, one transformation with one :class:`ScheduleFreeState` as optax's;
    see :class:`ScheduleFreeAdamW`. Arguments and defaults as
    ``optax.contrib.schedule_free_adamw``."""
    return ScheduleFreeAdamW(
        learning_rate,
        warmup_steps,
        b1,
        b2,
        eps,
        weight_decay,
        weight_lr_power,
        state_dtype,
        optax_off_by_one=optax_off_by_one,
    )


# Annotations resolved, as optax's: code inspecting the signature (optax's tests pass a schedule
# where learning_rate is annotated ScalarOrSchedule) reads types, not the strings PEP 563 leaves.
_factory: Any
for _factory in (schedule_free_sgd, schedule_free_adamw):
    _factory.__signature__ = inspect.signature(_factory, eval_str=True)
