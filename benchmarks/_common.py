"""Machinery shared by the benchmark scripts: trees, optimizers, the streaming floor, timing.

Every script answers one question and prints a Markdown table; this module holds what they share
so that the numbers of different scripts are measured the same way:

* a step is ``jit(update + apply_updates)`` with the parameters and the state donated, so that
  buffers are reused in place as in a training loop;
* compile time is the wall time of ``jit(step).lower(...).compile()`` (tracing included);
* step time is the median over ``reps`` calls, the variants being called in turn (round robin)
  so that a change of machine load affects all of them alike;
* traffic is XLA's own count of the bytes the compiled step reads and writes ("bytes accessed"
  of ``compiled.cost_analysis()``), per parameter: it does not depend on load;
* two floors bound a step from below, both jitted kernels that read and write exactly the bytes
  the algorithm must move (for AdamW in float32: parameters, gradients and two moments in,
  parameters and two moments out, 28 bytes per parameter):

  - the *array floor* does so over the very arrays of the step (the parameter tree, the
    gradients, one array per moment), one add per element, plus the global norm of the
    gradients where the optimizer clips by it. This is the floor the performance issue names
    ("a jitted kernel that streams the same bytes"), which optax's AdamW meets;
  - the *one-pass floor* moves the same bytes in one pass over interleaved buffers, which no
    step over separate arrays can beat on a backend that writes each output array in its own
    loop (XLA:CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gradchain as gc
from gradchain.core.base import tree_map_multi

try:
    import optax
except ImportError:  # pragma: no cover - the benchmarks need optax (pip install .[test])
    raise SystemExit("the benchmarks compare against optax: pip install optax") from None


# ---------------------------------------------------------------------------------------------
# Trees


def gpt2_shapes(full: bool) -> dict[str, tuple[int, ...]]:
    """The parameter shapes of GPT-2 small (124M parameters, 148 leaves).

    Without ``full`` the width is divided by 4 (d = 192, vocabulary and context kept): 15M
    parameters in the same 148 leaves, far larger than a CPU's caches, so the step stays
    memory-bound, and wide enough that Adafactor still factors the matrices (it factors
    dimensions of at least 128).
    """
    d = 768 if full else 192
    shapes = {"wte": (50257, d), "wpe": (1024, d)}
    for i in range(12):
        for name, shape in [
            ("ln_1.g", (d,)),
            ("ln_1.b", (d,)),
            ("attn.c_attn.w", (d, 3 * d)),
            ("attn.c_attn.b", (3 * d,)),
            ("attn.c_proj.w", (d, d)),
            ("attn.c_proj.b", (d,)),
            ("ln_2.g", (d,)),
            ("ln_2.b", (d,)),
            ("mlp.c_fc.w", (d, 4 * d)),
            ("mlp.c_fc.b", (4 * d,)),
            ("mlp.c_proj.w", (4 * d, d)),
            ("mlp.c_proj.b", (d,)),
        ]:
            shapes[f"h{i:02d}.{name}"] = shape
    shapes["ln_f.g"] = (d,)
    shapes["ln_f.b"] = (d,)
    return shapes


def many_leaves_shapes(leaves: int, total: int, seed: int = 0) -> dict[str, tuple[int, ...]]:
    """``leaves`` small leaves of about ``total`` parameters in all, of mostly distinct shapes.

    Sizes are drawn uniformly in [0.5, 1.5] x the mean; a third of the leaves are vectors, a
    third matrices (n, 32) and a third 3-D tensors (n, 8, 8). Distinct shapes are the hard case
    for a compiler, which cannot reuse one leaf's kernel for another.
    """
    rng = np.random.default_rng(seed)
    mean = total / leaves
    shapes = {}
    for i in range(leaves):
        n = max(64, int(mean * rng.uniform(0.5, 1.5)))
        kind = i % 3
        shape = (n,) if kind == 0 else (n // 32, 32) if kind == 1 else (n // 64, 8, 8)
        shapes[f"leaf{i:04d}"] = shape
    return shapes


def bench_tree_shapes(tree: str, full: bool, leaves: int) -> tuple[dict[str, tuple[int, ...]], str]:
    """The shapes and title of a benchmark's ``--tree`` (``gpt2`` or ``many-leaves``)."""
    if tree == "gpt2":
        return gpt2_shapes(full), "GPT-2 small" + ("" if full else " / 4 in width")
    shapes = many_leaves_shapes(leaves, 21_000_000 if full else 2_000_000)
    return shapes, f"{leaves} leaves"


def make_tree(shapes: dict, seed: int, scale: float = 0.02, dtype=jnp.float32) -> dict:
    key = jax.random.PRNGKey(seed)
    return {
        name: (scale * jax.random.normal(jax.random.fold_in(key, i), shape)).astype(dtype)
        for i, (name, shape) in enumerate(shapes.items())
    }


def count_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Optimizers


def warmup_cosine(init_value, peak_value, warmup_steps, decay_steps, end_value=0.0):
    """gradchain's warmup-cosine schedule where present, else the same formula inline."""
    if hasattr(gc, "warmup_cosine_decay_schedule"):
        return gc.warmup_cosine_decay_schedule(
            init_value,
            peak_value,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            end_value=end_value,
        )

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm = (
            init_value + (peak_value - init_value) * jnp.clip(count, 0, warmup_steps) / warmup_steps
        )
        span = decay_steps - warmup_steps
        t = jnp.clip(count - warmup_steps, 0, span) / span
        cosine = end_value + (peak_value - end_value) * 0.5 * (1 + jnp.cos(jnp.pi * t))
        return jnp.where(count < warmup_steps, warm, cosine)

    return schedule


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """One row of the comparison: how to build it in gradchain and in optax, and its floor.

    ``read``/``write``: bytes per float32 parameter the algorithm must read and write at least.
    ``matmuls``: for an optimizer whose step is bound by matrix products rather than memory
    (Muon's Newton-Schulz iteration, GaLore's projections), ``(grads) -> [(a_shape, b_shape)]``,
    the products the algorithm must compute per step; the *FLOP floor* is a jitted kernel doing
    those products alone (see :func:`flop_floor_variant`).
    """

    name: str
    gradchain: Callable | None  # () -> transformation, None when gradchain lacks it
    optax: Callable | None  # None when optax has no such optimizer
    read: int
    write: int
    missing: str = ""  # why the gradchain side is absent
    # The state arrays per parameter (array floor); None: those of gradchain's state
    # (:func:`state_moments`), with ``read``/``write`` following from them.
    moments: tuple | None = (jnp.float32, jnp.float32)
    # A reduction over every leaf that the step needs before it can update any (a clip's global
    # norm, D-Adaptation's and Prodigy's correlations, DoG's distance, Momo's inner products):
    # True for the gradients' global norm, or the indices, in (parameters, gradients, moments),
    # of the arrays it reads (an index twice: read twice).
    global_norm: bool | tuple[int, ...] = False
    # Per-leaf norms the step needs before it can update a leaf (trust ratios): how many of the
    # leaf's arrays, in the order parameters, gradients, moments, a first pass must read.
    # (Or the indices of those arrays, as for ``global_norm``: a cautious mask's count.)
    leaf_norms: int | tuple[int, ...] = 0
    matmuls: Callable | None = None
    extra: dict = dataclasses.field(default_factory=dict)  # keyword arguments of ``update``


def optimizers() -> dict[str, Optimizer]:
    sched = warmup_cosine(0.0, 3e-4, 100, 1000)
    osched = optax.warmup_cosine_decay_schedule(0.0, 3e-4, 100, 1000)

    def has(name):
        return getattr(gc, name, None)

    out = [
        Optimizer(
            "adamw",
            lambda: gc.adamw(3e-4, weight_decay=0.1),
            lambda: optax.adamw(3e-4, weight_decay=0.1),
            read=16,
            write=12,
        ),
        Optimizer(
            "clip+adamw+cosine",
            lambda: gc.chain(gc.clip_by_global_norm(1.0), gc.adamw(sched, weight_decay=0.1)),
            lambda: optax.chain(
                optax.clip_by_global_norm(1.0), optax.adamw(osched, weight_decay=0.1)
            ),
            read=20,
            write=12,  # the norm reads the gradients once more
            global_norm=True,
        ),
        Optimizer(
            "sgd+momentum",
            lambda: gc.sgd(0.1, momentum=0.9),
            lambda: optax.sgd(0.1, momentum=0.9),
            read=12,
            write=8,
            moments=(jnp.float32,),
        ),
        Optimizer(
            "adafactor",
            (lambda: gc.adafactor(1e-3)) if has("adafactor") else None,
            lambda: optax.adafactor(1e-3),
            read=16,
            write=12,  # compared with the AdamW floor, as the issue asks
            missing="gradchain.adafactor is not on this branch yet",
        ),
        Optimizer(
            "lion",
            (lambda: gc.lion(1e-4)) if has("lion") else None,
            lambda: optax.lion(1e-4),
            read=12,
            write=8,
            moments=(jnp.float32,),
            missing="gradchain.lion is not on this branch yet",
        ),
        Optimizer(
            "adamw_8bit",
            (lambda: gc.adamw_8bit(3e-4, weight_decay=0.1)) if has("adamw_8bit") else None,
            lambda: optax.adamw(3e-4, weight_decay=0.1),  # optax has no 8-bit optimizer
            read=10,
            write=6,  # parameters and gradients in float32, two 8-bit moments
            moments=(jnp.uint8, jnp.uint8),
            missing="gradchain.adamw_8bit is not on this branch yet",
        ),
    ]
    out += _more_optimizers()
    return {o.name: o for o in out}


def state_moments(tx, params) -> tuple:
    """The dtypes of the arrays of ``tx``'s state shaped like the largest parameter leaf: the
    moments its step must read and write per parameter (factored or per-leaf statistics, which
    are far smaller, are left out)."""
    big = max(jax.tree.leaves(params), key=lambda x: x.size)
    state = jax.eval_shape(tx.init, params)
    return tuple(x.dtype for x in jax.tree.leaves(state) if x.shape == big.shape)


def floor_bytes(moments: tuple) -> tuple[int, int]:
    """``(read, write)`` bytes per float32 parameter: parameters, gradients and each moment in,
    parameters and each moment out."""
    k = sum(jnp.dtype(d).itemsize for d in moments)
    return 8 + k, 4 + k


def _loss(params):
    """A scalar loss for the optimizers that estimate curvature (Sophia's ``obj_fn``)."""
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))


def _wide(shape) -> tuple[int, int]:
    return (min(shape), max(shape))


@dataclasses.dataclass(frozen=True)
class FlopFloor:
    """A FLOP floor that is not a list of independent products: ``kernel(operands)`` computes
    the products alone, chained as the algorithm chains them."""

    kernel: Callable
    operands: object


def newton_schulz_matmuls(grads, ns_steps: int = 5) -> FlopFloor:
    """The products of ``ns_steps`` quintic Newton-Schulz steps on every matrix leaf, in its
    wide orientation ``(m, n)``, ``m <= n``, chained as Muon chains them: ``A = X X^T`` (both
    operands ``X``, as the algorithm's Gram matrix), ``B = A A``, then ``X = B X``.

    The elementwise parts of a step (``a X + (b A + c B) X``) are left out. ``X`` starts with
    orthonormal rows, so that ``A`` and ``B`` are the identity and the chain stays finite; the
    compiler cannot know that, and a product costs the same whatever its values.
    """
    rng = np.random.default_rng(0)
    xs = []
    for g in jax.tree.leaves(grads):
        if g.ndim != 2:
            continue
        m, n = _wide(g.shape)
        q, _ = np.linalg.qr(rng.standard_normal((n, m)).astype(np.float32))
        xs.append(jnp.asarray(q.T, jnp.float32))

    def kernel(xs):
        total = jnp.float32(0)
        for x in xs:
            for _ in range(ns_steps):
                a = x @ x.T
                x = (a @ a) @ x
            total = total + jnp.sum(x)
        return total

    return FlopFloor(kernel, xs)


def galore_matmuls(rank: int):
    """GaLore's two projections per matrix leaf: ``P^T G`` into rank ``r`` and ``P U`` back."""

    def products(grads):
        out = []
        for g in jax.tree.leaves(grads):
            if g.ndim != 2:
                continue
            m, n = _wide(g.shape)
            r = min(rank, m)
            out += [((r, m), (m, n)), ((m, r), (r, n))]
        return out

    return products


def _more_optimizers() -> list[Optimizer]:
    """Every other named optimizer of the registry, with the state arrays its step streams."""
    contrib = optax.contrib
    one, two, three = (jnp.float32,), (jnp.float32,) * 2, (jnp.float32,) * 3

    def row(name, g, o, moments, **kw):
        k = len(moments)
        return Optimizer(name, g, o, read=8 + 4 * k, write=4 + 4 * k, moments=moments, **kw)

    return [
        row("adam", lambda: gc.adam(3e-4), lambda: optax.adam(3e-4), two),
        row("rmsprop", lambda: gc.rmsprop(1e-3), lambda: optax.rmsprop(1e-3), one),
        row("adagrad", lambda: gc.adagrad(0.1), lambda: optax.adagrad(0.1), one),
        row("adamax", lambda: gc.adamax(1e-3), lambda: optax.adamax(1e-3), two),
        row("adamaxw", lambda: gc.adamaxw(1e-3), lambda: optax.adamaxw(1e-3), two),
        row("amsgrad", lambda: gc.amsgrad(1e-3), lambda: optax.amsgrad(1e-3), three),
        row("nadam", lambda: gc.nadam(1e-3), lambda: optax.nadam(1e-3), two),
        row("nadamw", lambda: gc.nadamw(1e-3), lambda: optax.nadamw(1e-3), two),
        row("radam", lambda: gc.radam(1e-3), lambda: optax.radam(1e-3), two),
        row(
            "lamb",
            lambda: gc.lamb(1e-3, weight_decay=0.01),
            lambda: optax.lamb(1e-3, weight_decay=0.01),
            two,
            leaf_norms=4,  # the update's norm reads the gradients and both moments, and ||p||
        ),
        row(
            "lars",
            lambda: gc.lars(0.1, weight_decay=0.01),
            lambda: optax.lars(0.1, weight_decay=0.01),
            one,
            leaf_norms=2,  # ||p|| and the norm of g + wd p
        ),
        row(
            "prodigy",
            lambda: gc.prodigy(),
            lambda: contrib.prodigy(),
            (jnp.float32,) * 4,
            # <g, x0 - x> reads g, x0 and x; the l1 norm of the new s reads s (state order:
            # exp_avg, exp_avg_sq, grad_sum, params0)
            global_norm=(0, 1, 4, 5),
        ),
        row(
            "dadapt_adamw",
            lambda: gc.dadapt_adamw(),
            lambda: contrib.dadapt_adamw(),
            three,
            # <g, s / sqrt(v)> reads g, v and s; the l1 norm of the new s reads s again
            global_norm=(1, 3, 4, 4),
        ),
        row(
            "schedule_free_sgd",
            lambda: gc.schedule_free_sgd(0.1),
            lambda: contrib.schedule_free_sgd(0.1),
            one,
        ),
        row(
            "schedule_free_adamw",
            lambda: gc.schedule_free_adamw(1e-3),
            lambda: contrib.schedule_free_adamw(1e-3),
            two,
        ),
        row(
            "sophia",
            lambda: gc.sophia(1e-3),
            lambda: contrib.sophia(1e-3),
            two,
            extra={"obj_fn": _loss},
        ),
        row(
            "muon",
            lambda: gc.muon(1e-3),
            lambda: contrib.muon(1e-3),
            one,
            matmuls=newton_schulz_matmuls,
        ),
        row(
            "galore",
            lambda: gc.galore(1e-3, rank=32, update_proj_gap=200),
            lambda: contrib.galore(1e-3, rank=32, update_proj_gap=200),
            two,
            matmuls=galore_matmuls(32),
        ),
        row(
            "MultiSteps(adam)",
            lambda: gc.MultiSteps(gc.adam(3e-4), 4),
            lambda: optax.MultiSteps(optax.adam(3e-4), 4),
            three,
        ),
        row("sgd", lambda: gc.sgd(0.1), lambda: optax.sgd(0.1), ()),
        *_registry_rest(),
        row(
            "adam_8bit",
            lambda: gc.adam_8bit(3e-4),
            lambda: optax.adam(3e-4),
            (jnp.uint8, jnp.uint8),
        ),
        row(
            "lion_8bit",
            lambda: gc.lion_8bit(1e-4),
            lambda: optax.lion(1e-4),
            (jnp.uint8,),
        ),
    ]


def soap_matmuls(max_precond_dim: int = 10000):
    """SOAP's products per matrix leaf and step, for each axis of at most ``max_precond_dim``
    (of size ``d``, the other ``k``): the gradient, the momentum and the update projected by the
    eigenbasis ``Q`` (``d x d`` by ``d x k``) and the statistic ``G G^T`` (``d x k`` by ``k x
    d``). The eigenbasis refresh (a QR every ``precondition_frequency`` steps) is left out."""

    def products(grads):
        out = []
        for g in jax.tree.leaves(grads):
            if g.ndim != 2:
                continue
            for axis, d in enumerate(g.shape):
                if d > max_precond_dim:
                    continue
                k = g.shape[1 - axis]
                out += [((d, d), (d, k))] * 3 + [((d, k), (k, d))]
        return out

    return products


def _registry_rest() -> list[Optimizer]:
    """The registry's other named optimizers (tests/registry.py). The arrays of their floors are
    read from gradchain's state (:func:`state_moments`): a state array the step only reads
    (DoG's and DoWG's initial parameters, MADGRAD's ``x0``, COCOB's initial particles) counts
    as read and written, so those floors are up to 4 bytes per parameter high."""

    def row(name, g, o, **kw):
        kw.setdefault("moments", None)
        read, write = floor_bytes(kw["moments"]) if kw["moments"] is not None else (0, 0)
        return Optimizer(name, g, o, read=read, write=write, **kw)

    value = {"value": jnp.float32(1.0)}
    contrib = optax.contrib

    def both(name, *args, **kwargs):
        o = getattr(optax, name, None) or getattr(contrib, name, None)
        return (
            lambda: getattr(gc, name)(*args, **kwargs),
            None if o is None else (lambda: o(*args, **kwargs)),
        )

    return [
        row("sgd+nesterov", *both("sgd", 0.1, momentum=0.9, nesterov=True)),
        row("adabelief", *both("adabelief", 1e-3)),
        row("yogi", *both("yogi", 1e-3)),
        row("adadelta", *both("adadelta", 1.0, weight_decay=0.01)),
        row("adan", *both("adan", 1e-3, weight_decay=0.01)),
        row("novograd", *both("novograd", 1e-3, weight_decay=0.01), leaf_norms=(1,)),
        row("fromage", *both("fromage", 1e-2), leaf_norms=2),
        row("rprop", *both("rprop", 1e-3)),
        row("sm3", *both("sm3", 0.1)),
        row("sign_sgd", *both("sign_sgd", 1e-3)),
        row("signum", *both("signum", 1e-3)),
        row("noisy_sgd", lambda: gc.noisy_sgd(0.1, key=0), lambda: optax.noisy_sgd(0.1, key=0)),
        row("polyak_sgd", *both("polyak_sgd", 0.1), extra=value, global_norm=True),
        row("optimistic_gradient_descent", *both("optimistic_gradient_descent", 0.1)),
        row("optimistic_adam", *both("optimistic_adam", 1e-3)),
        row("optimistic_adam_v2", *both("optimistic_adam_v2", 1e-3)),
        row("acprop", *both("acprop", 1e-3, weight_decay=0.01)),
        row("cocob", *both("cocob", weight_decay=0.01)),
        # The distance ||x - x0|| and the gradients' norm, before any update.
        row("dog", *both("dog", weight_decay=0.01), global_norm=(0, 1, 2)),
        row("dowg", *both("dowg", weight_decay=0.01), global_norm=(0, 1, 2)),
        row("madgrad", *both("madgrad", 1e-3, weight_decay=0.01)),
        # <g, x>, <d, x> and ||d||^2 (d the new momentum, and v for Momo-Adam's norm).
        row("momo", *both("momo", 0.1, weight_decay=0.01), extra=value, global_norm=(0, 1, 2)),
        row(
            "momo_adam",
            *both("momo_adam", 1e-2, weight_decay=0.01),
            extra=value,
            global_norm=(0, 1, 2, 3),
        ),
        row("ademamix", *both("ademamix", 1e-3, weight_decay=0.1)),
        row("simplified_ademamix", *both("simplified_ademamix", 1e-3)),
        row("adopt", *both("adopt", 1e-3)),
        # The mask's count per leaf: the sign of the update (from the moments) times g's.
        row("cautious_adamw", lambda: gc.cautious_adamw(1e-3), None, leaf_norms=(1, 2, 3)),
        row("cautious_lion", lambda: gc.cautious_lion(1e-4), None, leaf_norms=(1, 2)),
        row("mars", lambda: gc.mars(1e-3), None),
        row("soap", lambda: gc.soap(3e-3), None, matmuls=soap_matmuls()),
        # Quantized states are blocks of codes: their floors name the bytes per parameter (two
        # 4-bit moments streamed as one byte).
        row(
            "adamw_4bit",
            lambda: gc.adamw_4bit(3e-4, weight_decay=0.1),
            None,
            moments=(jnp.uint8,),
        ),
        row("sgd_8bit", lambda: gc.sgd_8bit(0.1, momentum=0.9), None, moments=(jnp.uint8,)),
    ]


# ---------------------------------------------------------------------------------------------
# Compiled steps


@dataclasses.dataclass
class Variant:
    """A compiled step with its own (donated) parameters and state."""

    name: str
    call: Callable[[], None]
    compile_s: float
    compile_cpu_s: float  # CPU seconds of all threads: what the compile costs, whatever the load
    traffic: float  # bytes accessed per parameter, XLA's count
    state_bytes: float  # optimizer-state bytes per parameter
    times: list = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _traffic(compiled, n_params: int) -> float:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not report costs
        return float("nan")
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float(cost.get("bytes accessed", float("nan"))) / n_params


def _nbytes(tree) -> int:
    return sum(int(x.size) * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def _donated_variant(name, step, params, state, grads, state_bytes: float) -> Variant:
    """Compiles ``(params, state) <- step(params, state, grads)`` with both donated."""
    n = count_params(params)
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    box = [params, state]

    def call():
        box[0], box[1] = compiled(box[0], box[1], grads)
        jax.block_until_ready(box)

    return Variant(name, call, compile_s, compile_cpu_s, _traffic(compiled, n), state_bytes)


def optimizer_variant(name, tx, apply_updates, params, grads, extra=None) -> Variant:
    """Compiles ``params <- apply_updates(params, tx.update(grads, state, params))``."""
    params = jax.tree.map(jnp.copy, params)
    # Copied: a state that starts as the parameters themselves (Prodigy's params0,
    # schedule-free's z) would otherwise donate one buffer twice.
    state = jax.tree.map(jnp.copy, tx.init(params))
    extra = extra or {}

    def step(p, s, g):
        u, s = tx.update(g, s, p, **extra)
        return apply_updates(p, u), s

    return _donated_variant(name, step, params, state, grads, _nbytes(state) / count_params(params))


def _reads(spec: bool | int | tuple[int, ...]) -> tuple[int, ...]:
    """The indices, in (parameters, gradients, moments), that a floor's reduction pass reads:
    True is the gradients; an int ``k`` the first ``k`` arrays; a tuple itself."""
    if spec is True:
        return (1,)
    if isinstance(spec, tuple):
        return spec
    return tuple(range(int(spec)))


def array_floor_variant(
    params,
    grads,
    moments,
    global_norm: bool | tuple[int, ...],
    name="array floor",
    leaf_norms: int | tuple[int, ...] = 0,
) -> Variant:
    """The step's own arrays streamed once: ``x + s * g`` for the parameters and each moment.

    ``moments`` gives the dtype of each state array (one per parameter leaf, shaped like it);
    ``s`` is 1; or, with ``global_norm``, a norm over every leaf of the arrays it names (the
    gradients for True; see :class:`Optimizer`), one more read of each before any update; or,
    with ``leaf_norms``, each leaf's own norm over the arrays it names (its first ``k`` for an
    int: parameters, gradients, moments, as a trust ratio needs).
    """
    params = jax.tree.map(jnp.copy, params)
    state = [jax.tree.map(lambda p, d=d: jnp.zeros(p.shape, d), params) for d in moments]
    global_reads, leaf_reads = _reads(global_norm), _reads(leaf_norms)

    def squares(arrays, reads):
        return sum(
            jnp.vdot(arrays[i].ravel(), arrays[i].ravel()).astype(jnp.float32) for i in reads
        )

    def kernel(p, state, g):
        s = jnp.float32(1.0)
        if global_reads:
            per_leaf = jax.tree.map(lambda *a: squares(a, global_reads), p, g, *state)
            s = jnp.sqrt(sum(jax.tree.leaves(per_leaf)))

        def leaf(p, g, *ms):
            scale = s
            if leaf_reads:
                scale = jnp.sqrt(squares((p, g, *ms), leaf_reads))
            bump = lambda x: x + (scale * g).astype(x.dtype)
            return (bump(p), *(bump(m) for m in ms))

        new_p, *new_state = tree_map_multi(leaf, 1 + len(state), p, g, *state)
        return new_p, new_state

    return _donated_variant(name, kernel, params, state, grads, 0.0)


def flop_floor_variant(products: list | FlopFloor) -> Variant:
    """The matrix products a step must compute, alone: ``A @ B`` for each ``(a_shape,
    b_shape)``, in float32, each result summed into one scalar so that none is dead code; or a
    :class:`FlopFloor`'s own kernel (products chained as the algorithm chains them, with its
    operand layouts).
    """
    if isinstance(products, FlopFloor):
        kernel, operands = products.kernel, products.operands
    else:
        key = jax.random.PRNGKey(0)
        operands = [
            (jax.random.normal(key, a, jnp.float32), jax.random.normal(key, b, jnp.float32))
            for a, b in products
        ]

        def kernel(operands):
            return sum(jnp.sum(a @ b) for a, b in operands)

    t0, c0 = time.perf_counter(), time.process_time()
    compiled = jax.jit(kernel).lower(operands).compile()
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    def call():
        jax.block_until_ready(compiled(operands))

    return Variant("FLOP floor", call, compile_s, compile_cpu_s, float("nan"), 0.0)


def floor_variant(n_params: int, read: int, write: int) -> Variant:
    """A kernel that reads ``read`` and writes ``write`` bytes per parameter, once each.

    The bytes are laid out interleaved, ``a[n, write/u]`` and ``b[n, (read-write)/u]`` in units
    of ``u`` bytes, and the kernel computes ``a + sum(b, axis=1, keepdims=True)``: one streaming
    pass, which no optimizer over separate arrays can beat.
    """
    unit = 4 if read % 4 == 0 and write % 4 == 0 else 2 if read % 2 == 0 and write % 2 == 0 else 1
    dtype = {4: jnp.float32, 2: jnp.int16, 1: jnp.int8}[unit]
    kw, kb = write // unit, (read - write) // unit

    def kernel(a, b):
        total = b[:, :1]
        for k in range(1, kb):
            total = total + b[:, k : k + 1]
        return a + total

    a = jnp.zeros((n_params, kw), dtype)
    b = jnp.ones((n_params, kb), dtype)
    t0, c0 = time.perf_counter(), time.process_time()
    compiled = jax.jit(kernel, donate_argnums=(0,)).lower(a, b).compile()
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    box = [a]

    def call():
        box[0] = compiled(box[0], b)
        jax.block_until_ready(box)

    return Variant(
        "one-pass floor", call, compile_s, compile_cpu_s, _traffic(compiled, n_params), 0.0
    )


def time_round_robin(variants: list[Variant], reps: int, warmup: int = 2) -> None:
    for _ in range(warmup):
        for v in variants:
            v.call()
    for _ in range(reps):
        for v in variants:
            t0 = time.perf_counter()
            v.call()
            v.times.append(time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# Reporting


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    devices = jax.devices()
    kind = devices[0].device_kind if devices else "?"
    return (
        f"{jax.default_backend()} ({len(devices)} x {kind}); host {cpu}, {os.cpu_count()} cores; "
        f"load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}, optax {optax.__version__}, python {platform.python_version()}"
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def ratio(a: float, b: float) -> str:
    return "-" if not (math.isfinite(a) and math.isfinite(b)) or b == 0 else f"{a / b:.2f}x"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
