"""The gradchain demo: race composed optimizers on a small transformer language model.

Trains a byte-level decoder-only transformer (plain JAX, in ``gradchain.demo.model``) on the
Python standard library's own source (no download), or on ``--data PATH``, once per optimizer from
the same initialisation and on the same batches. It replays the gradchain AdamW recipe with optax
on those batches and reports the largest parameter difference, prints a table (final train and
held-out loss, steps/s, optimizer-state bytes per parameter), and writes a PNG of the loss curves
and learning rates plus the metrics as CSV and JSON into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["main"]


class DemoError(ValueError):
    """A bad command line: reported on one line, exit status 2."""


def _parse(argv):
    from gradchain.demo.model import MODEL_SIZES
    from gradchain.demo.race import ENTRIES

    names = ", ".join(e.name for e in ENTRIES)
    p = argparse.ArgumentParser(
        prog="gradchain",
        description="Race gradchain optimizers on a small transformer language model.",
        epilog=f"optimizers: {names} (those this installation provides; default: the first "
        f"{sum(e.in_default_race for e in ENTRIES)})",
    )
    p.add_argument("--steps", type=int, default=250, help="training steps per optimizer (250)")
    p.add_argument(
        "--optimizers", default=None, help="comma-separated names (default: the main race)"
    )
    p.add_argument("--model", default="small", choices=sorted(MODEL_SIZES), help="model size")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per batch (16)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data seed (0)")
    p.add_argument("--data", default=None, help="train on this text file instead of the default")
    p.add_argument("--out", default="gradchain-demo", help="output folder (./gradchain-demo)")
    p.add_argument("--no-parity", action="store_true", help="skip the optax replay")
    return p.parse_args(argv)


def _choose(spec, steps, batch_size):
    from gradchain.demo.race import ENTRIES, available

    if steps <= 0:
        raise DemoError(f"--steps must be a positive number of steps, got {steps}")
    if batch_size <= 0:
        raise DemoError(f"--batch-size must be positive, got {batch_size}")
    offered = available()
    if spec is None:
        if not offered:
            raise DemoError("no optimizer of the race is available in this installation")
        return [e for e in offered.values() if e.in_default_race]
    chosen = []
    known = {e.name for e in ENTRIES}
    for name in (s.strip() for s in spec.split(",")):
        if not name:
            continue
        if name not in known:
            raise DemoError(f"unknown optimizer {name!r}; choose from {', '.join(sorted(known))}")
        if name not in offered:
            raise DemoError(f"optimizer {name!r} is not available in this version of gradchain")
        chosen.append(offered[name])
    if not chosen:
        raise DemoError("--optimizers names no optimizer")
    return chosen


class Progress:
    """A one-line progress bar on a terminal; a few plain lines otherwise (logs, CI)."""

    def __init__(self, name: str, total: int, stream=sys.stderr):
        self.name, self.total, self.stream = name, total, stream
        self.tty = stream.isatty()
        self.start = time.perf_counter()
        self.next_line = 0

    def show(self, step: int, loss: float):
        rate = step / max(time.perf_counter() - self.start, 1e-9)
        if self.tty:
            filled = int(30 * step / self.total)
            bar = "#" * filled + "." * (30 - filled)
            self.stream.write(
                f"\r{self.name:>14} [{bar}] {step}/{self.total} loss {loss:.3f} {rate:.1f} steps/s"
            )
            if step == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif step >= self.next_line or step == self.total:
            self.stream.write(
                f"{self.name:>14} {step:>5}/{self.total} loss {loss:.3f} {rate:.1f} steps/s\n"
            )
            self.stream.flush()
            self.next_line = step + max(1, self.total // 4)


def _train(
    entry, params0, train_batches, valid_batches, n_heads, eval_every, out_stream, shadow=None
):
    """Trains one optimizer; ``shadow`` (an optax transformation) is stepped in lock-step.

    The shadow sees the same gradients at the same parameters every step, so the difference of
    the two updated parameter sets measures the optimizers alone, not the chaotic amplification
    of rounding differences that two free-running trainings would show.
    """
    import jax
    import jax.numpy as jnp

    import gradchain as gc
    from gradchain.demo.model import loss_fn
    from gradchain.demo.race import state_bytes_per_param

    steps = len(train_batches)
    # Live hyperparameters: the learning rate each step used is logged from the state.
    tx = gc.with_live_hyperparams(entry.build(steps, params0))
    state = tx.init(params0)
    shadow_state = shadow.init(params0) if shadow is not None else None

    def evaluate(params, state):
        p = entry.eval_params(state, params) if entry.eval_params else params
        return sum(loss_fn(p, b, n_heads) for b in valid_batches) / len(valid_batches)

    eval_fn = jax.jit(evaluate)

    @jax.jit
    def step(params, state, shadow_state, batch):
        if entry.extra == "per_example":
            # DP-SGD clips each sequence's gradient: one per sequence, by vmap; their mean is
            # the batch gradient.
            one = jax.value_and_grad(lambda p, seq: loss_fn(p, seq[None], n_heads))
            losses, grads = jax.vmap(one, in_axes=(None, 0))(params, batch)
            loss = jnp.mean(losses)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(params, batch, n_heads)
        extra = {}
        if entry.extra == "obj_fn":
            extra["obj_fn"] = lambda p: loss_fn(p, batch, n_heads)
        if entry.extra == "value":
            extra["value"] = loss
        updates, state = tx.update(grads, state, params, **extra)
        new_params = gc.apply_updates(params, updates)
        gap = jnp.zeros(())
        if shadow is not None:
            shadow_updates, shadow_state = shadow.update(grads, shadow_state, params)
            shadow_params = gc.apply_updates(params, shadow_updates)
            gaps = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), new_params, shadow_params)
            gap = jnp.max(jnp.stack(jax.tree.leaves(gaps)))
        return new_params, state, shadow_state, loss, gap

    params = params0
    train_curve, valid_curve, lrs = [], [], []
    valid_curve.append((0, float(eval_fn(params, state))))
    progress = Progress(entry.name, steps, out_stream)
    parity = 0.0
    t0 = 0.0  # set after the first step, which includes compilation
    for i in range(steps):
        params, state, shadow_state, loss, gap = step(params, state, shadow_state, train_batches[i])
        if i == 0:
            loss.block_until_ready()
            t0 = time.perf_counter()  # the first step includes compilation
        loss = float(loss)
        parity = max(parity, float(gap))
        train_curve.append(loss)
        lrs.append(_learning_rate(state))
        if (i + 1) % eval_every == 0 or i + 1 == steps:
            valid_curve.append((i + 1, float(eval_fn(params, state))))
        progress.show(i + 1, loss)
    elapsed = time.perf_counter() - t0 if steps > 1 else float("nan")
    return {
        "name": entry.name,
        "summary": entry.summary,
        "train": train_curve,
        "valid": valid_curve,
        "lr": lrs,
        "steps_per_s": (steps - 1) / elapsed if steps > 1 else float("nan"),
        "state_bytes_per_param": state_bytes_per_param(tx, params0),
        "parity": parity if shadow is not None else None,
    }


def _learning_rate(state) -> float:
    """The learning rate the last step used: the outermost one where an optimizer has several
    (Muon's two groups, Schedule-Free's wrapper and base); NaN where there is none."""
    import numpy as np

    import gradchain as gc

    found = sorted(gc.tree_get_all_with_path(state, "learning_rate"), key=lambda pv: len(pv[0]))
    return float(found[0][1]) if found and np.ndim(found[0][1]) == 0 else float("nan")


def _optax_shadow(entry, steps, params0):
    """The optax twin of the AdamW recipe, or None where optax is not installed."""
    if entry.name != "adamw":
        return None
    try:
        from gradchain.demo.race import optax_recipe

        return optax_recipe(steps, params0)
    except ImportError:
        return None


def run(args, out_stream=sys.stderr) -> dict:
    import jax
    import numpy as np

    from gradchain.demo import data as data_mod
    from gradchain.demo import report
    from gradchain.demo.model import MODEL_SIZES, init_params

    entries = _choose(args.optimizers, args.steps, args.batch_size)
    config = MODEL_SIZES[args.model]
    try:
        text, source = data_mod.load_corpus(args.data)
        train, valid = data_mod.split(text, config.seq_len)
    except data_mod.DataError as e:
        raise DemoError(str(e)) from None
    train_batches = data_mod.batches(train, args.batch_size, config.seq_len, args.steps, args.seed)
    valid_batches = data_mod.batches(valid, 32, config.seq_len, 4, args.seed + 1)
    params0 = init_params(config, jax.random.PRNGKey(args.seed))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params0))
    print(
        f"gradchain demo: {n_params:,}-parameter transformer ({args.model}), {len(text):,} bytes of "
        f"{source}, {args.steps} steps x {args.batch_size} x {config.seq_len} tokens, "
        f"on {jax.devices()[0].platform.upper()}",
        file=out_stream,
    )
    eval_every = max(1, args.steps // 10)
    results = []
    for entry in entries:
        shadow = None if args.no_parity else _optax_shadow(entry, args.steps, params0)
        results.append(
            _train(
                entry,
                params0,
                train_batches,
                valid_batches,
                config.n_heads,
                eval_every,
                out_stream,
                shadow,
            )
        )
    parity = next((r["parity"] for r in results if r["parity"] is not None), None)
    summary = report.write(args, results, parity, n_params, source)
    return summary


def main(argv=None) -> int:
    args = _parse(argv)
    try:
        summary = run(args)
    except DemoError as e:
        print(f"gradchain: error: {e}", file=sys.stderr)
        return 2
    from gradchain.demo import report

    print(report.table(summary))
    print(
        f"\nwrote {summary['files']['plot']}, {summary['files']['csv']}, {summary['files']['json']}"
    )
    return 0
