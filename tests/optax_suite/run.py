"""Runs optax's own test files on optax (baseline) and rerouted to gradchain; prints counts.

    PYTHONPATH=tests python -m optax_suite.run                 # every file, both modes
    PYTHONPATH=tests python -m optax_suite.run --mode gradchain _src/lookahead_test.py

Each file runs in its own pytest process (rerouting patches optax globally, so it must not share
a process with anything else). Outcomes are written to ``--out`` as JSON, one file per mode and
test file, and summarised as the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from optax_suite.divergences import DIVERGENCES
from optax_suite.files import FILES, SELECT
from optax_suite.reroute import optax_dir

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO = TESTS_DIR.parent
BASELINE = Path(__file__).resolve().parent / "baseline.json"


def load_baseline() -> dict:
    """The recorded outcomes of every file on plain optax: ``{"optax": version, "files": ...}``."""
    return json.loads(BASELINE.read_text())


def report_path(path: str, mode: str, out_dir: Path) -> Path:
    return out_dir / f"{mode}--{path.replace('/', '--')}.json"


def read_report(path: str, mode: str, out_dir: Path) -> dict[str, str]:
    report = report_path(path, mode, out_dir)
    return json.loads(report.read_text()) if report.exists() else {f"{path}::<run>": "failed"}


def run_file(
    path: str,
    mode: str,
    out_dir: Path,
    timeout: float = 3600,
    extra: tuple[str, ...] = (),
    env_extra: dict[str, str] | None = None,
) -> tuple[dict[str, str], float]:
    """Runs one optax test file in ``mode`` ("optax" or "gradchain"); ``({test: outcome}, s)``."""
    # Absolute: pytest runs in optax's folder, and the report path is handed to it.
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report_path(path, mode, out_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(REPO), env.get("PYTHONPATH", "")])
    env["GRADCHAIN_OPTAX_REPORT"] = str(report)
    env["GRADCHAIN_OPTAX_REROUTE"] = "1" if mode == "gradchain" else "0"
    if path in SELECT:
        env["GRADCHAIN_OPTAX_SELECT"] = SELECT[path]
    env.update(env_extra or {})
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "optax_suite.plugin",
        "--tb=no",
        "-n",
        "0",
        "--rootdir",
        optax_dir(),
        *extra,
        os.path.join(optax_dir(), path),
    ]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=optax_dir(), timeout=timeout, capture_output=True)
    elapsed = time.perf_counter() - start
    return read_report(path, mode, out_dir), elapsed


def broken_tests(baseline: dict[str, str], outcomes: dict[str, str]) -> list[str]:
    """Tests that pass on optax and not through gradchain (deselected ones aside)."""
    return sorted(
        k
        for k, v in baseline.items()
        if v == "passed" and outcomes.get(k) not in ("passed", "deselected")
    )


def count(outcomes: dict[str, str], outcome: str = "passed") -> int:
    return sum(v == outcome for v in outcomes.values())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", default=list(FILES))
    parser.add_argument("--mode", choices=["both", "optax", "gradchain"], default="both")
    parser.add_argument("--out", type=Path, default=Path("optax-suite-results"))
    parser.add_argument(
        "--reuse", action="store_true", help="read the outcomes already in --out, run nothing"
    )
    parser.add_argument(
        "--record", action="store_true", help="store the optax outcomes as the baseline file"
    )
    args = parser.parse_args(argv)
    modes = ["optax", "gradchain"] if args.mode == "both" else [args.mode]
    rows = []
    for path in args.files:
        if args.reuse:
            results = {m: (read_report(path, m, args.out), 0.0) for m in modes}
        else:
            results = {m: run_file(path, m, args.out) for m in modes}
        row = [path]
        for m in modes:
            outcomes, elapsed = results[m]
            row += [count(outcomes), round(elapsed)]
        base = results["optax"][0] if "optax" in results else None
        if base is None and BASELINE.exists():
            base = load_baseline()["files"].get(path)
        if base is not None and "gradchain" in results:
            ours = results["gradchain"][0]
            if len(modes) == 1:
                row += [count(base)]
            broken = broken_tests(base, ours)
            listed = [k for k in broken if k in DIVERGENCES]
            row += [len(listed), len(broken) - len(listed)]
            for k in broken:
                if k not in DIVERGENCES:
                    print(f"  FAILS THROUGH GRADCHAIN: {k}", flush=True)
        rows.append(row)
        print(" | ".join(str(c) for c in row), flush=True)
        if args.record and "optax" in results:
            import optax

            recorded = load_baseline() if BASELINE.exists() else {"files": {}}
            recorded["optax"] = optax.__version__
            recorded["files"][path] = results["optax"][0]
            recorded["files"] = dict(sorted(recorded["files"].items()))
            BASELINE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    header = ["file"]
    for m in modes:
        header += [f"{m} pass", f"{m} s"]
    if modes == ["gradchain"]:
        header += ["optax pass (recorded)"]
    if "gradchain" in modes:
        header += ["divergences", "unlisted failures"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
