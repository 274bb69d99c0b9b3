"""How long does an un-jitted step take, against optax's?

Tutorials, notebooks and debugging sessions call ``tx.update`` without ``jax.jit``. Each
operation is then dispatched on its own (compiled once per shape and cached), so a step costs
the Python work of the transformation plus one dispatch per operation. For every optimizer that
gradchain and optax both have, this script builds both with the same hyperparameters and times,
in one run and on the same parameters and gradients, the un-jitted step a user writes::

    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

Each optimizer first takes ``--warmup`` steps (compiling the operations it uses), then the two
libraries step in turn (round robin, so a change of machine load hits both alike); a step's time
is the median of ``--reps``. "compiles" counts XLA compilations during the timed steps: an
optimizer whose programs depend on the step's values (a power of the concrete step count, a
conditional over new closures) compiles on every step.

    python benchmarks/bench_eager.py                  # two leaves, (64, 32) and (32,)
    python benchmarks/bench_eager.py --leaves 20      # twenty matrices and vectors
    python benchmarks/bench_eager.py --only adam,lion
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from _common import gc, machine, markdown_table, ms, optax, ratio

_COMPILES: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, seconds, **kw: (
        _COMPILES.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
    )
)


def _loss(params):
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class Pair:
    name: str
    gradchain: Callable
    optax: Callable
    # Extra keyword arguments of ``update``, or a function of the parameters that gives them.
    extra: dict | Callable = dataclasses.field(default_factory=dict)


def pairs() -> list[Pair]:
    contrib = optax.contrib
    sophia_extra = {"obj_fn": _loss}
    # A fixed loss value (and gradient) for the optimizers that take them: the step's cost does
    # not depend on whether they match the gradient, and both libraries get the same ones.
    value_extra = {"value": jnp.asarray(1.0)}

    def lbfgs_extra(params):
        return {"value": _loss(params), "grad": jax.grad(_loss)(params), "value_fn": _loss}

    return [
        Pair("sgd", lambda: gc.sgd(0.1), lambda: optax.sgd(0.1)),
        Pair(
            "sgd+momentum",
            lambda: gc.sgd(0.1, momentum=0.9),
            lambda: optax.sgd(0.1, momentum=0.9),
        ),
        Pair("adam", lambda: gc.adam(1e-3), lambda: optax.adam(1e-3)),
        Pair(
            "adamw",
            lambda: gc.adamw(1e-3, weight_decay=0.1),
            lambda: optax.adamw(1e-3, weight_decay=0.1),
        ),
        Pair(
            "clip+adamw",
            lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(1e-3)),
            lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)),
        ),
        Pair("rmsprop", lambda: gc.rmsprop(1e-3), lambda: optax.rmsprop(1e-3)),
        Pair("adagrad", lambda: gc.adagrad(0.1), lambda: optax.adagrad(0.1)),
        Pair("adafactor", lambda: gc.adafactor(1e-3), lambda: optax.adafactor(1e-3)),
        Pair("adamax", lambda: gc.adamax(1e-3), lambda: optax.adamax(1e-3)),
        Pair("adamaxw", lambda: gc.adamaxw(1e-3), lambda: optax.adamaxw(1e-3)),
        Pair("amsgrad", lambda: gc.amsgrad(1e-3), lambda: optax.amsgrad(1e-3)),
        Pair("nadam", lambda: gc.nadam(1e-3), lambda: optax.nadam(1e-3)),
        Pair("nadamw", lambda: gc.nadamw(1e-3), lambda: optax.nadamw(1e-3)),
        Pair("radam", lambda: gc.radam(1e-3), lambda: optax.radam(1e-3)),
        Pair("lion", lambda: gc.lion(1e-4), lambda: optax.lion(1e-4)),
        Pair(
            "lamb",
            lambda: gc.lamb(1e-3, weight_decay=0.01),
            lambda: optax.lamb(1e-3, weight_decay=0.01),
        ),
        Pair(
            "lars",
            lambda: gc.lars(0.1, weight_decay=0.01),
            lambda: optax.lars(0.1, weight_decay=0.01),
        ),
        Pair("muon", lambda: gc.muon(1e-3), lambda: contrib.muon(1e-3)),
        Pair("prodigy", lambda: gc.prodigy(), lambda: contrib.prodigy()),
        Pair("dadapt_adamw", lambda: gc.dadapt_adamw(), lambda: contrib.dadapt_adamw()),
        Pair(
            "schedule_free_sgd",
            lambda: gc.schedule_free_sgd(0.1),
            lambda: contrib.schedule_free_sgd(0.1),
        ),
        Pair(
            "schedule_free_adamw",
            lambda: gc.schedule_free_adamw(1e-3),
            lambda: contrib.schedule_free_adamw(1e-3),
        ),
        Pair(
            "sophia",
            lambda: gc.sophia(1e-3),
            lambda: contrib.sophia(1e-3),
            sophia_extra,
        ),
        Pair(
            "galore",
            lambda: gc.galore(1e-3, rank=4, update_proj_gap=1000),
            lambda: contrib.galore(1e-3, rank=4, update_proj_gap=1000),
        ),
        *_same_call(gc, optax, ONE_LR, lr=1e-3),
        *_same_call(gc, contrib, CONTRIB_ONE_LR, lr=1e-3),
        Pair("sgd+nesterov", *_both(lambda m: m.sgd(0.1, momentum=0.9, nesterov=True))),
        Pair("noisy_sgd", *_both(lambda m: m.noisy_sgd(0.1, seed=0))),
        Pair("adadelta", *_both(lambda m: m.adadelta())),
        Pair("cocob", *_both(lambda m: m.cocob(), contrib=True)),
        Pair("dog", *_both(lambda m: m.dog(), contrib=True)),
        Pair("dowg", *_both(lambda m: m.dowg(), contrib=True)),
        Pair("mechanize(adam)", *_both(lambda m: _contrib(m).mechanize(m.adam(1e-3)))),
        Pair("polyak_sgd", *_both(lambda m: m.polyak_sgd()), value_extra),
        Pair("momo", *_both(lambda m: m.momo(), contrib=True), value_extra),
        Pair("momo_adam", *_both(lambda m: m.momo_adam(), contrib=True), value_extra),
        Pair("lbfgs", *_both(lambda m: m.lbfgs()), lbfgs_extra),
    ]


# Optimizers called the same way in both libraries, with one learning rate.
ONE_LR = (
    "adabelief",
    "adan",
    "fromage",
    "novograd",
    "optimistic_adam",
    "optimistic_adam_v2",
    "optimistic_gradient_descent",
    "rprop",
    "sign_sgd",
    "signum",
    "sm3",
    "yogi",
)
CONTRIB_ONE_LR = ("acprop", "ademamix", "simplified_ademamix", "adopt", "madgrad")


def _contrib(module):
    """optax's ``contrib`` namespace, or gradchain itself (its contrib names are top level too)."""
    return module.contrib if module is optax else module


def _both(build: Callable, contrib: bool = False) -> tuple[Callable, Callable]:
    """The gradchain and optax builders of one call written once against a module."""
    if contrib:
        return (lambda: build(gc), lambda: build(optax.contrib))
    return (lambda: build(gc), lambda: build(optax))


def _same_call(ours, theirs, names: tuple[str, ...], lr: float) -> list[Pair]:
    return [
        Pair(
            name,
            lambda name=name: getattr(ours, name)(lr),
            lambda name=name: getattr(theirs, name)(lr),
        )
        for name in names
    ]


def tree(leaves: int, seed: int) -> dict:
    """``leaves`` leaves alternating (64, 32) matrices and (32,) vectors."""
    key = jax.random.PRNGKey(seed)
    shapes = [(64, 32) if i % 2 == 0 else (32,) for i in range(leaves)]
    return {
        f"leaf{i:03d}": 0.1 * jax.random.normal(jax.random.fold_in(key, i), s)
        for i, s in enumerate(shapes)
    }


class Runner:
    """One library's optimizer stepping un-jitted on its own copy of the parameters."""

    def __init__(self, tx, apply_updates, params, grads, extra):
        self.tx, self.apply, self.grads = tx, apply_updates, grads
        self.extra = extra(params) if callable(extra) else extra
        self.params = params
        self.state = tx.init(params)
        self.times: list[float] = []
        self.compiles = 0
        self.k = 0

    def step(self, record: bool) -> None:
        g = self.grads[self.k % len(self.grads)]
        self.k += 1
        before = len(_COMPILES)
        t0 = time.perf_counter()
        updates, self.state = self.tx.update(g, self.state, self.params, **self.extra)
        self.params = self.apply(self.params, updates)
        jax.block_until_ready((self.params, self.state))
        if record:
            self.times.append(time.perf_counter() - t0)
            self.compiles += len(_COMPILES) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaves", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated optimizer names")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}

    params = tree(args.leaves, 0)
    grads = [tree(args.leaves, s) for s in range(1, 4)]
    print(f"machine: {machine()}")
    print(f"tree: {args.leaves} leaves; median of {args.reps} un-jitted steps after {args.warmup}")
    print()
    rows = []
    for pair in pairs():
        if only and pair.name not in only:
            continue
        runners = [
            Runner(pair.gradchain(), gc.apply_updates, params, grads, pair.extra),
            Runner(pair.optax(), optax.apply_updates, params, grads, pair.extra),
        ]
        for _ in range(args.warmup):
            for r in runners:
                r.step(record=False)
        for _ in range(args.reps):
            for r in runners:
                r.step(record=True)
        g, o = (statistics.median(r.times) for r in runners)
        rows.append(
            [
                pair.name,
                ms(g),
                ms(o),
                ratio(g, o),
                str(runners[0].compiles),
                str(runners[1].compiles),
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    print()
    header = ["optimizer", "gradchain (ms)", "optax (ms)", "gradchain / optax"]
    header += ["gradchain compiles", "optax compiles"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
