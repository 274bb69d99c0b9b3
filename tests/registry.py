"""Every public transformation, named optimizer and schedule of gradchain, ready to run.

The reliability suites (test_properties, test_bad_inputs, test_nonfinite, test_low_precision,
test_long_runs) are parameterized over :data:`TRANSFORMS` and :data:`SCHEDULES`. Each public name
of ``gradchain.__all__`` is either here or in :data:`NOT_TRANSFORMS` with the reason it is not a
transformation; ``test_registry_covers_every_public_name`` fails for a name that is in neither,
so a new optimizer cannot be forgotten. Adding one is one line::

    Entry("lion", lambda: gc.lion(1e-3), optimizer=True, nonfinite="coordinate"),

``Entry`` fields say what a transformation needs to run (extra ``update`` arguments, params,
matrix-shaped leaves, a parameter container) and how it treats a non-finite gradient, which
docs/guarantees.md and each transformation's API page show and ``test_nonfinite`` checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import gradchain as gc


def _by_ndim(tree):
    """A mask selecting the leaves with at least one axis (a callable mask: works for any tree)."""
    return jax.tree.map(lambda x: jnp.ndim(x) >= 1, tree)


def _below_2d(tree):
    """A mask selecting the scalars and vectors (freezing them leaves matrices to train)."""
    return jax.tree.map(lambda x: jnp.ndim(x) < 2, tree)


def _every_other_step(step):
    """A condition for conditionally_transform/mask: the inner optimizer runs at steps 0, 2, ..."""
    return step % 2 == 0


def _norm(tree):
    """A measurement for snapshot/monitor: the global norm, in float32."""
    return jnp.sqrt(
        sum(
            (jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)),
            jnp.zeros((), jnp.float32),
        )
    )


def _sum(tree):
    """Another measurement for monitor: the sum of every entry, in float32."""
    return sum(
        (jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32)
    )


def _labels_by_ndim(tree):
    return jax.tree.map(lambda x: "matrix" if jnp.ndim(x) >= 2 else "other", tree)


def _loss(params):
    """A scalar loss of any parameter tree, for the transformations that take ``obj_fn=``."""
    return sum(
        (jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(params)),
        jnp.zeros((), jnp.float32),
    )


def _sampled_grads(params, key):
    """A gradient tree for ``sampled_grad_fn=`` (Sophia's Gauss-Newton-Bartlett estimator)."""
    return jax.tree.map(lambda x: jnp.cos(x) * jax.random.normal(key, (), x.dtype), params)


SOPHIA_EXTRA = {"obj_fn": _loss}


@dataclasses.dataclass(frozen=True)
class FromParams:
    """An extra ``update`` argument computed from the parameters of the call (a line search's
    ``grad=`` has their structure); :meth:`Entry.extra_args` evaluates it."""

    fn: Callable[[Any], Any]


# What a line search needs: the loss at the parameters, its gradient and the loss function.
LINESEARCH_EXTRA = {
    "value": FromParams(_loss),
    "grad": FromParams(jax.grad(_loss)),
    "value_fn": _loss,
}
Q8 = dict(block_size=4, min_8bit_size=1)  # 8-bit states on the small test leaves
# (Their moments are int8 codes, so "floats only" is said rather than measured.)


def _one_device_mesh():
    return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])


# How a NaN in one coordinate of one leaf of the gradient shows in the updates of that step:
NONFINITE = {
    "coordinate": "only the coordinates that were NaN (elementwise algebra)",
    "slice": "every coordinate of the row or column that held it (a per-row or per-unit statistic)",
    "leaf": "every coordinate of the leaf that held it (a per-leaf norm or factorisation)",
    "tree": "every leaf (a global norm or a shared statistic)",
    "none": "nowhere: the transformation does not look at gradient values",
    "zeroed": "nowhere: the NaN is replaced by 0 (zero_nans) or the step is skipped",
    "held": "nowhere this step: accumulated, applied at the k-th micro-batch (MultiSteps), or a"
    " step emitted one update late (scale_by_rprop's optax default), or a first step that only"
    " sets up a preconditioner (scale_by_soap)",
}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One public transformation with valid arguments.

    name: the public name (``gc.<name>``); several entries may share a name (variants).
    build: makes the transformation.
    optimizer: a full optimizer (updates are steps to add to params, with a learning rate).
    extra: keyword arguments ``update`` needs (``value=`` for reduce_on_plateau); a
      :class:`FromParams` value is computed from the parameters (read with ``extra_args``).
    needs_params: ``update`` raises without params (and says so).
    matrices: every leaf must be a matrix (Muon's orthogonalisation, scale_by_shape).
    max_ndim: leaves may have at most this many axes (muon_labels sends every leaf with two
      axes or more to Muon, which needs dimension numbers beyond two).
    wrap_params: the parameter container the transformation expects (lookahead's
      ``LookaheadParams``); updates come out in the same container.
    abstract_init: ``init`` accepts ``jax.ShapeDtypeStruct`` leaves; False where the state
      starts at the parameters' values (and ``init`` raises a TypeError saying so).
    nonfinite: how a NaN gradient coordinate shows in this step's updates (see NONFINITE).
    keeps_nan: the NaN enters the state, so the updates of later, finite steps are non-finite.
    floats_only: ``init`` rejects integer and complex parameters (TypeError naming the leaf);
      None: decided by whether the state keeps float numbers per parameter element.
    param_copies: state fields that are copies of the parameters, kept in their dtype.
    warm_steps: un-jitted steps until every path of ``update`` has run once (MultiSteps runs
      its inner optimizer at the k-th micro-batch only); after them an un-jitted step compiles
      nothing (test_eager).
    per_example: ``update`` takes per-example gradients, this many examples along a new
      leading axis of every leaf (DP-SGD), and returns updates of the parameters' shapes; 0:
      the updates have the parameters' shapes. The suites pass :meth:`updates_arg` of their
      parameter-shaped gradients; :data:`PER_EXAMPLE_EXCLUDED` lists the checks that cannot
      take such an entry.
    """

    name: str
    build: Callable[[], Any]
    optimizer: bool = False
    extra: dict = dataclasses.field(default_factory=dict)
    needs_params: bool = False
    matrices: bool = False
    max_ndim: int | None = None
    wrap_params: Callable[[Any], Any] | None = None
    abstract_init: bool = True
    nonfinite: str = "coordinate"
    keeps_nan: bool = True
    floats_only: bool | None = None
    param_copies: tuple = ()
    warm_steps: int = 1
    variant: str = ""
    per_example: int = 0

    def extra_args(self, params) -> dict:
        """``extra`` for an ``update`` at ``params``, :class:`FromParams` values evaluated (and
        left out without params, which such an ``update`` refuses first)."""
        return {
            k: v.fn(params) if isinstance(v, FromParams) else v
            for k, v in self.extra.items()
            if params is not None or not isinstance(v, FromParams)
        }

    def updates_arg(self, grads):
        """The gradients ``update`` takes: ``grads`` itself, or for a per-example entry a batch
        of examples ``(g, -g, 2 g, -2 g, ...)`` (integers stay integers, bfloat16 is exact), whose
        norms differ so that clipping treats them differently."""
        if not self.per_example:
            return grads
        signs = [(-1) ** b * (1 + b // 2) for b in range(self.per_example)]
        return jax.tree.map(lambda g: jnp.stack([s * g for s in signs]), grads)

    @property
    def id(self) -> str:
        return self.name + (f"[{self.variant}]" if self.variant else "")

    def params_arg(self, params):
        return params if self.wrap_params is None else self.wrap_params(params)


E = Entry

TRANSFORMS: tuple[Entry, ...] = (
    # base
    E("identity", gc.identity, nonfinite="coordinate", keeps_nan=False),
    E("chain", lambda: gc.chain(gc.clip(1.0), gc.scale(0.5)), keeps_nan=False),
    E(
        "named_chain",
        lambda: gc.named_chain(("clip", gc.clip(1.0)), ("sgd", gc.sgd(0.1))),
        optimizer=True,
        keeps_nan=False,
    ),
    E("to_optax", lambda: gc.to_optax(gc.adam(0.1)), optimizer=True),
    E("with_float32_state", lambda: gc.with_float32_state(gc.adam(0.1)), optimizer=True),
    # adaptive
    E("scale_by_adam", gc.scale_by_adam),
    E("scale_by_adam", lambda: gc.scale_by_adam(nesterov=True), variant="nesterov"),
    E("scale_by_rms", gc.scale_by_rms),
    E("scale_by_stddev", gc.scale_by_stddev),
    # averaging
    E(
        "params_ema",
        lambda: gc.params_ema(0.9),
        needs_params=True,
        abstract_init=False,
        keeps_nan=False,
    ),  # the updates pass through; the average itself keeps the NaN
    E(
        "lookahead",
        lambda: gc.lookahead(gc.adam(0.1), sync_period=2, slow_step_size=0.5),
        optimizer=True,
        needs_params=True,
        wrap_params=gc.LookaheadParams.init_synced,
    ),
    # clipping
    E("clip", lambda: gc.clip(0.5), keeps_nan=False),
    E("clip_by_block_rms", lambda: gc.clip_by_block_rms(0.5), nonfinite="leaf", keeps_nan=False),
    E(
        "clip_by_global_norm",
        lambda: gc.clip_by_global_norm(0.5),
        nonfinite="tree",
        keeps_nan=False,
    ),
    # combinators
    E("masked", lambda: gc.masked(gc.scale_by_adam(), _by_ndim)),
    E("freeze", lambda: gc.freeze(_below_2d), keeps_nan=False),
    E(
        "partition",
        lambda: gc.partition({"matrix": gc.adam(0.1), "other": gc.sgd(0.1, 0.9)}, _labels_by_ndim),
        optimizer=True,
    ),
    E(
        "multi_transform",
        lambda: gc.multi_transform(
            {"matrix": gc.adamw(0.1), "other": gc.sgd(0.1)}, _labels_by_ndim
        ),
        optimizer=True,
        needs_params=True,
    ),
    E(
        "selective_transform",
        lambda: gc.selective_transform(gc.adam(0.1), freeze_mask=_below_2d),
        optimizer=True,
    ),
    E("set_to_zero", gc.set_to_zero, nonfinite="none", keeps_nan=False),
    E("zero_nans", gc.zero_nans, nonfinite="zeroed", keeps_nan=False),
    E(
        "apply_if_finite",
        lambda: gc.apply_if_finite(gc.adam(0.1), 2),
        optimizer=True,
        nonfinite="zeroed",
        keeps_nan=False,
    ),
    E(
        "MultiSteps",
        lambda: gc.MultiSteps(gc.adam(0.1), 2),
        optimizer=True,
        nonfinite="held",
        warm_steps=2,
    ),
    E(
        "MultiSteps",
        lambda: gc.MultiSteps(gc.adam(0.1), 2, should_skip_update_fn=gc.skip_not_finite),
        optimizer=True,
        nonfinite="zeroed",
        keeps_nan=False,
        warm_steps=2,
        variant="skip_not_finite",
    ),
    E(
        "conditionally_transform",
        lambda: gc.conditionally_transform(gc.adam(0.1), _every_other_step),
        optimizer=True,
        warm_steps=2,
    ),
    E(
        "conditionally_mask",
        lambda: gc.conditionally_mask(gc.adam(0.1), _every_other_step),
        optimizer=True,
        warm_steps=2,
    ),
    # monitoring: the updates pass through; a NaN reaches the measurement of its step only.
    E("snapshot", lambda: gc.snapshot("norm", _norm), abstract_init=False, keeps_nan=False),
    E(
        "monitor",
        lambda: gc.monitor({"norm": _norm, "sum": _sum}),
        keeps_nan=False,
    ),
    # measure_with_ema's output is the measurement, not the updates: it runs inside monitor.
    E(
        "measure_with_ema",
        lambda: gc.monitor({"norm_ema": gc.measure_with_ema(_norm, 0.9)}),
        keeps_nan=False,
    ),
    # decay
    E(
        "add_decoupled_weight_decay",
        lambda: gc.add_decoupled_weight_decay(0.1),
        needs_params=True,
        keeps_nan=False,
    ),
    E(
        "add_decayed_weights",
        lambda: gc.add_decayed_weights(0.1, mask=_by_ndim),
        needs_params=True,
        keeps_nan=False,
    ),
    E("add_l2_penalty", lambda: gc.add_l2_penalty(0.1), needs_params=True, keeps_nan=False),
    # factored
    E(
        "factored_second_moment",
        lambda: gc.factored_second_moment(min_dim_size_to_factor=2),
        nonfinite="leaf",
    ),
    E("scale_by_factored_rms", lambda: gc.scale_by_factored_rms(min_dim_size_to_factor=128)),
    E("scale_by_param_block_rms", gc.scale_by_param_block_rms, needs_params=True, keeps_nan=False),
    # galore
    E("scale_by_galore", lambda: gc.scale_by_galore(rank=1, update_proj_gap=2), nonfinite="leaf"),
    E(
        "galore",
        lambda: gc.galore(0.1, rank=1, update_proj_gap=2, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    # momentum
    E("ema", lambda: gc.ema(0.9)),
    E("trace", lambda: gc.trace(0.9, nesterov=True)),
    # muon
    E("scale_by_muon", gc.scale_by_muon, matrices=True, nonfinite="leaf"),
    E("scale_by_shape", gc.scale_by_shape, matrices=True, keeps_nan=False),
    E(
        "muon",
        lambda: gc.muon(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    E(
        "muon",
        lambda: gc.muon(0.1, param_labels=gc.muon_labels),
        optimizer=True,
        needs_params=True,
        max_ndim=2,
        nonfinite="leaf",
        variant="muon_labels",
    ),
    # named optimizers
    E("sgd", lambda: gc.sgd(0.1), optimizer=True, keeps_nan=False),
    E("sgd", lambda: gc.sgd(0.1, momentum=0.9, nesterov=True), optimizer=True, variant="momentum"),
    E("adam", lambda: gc.adam(0.1), optimizer=True),
    E("adamw", lambda: gc.adamw(0.1, weight_decay=0.1), optimizer=True, needs_params=True),
    E("rmsprop", lambda: gc.rmsprop(0.1, momentum=0.9, centered=True), optimizer=True),
    E(
        "adafactor",
        lambda: gc.adafactor(0.1, min_dim_size_to_factor=2),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    # scaling
    E("scale", lambda: gc.scale(0.5), keeps_nan=False),
    E("scale_by_learning_rate", lambda: gc.scale_by_learning_rate(0.1), keeps_nan=False),
    E(
        "scale_by_schedule",
        lambda: gc.scale_by_schedule(gc.linear_schedule(1.0, 0.1, 10)),
        keeps_nan=False,
    ),
    # schedule-free
    E(
        "schedule_free",
        lambda: gc.schedule_free(gc.sgd(0.1), 0.1),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
    ),
    E(
        "schedule_free_sgd",
        lambda: gc.schedule_free_sgd(0.1, warmup_steps=2),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
    ),
    E(
        "schedule_free_adamw",
        lambda: gc.schedule_free_adamw(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
    ),
    # schedules
    E(
        "reduce_on_plateau",
        lambda: gc.reduce_on_plateau(patience=1),
        extra={"value": 1.0},
        keeps_nan=False,
    ),
    # flat multi-tensor buffers
    E(
        "flatten",
        lambda: gc.flatten(gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(0.1))),
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
    ),
    # sharding
    E(
        "zero1",
        lambda: gc.zero1(gc.adamw(0.1), _one_device_mesh()),
        optimizer=True,
        needs_params=True,
    ),
    # adagrad
    E("scale_by_rss", gc.scale_by_rss),
    E("adagrad", lambda: gc.adagrad(0.1), optimizer=True),
    # Adam variants
    E("scale_by_adamax", gc.scale_by_adamax),
    E("adamax", lambda: gc.adamax(0.1), optimizer=True),
    E("adamaxw", lambda: gc.adamaxw(0.1), optimizer=True, needs_params=True),
    E("scale_by_amsgrad", gc.scale_by_amsgrad),
    E("amsgrad", lambda: gc.amsgrad(0.1), optimizer=True),
    E("scale_by_nadam", gc.scale_by_nadam),
    E("nadam", lambda: gc.nadam(0.1), optimizer=True),
    E("nadamw", lambda: gc.nadamw(0.1), optimizer=True, needs_params=True),
    E("scale_by_radam", gc.scale_by_radam),
    E("radam", lambda: gc.radam(0.1), optimizer=True),
    # Lion
    E("scale_by_lion", gc.scale_by_lion),
    E("lion", lambda: gc.lion(0.1), optimizer=True, needs_params=True),
    # trust ratio
    E(
        "scale_by_trust_ratio",
        gc.scale_by_trust_ratio,
        needs_params=True,
        nonfinite="leaf",
        keeps_nan=False,
    ),
    E(
        "lamb",
        lambda: gc.lamb(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    E(
        "lars",
        lambda: gc.lars(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    # issue #18: sign descent, noise, accumulation, reshaping, constraints
    E("scale_by_sign", gc.scale_by_sign, keeps_nan=False),
    E("sign_sgd", lambda: gc.sign_sgd(0.1), optimizer=True, keeps_nan=False),
    E("signum", lambda: gc.signum(0.1), optimizer=True),
    E("centralize", gc.centralize, nonfinite="slice", keeps_nan=False),
    E(
        "normalize_by_update_norm",
        gc.normalize_by_update_norm,
        nonfinite="tree",
        keeps_nan=False,
    ),
    E(
        "scale_by_param_block_norm",
        gc.scale_by_param_block_norm,
        needs_params=True,
        keeps_nan=False,
    ),
    E(
        "keep_params_nonnegative",
        gc.keep_params_nonnegative,
        needs_params=True,
        keeps_nan=False,
    ),
    E("add_noise", lambda: gc.add_noise(0.01, 0.55, 0), keeps_nan=False),
    E("noisy_sgd", lambda: gc.noisy_sgd(0.1, key=0), optimizer=True, keeps_nan=False),
    E("apply_every", lambda: gc.apply_every(2), nonfinite="held"),
    # issue #18: optax's remaining optimizers
    E("scale_by_belief", gc.scale_by_belief),
    E("adabelief", lambda: gc.adabelief(0.1), optimizer=True),
    E("scale_by_yogi", gc.scale_by_yogi),
    E("yogi", lambda: gc.yogi(0.1), optimizer=True),
    E("scale_by_adadelta", gc.scale_by_adadelta),
    E("adadelta", lambda: gc.adadelta(weight_decay=0.01), optimizer=True, needs_params=True),
    E("scale_by_adan", gc.scale_by_adan),
    E("adan", lambda: gc.adan(0.1, weight_decay=0.01), optimizer=True, needs_params=True),
    E(
        "adan",
        lambda: gc.adan(0.1, weight_decay=0.01, proximal=True),
        optimizer=True,
        needs_params=True,
        variant="proximal",
    ),
    E("scale_by_novograd", gc.scale_by_novograd, needs_params=True, nonfinite="leaf"),
    E(
        "novograd",
        lambda: gc.novograd(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    E(
        "fromage",
        lambda: gc.fromage(0.1),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
        keeps_nan=False,
    ),
    E("scale_by_rprop", lambda: gc.scale_by_rprop(0.1), nonfinite="held"),  # optax's late step
    E("rprop", lambda: gc.rprop(0.1, delay_step=False), optimizer=True, keeps_nan=False),
    E("scale_by_sm3", gc.scale_by_sm3),
    E("sm3", lambda: gc.sm3(0.1), optimizer=True),
    E("scale_by_optimistic_gradient", gc.scale_by_optimistic_gradient),
    E("optimistic_gradient_descent", lambda: gc.optimistic_gradient_descent(0.1), optimizer=True),
    E("optimistic_adam", lambda: gc.optimistic_adam(0.1), optimizer=True),
    E("optimistic_adam_v2", lambda: gc.optimistic_adam_v2(0.1), optimizer=True),
    E(
        "scale_by_polyak",
        gc.scale_by_polyak,
        extra={"value": 1.0},
        nonfinite="tree",
        keeps_nan=False,
    ),
    E(
        "polyak_sgd",
        lambda: gc.polyak_sgd(0.1),
        extra={"value": 1.0},
        optimizer=True,
        nonfinite="tree",
        keeps_nan=False,
    ),
    E(
        "adaptive_grad_clip",
        lambda: gc.adaptive_grad_clip(0.1),
        needs_params=True,
        nonfinite="slice",
        keeps_nan=False,
    ),
    # learning-rate free
    E(
        "scale_by_prodigy",
        gc.scale_by_prodigy,
        needs_params=True,
        abstract_init=False,
        param_copies=("params0",),
    ),
    E(
        "prodigy",
        lambda: gc.prodigy(),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        param_copies=("params0",),
    ),
    E("scale_by_dadapt_adamw", gc.scale_by_dadapt_adamw, needs_params=True),
    E("dadapt_adamw", lambda: gc.dadapt_adamw(), optimizer=True, needs_params=True),
    # Line searches: a NaN direction makes every trial loss NaN, so the search takes no step
    # (a step size of 0, which keeps the NaN coordinate only). L-BFGS mixes every coordinate
    # through its inner products and keeps the NaN difference in its memory.
    E(
        "scale_by_backtracking_linesearch",
        lambda: gc.scale_by_backtracking_linesearch(5),
        extra=LINESEARCH_EXTRA,
        needs_params=True,
        floats_only=True,
        nonfinite="coordinate",
        keeps_nan=False,
    ),
    E(
        "scale_by_backtracking_linesearch",
        lambda: gc.scale_by_backtracking_linesearch(5, store_grad=True),
        extra=LINESEARCH_EXTRA,
        needs_params=True,
        nonfinite="coordinate",
        keeps_nan=False,
        variant="store_grad",
    ),
    E(
        "scale_by_zoom_linesearch",
        lambda: gc.scale_by_zoom_linesearch(5),
        extra=LINESEARCH_EXTRA,
        needs_params=True,
        nonfinite="coordinate",
        keeps_nan=False,
    ),
    E(
        "scale_by_lbfgs",
        lambda: gc.scale_by_lbfgs(3),
        needs_params=True,
        nonfinite="tree",
        param_copies=("params",),
    ),
    E(
        "lbfgs",
        lambda: gc.lbfgs(memory_size=3),
        extra=LINESEARCH_EXTRA,
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
        param_copies=("params",),
    ),
    E(
        "lbfgs",
        lambda: gc.lbfgs(0.1, memory_size=3, linesearch=None),
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
        param_copies=("params",),
        variant="no_linesearch",
    ),
    # issue #18: optax.contrib's remaining optimizers
    E("scale_by_acprop", gc.scale_by_acprop),
    E("acprop", lambda: gc.acprop(0.1, weight_decay=0.01), optimizer=True, needs_params=True),
    E(
        "scale_by_cocob",
        gc.scale_by_cocob,
        needs_params=True,
        abstract_init=False,
        param_copies=("init_particles",),
    ),
    E(
        "cocob",
        lambda: gc.cocob(weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        param_copies=("init_particles",),
    ),
    E(
        "scale_by_dog",
        gc.scale_by_dog,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        param_copies=("init_params",),
    ),
    E(
        "dog",
        lambda: gc.dog(weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        param_copies=("init_params",),
    ),
    E(
        "dog",
        lambda: gc.dog(init_step=("learning_rate", 0.1)),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        nonfinite="coordinate",  # the first step's size is given; the NaN enters G for later ones
        param_copies=("init_params",),
        variant="learning_rate",
    ),
    E(
        "scale_by_dowg",
        gc.scale_by_dowg,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        param_copies=("init_params",),
    ),
    E(
        "dowg",
        lambda: gc.dowg(weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        param_copies=("init_params",),
    ),
    E(
        "scale_by_distance_over_gradients",
        gc.scale_by_distance_over_gradients,
        needs_params=True,
        abstract_init=False,
        nonfinite="leaf",
    ),
    E(
        "scale_by_madgrad",
        lambda: gc.scale_by_madgrad(0.1),
        needs_params=True,
        abstract_init=False,
        param_copies=("x0",),
    ),
    E(
        "madgrad",
        lambda: gc.madgrad(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        param_copies=("x0",),
    ),
    E(
        "momo",
        lambda: gc.momo(0.1, weight_decay=0.01),
        extra={"value": 1.0},
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
    ),
    E(
        "momo",
        lambda: gc.momo(0.1, adapt_lower_bound=True),
        extra={"value": 1.0},
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
        variant="adapt_lower_bound",
    ),
    E(
        "momo_adam",
        lambda: gc.momo_adam(0.1, weight_decay=0.01),
        extra={"value": 1.0},
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
    ),
    E("normalize", gc.normalize, nonfinite="tree", keeps_nan=False),
    E(
        "sam",
        # reset_state=False: a reset counter would not saturate (test_long_runs)
        lambda: gc.sam(
            gc.sgd(0.1, momentum=0.9), gc.chain(gc.normalize(), gc.sgd(0.05)), reset_state=False
        ),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        keeps_nan=False,  # the NaN step is adversarial: the outer state never sees it
        param_copies=("cache",),
    ),
    E(
        "sam",
        lambda: gc.sam(
            gc.adam(0.1),
            gc.chain(gc.normalize(), gc.sgd(0.05, momentum=0.5)),
            reset_state=False,
            opaque_mode=True,
        ),
        extra={"grad_fn": lambda params, i: jax.tree.map(jnp.cos, params)},
        optimizer=True,
        needs_params=True,
        nonfinite="tree",
        variant="opaque",
    ),
    E(
        "mechanize",
        lambda: gc.mechanize(gc.adam(1.0)),
        optimizer=True,
        needs_params=True,
        abstract_init=False,
        nonfinite="tree",
        param_copies=("x0",),
    ),
    # DP-SGD: per-example gradients in, one update out. A NaN example gets clipping factor 1
    # (its norm is NaN; optax's nan_to_num), so the NaN stays in its coordinate.
    E(
        "differentially_private_aggregate",
        lambda: gc.differentially_private_aggregate(1.0, 0.5, key=0),
        per_example=3,
        floats_only=True,  # the noise is drawn in the leaf's dtype: an integer leaf cannot hold it
        keeps_nan=False,
    ),
    E(
        "dpsgd",
        lambda: gc.dpsgd(0.1, 1.0, 0.5, seed=0, momentum=0.9),
        optimizer=True,
        per_example=3,
        floats_only=True,
    ),
    E(
        "split_real_and_imaginary",
        lambda: gc.split_real_and_imaginary(gc.adam(0.1)),
        optimizer=True,
    ),
    # Sophia
    E(
        "hutchinson_estimator_diag_hessian",
        lambda: gc.hutchinson_estimator_diag_hessian(0),
        extra=SOPHIA_EXTRA,
        needs_params=True,
        nonfinite="none",
        keeps_nan=False,
        floats_only=True,
    ),
    E(
        "gauss_newton_bartlett_estimator_diag_hessian",
        lambda: gc.gauss_newton_bartlett_estimator_diag_hessian(8, 0),
        extra={"sampled_grad_fn": _sampled_grads},
        needs_params=True,
        nonfinite="none",
        keeps_nan=False,
        floats_only=True,
    ),
    E(
        "scale_by_sophia",
        lambda: gc.scale_by_sophia(update_interval=1),
        extra=SOPHIA_EXTRA,
        needs_params=True,
    ),
    E(
        "sophia",
        lambda: gc.sophia(0.1, update_interval=1),
        extra=SOPHIA_EXTRA,
        optimizer=True,
        needs_params=True,
    ),
    # AdEMAMix, ADOPT
    E("scale_by_ademamix", gc.scale_by_ademamix),
    E(
        "scale_by_ademamix",
        lambda: gc.scale_by_ademamix(alpha_warmup=5, b3_warmup=5),
        variant="warmup",
    ),
    E("ademamix", lambda: gc.ademamix(0.1, weight_decay=0.1), optimizer=True, needs_params=True),
    E("scale_by_simplified_ademamix", gc.scale_by_simplified_ademamix),
    E(
        "simplified_ademamix",
        lambda: gc.simplified_ademamix(0.1),
        optimizer=True,
        needs_params=True,
    ),
    E("scale_by_adopt", gc.scale_by_adopt),
    E("adopt", lambda: gc.adopt(0.1), optimizer=True),
    E(
        "adopt",
        lambda: gc.adopt(0.1, nesterov=True, weight_decay=0.1),
        optimizer=True,
        needs_params=True,
        variant="nesterov-weight_decay",
    ),
    # Cautious, MARS
    E("cautious", lambda: gc.cautious(gc.scale_by_adam())),
    E(
        "cautious",
        lambda: gc.cautious(gc.adamw(0.1), descent=True),
        optimizer=True,
        needs_params=True,
        variant="descent-adamw",
    ),
    E("cautious_adamw", lambda: gc.cautious_adamw(0.1), optimizer=True, needs_params=True),
    E("cautious_lion", lambda: gc.cautious_lion(0.1), optimizer=True, needs_params=True),
    # A NaN norm fails the clip's ``norm > max_norm`` test, as in the authors' code: the NaN stays
    # in its coordinate.
    E("scale_by_mars", gc.scale_by_mars),
    E("scale_by_mars", lambda: gc.scale_by_mars(optimize_1d=True), variant="optimize_1d"),
    E("mars", lambda: gc.mars(0.1), optimizer=True, needs_params=True),
    # SOAP (its first update only sets up the eigenbases; a NaN there enters the statistics)
    E("scale_by_soap", lambda: gc.scale_by_soap(precondition_frequency=2), nonfinite="held"),
    E(
        "soap",
        lambda: gc.soap(0.1, precondition_frequency=2),
        optimizer=True,
        needs_params=True,
        nonfinite="held",
    ),
    # PSGD Kron (a NaN reaches the leaf's preconditioner factors through the fit)
    E("scale_by_kron", gc.scale_by_kron, nonfinite="leaf"),
    E(
        "scale_by_kron",
        lambda: gc.scale_by_kron(b1=0.0, memory_save_mode="one_diag"),
        nonfinite="leaf",
        variant="no-momentum",
    ),
    E(
        "kron",
        lambda: gc.kron(0.1, weight_decay=0.01),
        optimizer=True,
        needs_params=True,
        nonfinite="leaf",
    ),
    # 8-bit states
    E(
        "quantize_moments",
        lambda: gc.quantize_moments(gc.adam(0.1), **Q8),
        optimizer=True,
        floats_only=True,
    ),
    E("adam_8bit", lambda: gc.adam_8bit(0.1, **Q8), optimizer=True, floats_only=True),
    E(
        "adamw_8bit",
        lambda: gc.adamw_8bit(0.1, **Q8),
        optimizer=True,
        needs_params=True,
        floats_only=True,
    ),
    E(
        "adamw_4bit",
        lambda: gc.adamw_4bit(0.1, block_size=4, min_4bit_size=1),
        optimizer=True,
        needs_params=True,
        floats_only=True,
    ),
    E("sgd_8bit", lambda: gc.sgd_8bit(0.1, momentum=0.9, **Q8), optimizer=True, floats_only=True),
    E(
        "lion_8bit",
        lambda: gc.lion_8bit(0.1, **Q8),
        optimizer=True,
        needs_params=True,
        floats_only=True,
    ),
)

TRANSFORM_NAMES = frozenset(e.name for e in TRANSFORMS)

# The checks a per-example entry (``Entry.per_example``) cannot take, and why. Every other
# registry-driven check (test_properties, test_bad_inputs, test_nonfinite's NaN placement,
# test_low_precision, test_eager, test_optax_layout, test_describe; test_long_runs finds no
# counter in their states) runs it on ``Entry.updates_arg`` of its gradients, and
# test_checkpoint round-trips dpsgd's state by its own entry.
PER_EXAMPLE_EXCLUDED: dict[str, str] = {
    "test_nonfinite.py::test_apply_if_finite_skips_a_nan_step_leaving_updates_zero_and_state"
    "_unchanged": "apply_if_finite's skipped step returns zeros shaped like its input, a batch"
    " of examples, where the step is parameter-shaped: DP-SGD must be the innermost piece, and"
    " the NaN check belongs on the per-example gradients before it",
    "test_flat.py, test_sharding.py": "flatten and the sharded paths lay the updates out like"
    " the parameters; per-example updates have a batch axis the layout does not have",
    "test_convergence.py": "its problems give one gradient per step, not one per example;"
    " DP-SGD's convergence is tests/test_privacy.py's (a private logistic regression)",
}
OPTIMIZERS = tuple(e for e in TRANSFORMS if e.optimizer)

SCHEDULES: dict[str, Callable[[], Callable]] = {
    "constant_schedule": lambda: gc.constant_schedule(0.5),
    "cosine_decay_schedule": lambda: gc.cosine_decay_schedule(1.0, 100, alpha=0.1),
    "cosine_onecycle_schedule": lambda: gc.cosine_onecycle_schedule(100, 1.0),
    "cosine_warm_restarts_schedule": lambda: gc.cosine_warm_restarts_schedule(1.0, 10, T_mult=2),
    "exponential_decay": lambda: gc.exponential_decay(1.0, 10, 0.5, end_value=0.01),
    "join_schedules": lambda: gc.join_schedules(
        (gc.linear_schedule(0.0, 1.0, 10), gc.constant_schedule(1.0)), (10,)
    ),
    "linear_onecycle_schedule": lambda: gc.linear_onecycle_schedule(100, 1.0),
    "linear_schedule": lambda: gc.linear_schedule(1.0, 0.1, 100, transition_begin=5),
    "piecewise_constant_schedule": lambda: gc.piecewise_constant_schedule(1.0, {10: 0.5, 20: 0.1}),
    "piecewise_interpolate_schedule": lambda: gc.piecewise_interpolate_schedule(
        "cosine", 1.0, {10: 0.5, 20: 0.1}
    ),
    "polynomial_schedule": lambda: gc.polynomial_schedule(1.0, 0.1, 2.0, 100),
    "precond_update_prob_schedule": lambda: gc.precond_update_prob_schedule(flat_start=5),
    "sgdr_schedule": lambda: gc.sgdr_schedule(
        [dict(init_value=0.0, peak_value=1.0, warmup_steps=2, decay_steps=10)] * 2
    ),
    "warmup_constant_schedule": lambda: gc.warmup_constant_schedule(0.0, 1.0, 10),
    "warmup_cosine_decay_schedule": lambda: gc.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100),
    "warmup_exponential_decay_schedule": lambda: gc.warmup_exponential_decay_schedule(
        0.0, 1.0, 10, 10, 0.5
    ),
    "warmup_inverse_sqrt_schedule": lambda: gc.warmup_inverse_sqrt_schedule(0.0, 1.0, 10),
    "warmup_linear_decay_schedule": lambda: gc.warmup_linear_decay_schedule(0.0, 1.0, 10, 100),
    "warmup_stable_decay_schedule": lambda: gc.warmup_stable_decay_schedule(0.0, 1.0, 10, 100, 20),
}

# Public names that are not transformations or schedules, with what they are.
NOT_TRANSFORMS: dict[str, str] = {
    "MuonState": "state class under optax's name (tests/test_muon.py, tests/optax_suite)",
    "DAdaptAdamWState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ProdigyState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScheduleFreeState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByDAdaptAdamWState": "gradchain's earlier name of DAdaptAdamWState (kept as an alias)",
    "ScaleByProdigyState": "gradchain's earlier name of ProdigyState (kept as an alias)",
    "AddDecayedWeightsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "HutchinsonState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "AdaptiveGradClipState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "AddNoiseState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ApplyEvery": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "NonNegativeParamsState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByAdaDeltaState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByAdanState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByBeliefState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByNovogradState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByRpropState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleBySM3State": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ScaleByScheduleState": "state class under optax's name (tests/test_optax_layout.py, tests/optax_suite)",
    "ApplyIfFiniteState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ClipByGlobalNormState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ClipState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "EmaState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "FactoredState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "GaLoreState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "InjectHyperparamsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "InjectStatefulHyperparamsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "LookaheadState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MaskedState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MultiStepsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MultiTransformState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "PartitionState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByAdamState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByAmsgradState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByLionState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByRStdDevState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByRmsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByRssState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByTrustRatioState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByAdemamixState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleBySimplifiedAdEMAMixState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "CautiousState": "state class of the cautious wrapper (tests/test_cautious_mars.py)",
    "ScaleByMarsState": "state class of scale_by_mars (tests/test_cautious_mars.py)",
    "ScaleBySoapState": "state class of scale_by_soap (tests/test_soap.py)",
    "ScaleByKronState": "state class of scale_by_kron (tests/test_kron.py)",
    "SophiaState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "SplitRealAndImaginaryState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MechanicState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "NormalizeState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "SAMState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "COCOBState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "DifferentiallyPrivateAggregateState": "state class under optax's name (tests/test_privacy.py, tests/optax_suite)",
    "DoGState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "DoWGState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MadgradState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MomoAdamState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "MomoState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByDistanceOverGradientsState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "TraceState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "WrappedScheduleState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ZeroNansState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "OptState": "type alias, as optax's",
    "Params": "type alias, as optax's",
    "Updates": "type alias, as optax's",
    "ScalarOrSchedule": "type alias, as optax's",
    "MaskOrFn": "type alias, as optax's",
    "GradientTransformationExtraArgs": "optax's protocol class (tests/test_optax_protocol.py)",
    "StatefulSchedule": "optax's protocol class for stateful schedules (schedules/_inject_test)",
    "WrappedSchedule": "optax's wrapper of a schedule for inject_stateful_hyperparams",
    "init_empty_state": "helper: optax's init of a stateless transformation",
    "stateless": "builder of a transformation from a function (tests/test_optax_protocol.py)",
    "stateless_with_tree_map": "builder of a transformation from a function (optax's base_test)",
    "with_extra_args_support": "adapter of an optax transformation (optax's base_test)",
    "inject_hyperparams": "wrapper factory (tests/test_optax_protocol.py, optax's _inject_test)",
    "inject_stateful_hyperparams": "wrapper factory (optax's _inject_test)",
    "FlatLayout": "data type (how a tree is laid out in flat buffers; tests/test_flat.py)",
    "FlatState": "state container of flatten",
    "flat_layout": "helper: keep the parameters themselves flat (tests/test_flat.py)",
    "register_flat_safe": "helper: admit a coordinate-wise transformation into flatten",
    "QuantizedArray": "data type (an 8-bit array and its scales)",
    "Rank1QuantizedArray": "data type (a 4-bit array and its row and column maxima)",
    "quantize_rank1": "helper: float to 4-bit with rank-1 normalization",
    "dequantize_rank1": "helper: 4-bit rank-1 to float",
    "block_axis_sharding": "helper: the layout of 8-bit blocks",
    "dequantize_blockwise": "helper: 8-bit to float",
    "describe": "helper: the update rule as math (tests/test_describe.py)",
    "dynamic_map": "helper: the 8-bit code book",
    "quantize_blockwise": "helper: float to 8-bit",
    "ChainState": "state container",
    "EmptyState": "state container",
    "GaLoreDimensionNumbers": "data type (a matrix view of a tensor)",
    "GradientTransformation": "abstract base class",
    "LookaheadParams": "parameter container",
    "MaskedNode": "placeholder leaf",
    "MuonDimensionNumbers": "data type (a matrix view of a tensor)",
    "Schedule": "abstract base class of schedules",
    "abstract_state": "helper: abstract optimizer state",
    "adafactor_decay_rate": "helper: Adafactor's decay (tested in test_long_runs)",
    "apply_updates": "helper: params + updates",
    "bias_correction": "numerics helper",
    "factored_axes": "helper: which axes a moment is factored along",
    "global_norm": "helper: the global norm of a tree",
    "ScaleByBacktrackingLinesearchState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByLBFGSState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ScaleByZoomLinesearchState": "state class under optax's name (tests/test_optax_protocol.py, tests/optax_suite)",
    "ZoomLinesearchInfo": "a line search's diagnostics, a field of ScaleByZoomLinesearchState (tests/test_lbfgs.py)",
    "value_and_grad_from_state": "helper: the loss and gradient a line search left in the state (tests/test_lbfgs.py)",
    "init_sharded": "helper: init laid out as state_shardings (tested in test_sharding, test_multihost)",
    "muon_labels": "helper: Muon's parameter groups (used by the muon[muon_labels] entry)",
    "named_optimizer": "decorator for named optimizers (every named optimizer entry uses it)",
    "orthogonalize_via_newton_schulz": "helper: the Newton-Schulz iteration",
    "path_labels": "helper: labels by path",
    "path_mask": "helper: masks by path",
    "per_device_bytes": "helper: memory per device",
    "per_process_bytes": "helper: memory per process (tested in test_sharding, test_multihost)",
    "restore_state": "checkpoint helper",
    "per_example_global_norm_clip": "helper: clips a batch of per-example gradients (test_newopt)",
    "per_example_layer_norm_clip": "helper: clips a batch of per-example gradients (test_newopt)",
    "safe_increment": "numerics helper",
    "scale_gradient": "helper: scales the gradient in the backward pass (tests/test_newopt.py)",
    "save_state": "checkpoint helper",
    "schedule_free_eval_params": "helper: the evaluation params of schedule-free",
    "skip_large_updates": "MultiSteps predicate",
    "skip_not_finite": "MultiSteps predicate (used by the MultiSteps[skip_not_finite] entry)",
    "state_class": "decorator for state classes",
    "state_shardings": "helper: state layout",
    "tree_get": "helper: read a state field by name",
    "tree_get_all_with_path": "helper: read state fields by name",
    "tree_paths": "helper: path strings of a tree",
    "tree_set": "helper: replace a state field by name",
    "with_live_hyperparams": "keeps gradchain's extras in the states (tests/test_optax_layout.py)",
    "tree_map_params": "helper: map over the parameter-shaped parts of a state (test_tree_utils)",
    "ReduceLROnPlateauState": "state container of reduce_on_plateau",
    **dict.fromkeys(
        (
            "ConditionallyMaskState",
            "ConditionallyTransformState",
            "MonitorState",
            "SnapshotState",
        ),
        "state class under optax's name (tests/test_optax_wrappers.py, tests/optax_suite)",
    ),
    **dict.fromkeys(
        ("MaskOrFn", "TransformInitFn", "TransformUpdateFn", "TransformUpdateExtraArgsFn"),
        "type alias, as optax's",
    ),
    "ShouldSkipUpdateFunction": "type alias, as optax's (the type of MultiSteps' predicate)",
    **dict.fromkeys(
        (
            "safe_int32_increment",
            "safe_norm",
            "safe_root_mean_squares",
            "update_moment",
            "update_moment_per_elem_norm",
            "update_infinity_moment",
        ),
        "numerics helper, optax's (cross-checked in tests/test_optax_wrappers.py)",
    ),
    **dict.fromkeys(
        ("matrix_inverse_pth_root", "power_iteration", "nnls"),
        "linear algebra helper, optax's (cross-checked in tests/test_optax_wrappers.py)",
    ),
    **dict.fromkeys(
        ("multi_normal", "MultiNormalDiagFromLogScale"),
        "the diagonal Gaussian of optax's multi_normal (tests/test_optax_wrappers.py)",
    ),
    **dict.fromkeys(
        ("incremental_update", "periodic_update"),
        "helper: a target network's average or periodic copy of the params, optax's",
    ),
    "microbatch": "function transformation: evaluates a function over microbatches "
    "(tests/test_optax_wrappers.py)",
    **dict.fromkeys(gc.losses.__all__, "loss function (tests/test_losses.py)"),
}


def find(name: str, variant: str = "") -> Entry:
    for e in TRANSFORMS:
        if e.name == name and e.variant == variant:
            return e
    raise KeyError(name)


def random_tree(structure, seed: int, scale: float = 1.0):
    """A tree shaped like ``structure`` (arrays or ShapeDtypeStructs) of normal values."""
    leaves, treedef = jax.tree.flatten(structure)
    rng = np.random.default_rng(seed)
    return treedef.unflatten(
        [jnp.asarray(scale * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    )
