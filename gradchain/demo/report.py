"""The demo's outputs: the table, the PNG plot, and the metrics as CSV and JSON."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import platform


def _smooth(xs, width=10):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > width:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def write(args, results, parity, n_params, source) -> dict:
    import jax

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        start = r["valid"][0][1]
        end = r["valid"][-1][1]
        rows.append(
            {
                "optimizer": r["name"],
                "summary": r["summary"],
                "final_train_loss": _smooth(r["train"])[-1],
                "initial_held_out_loss": start,
                "final_held_out_loss": end,
                "steps_per_s": r["steps_per_s"],
                "state_bytes_per_param": r["state_bytes_per_param"],
            }
        )
    summary = {
        "machine": f"{platform.machine()} {platform.system()}, {jax.devices()[0].device_kind}",
        "backend": jax.default_backend(),
        "model": args.model,
        "n_params": n_params,
        "data": source,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "parity_max_abs_diff_vs_optax": parity,
        "results": rows,
        "files": {
            "plot": str(out / "loss.png"),
            "csv": str(out / "metrics.csv"),
            "json": str(out / "summary.json"),
        },
    }
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optimizer", "step", "train_loss", "held_out_loss", "learning_rate"])
        for r in results:
            valid = dict(r["valid"])
            for i, (loss, lr) in enumerate(zip(r["train"], r["lr"]), start=1):
                w.writerow([r["name"], i, f"{loss:.6f}", _fmt(valid.get(i)), _fmt(lr)])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot(results, out / "loss.png")
    return summary


def _fmt(x):
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for r in results:
        steps = range(1, len(r["train"]) + 1)
        (line,) = axes[0].plot(steps, _smooth(r["train"]), label=r["name"], lw=1.2)
        vs, vl = zip(*r["valid"])
        axes[1].plot(vs, vl, marker="o", ms=3, color=line.get_color(), label=r["name"])
        if any(not math.isnan(x) for x in r["lr"]):
            peak = max(x for x in r["lr"] if not math.isnan(x)) or 1.0
            axes[2].plot(
                steps, [x / peak for x in r["lr"]], color=line.get_color(), label=r["name"]
            )
    axes[0].set(title="train loss (10-step mean)", xlabel="step", ylabel="nats / byte")
    axes[1].set(title="held-out loss", xlabel="step", ylabel="nats / byte")
    axes[2].set(title="learning rate / its peak (from the state)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary) -> str:
    head = f"{'optimizer':<14} {'train':>7} {'held-out':>17} {'steps/s':>8} {'state B/param':>13}"
    lines = [head, "-" * len(head)]
    for r in summary["results"]:
        lines.append(
            f"{r['optimizer']:<14} {r['final_train_loss']:>7.3f} "
            f"{r['initial_held_out_loss']:>7.3f} -> {r['final_held_out_loss']:<6.3f} "
            f"{r['steps_per_s']:>8.1f} {r['state_bytes_per_param']:>13.2f}"
        )
    parity = summary["parity_max_abs_diff_vs_optax"]
    if parity is not None:
        lines.append(
            f"\nparity: optax replaying the adamw recipe on the same batches, from the same "
            f"parameters at every step, lands at most {parity:.2e} away in any parameter "
            f"(max over {summary['steps']} steps)"
        )
    lines.append(f"machine: {summary['machine']}")
    return "\n".join(lines)
