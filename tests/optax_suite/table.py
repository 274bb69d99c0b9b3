"""The README's table of the optax suite, from the recorded baseline and the two lists.

    PYTHONPATH=tests python -m optax_suite.table

``test_optax_suite.py`` fails when a test that passes on optax fails through gradchain without
being listed in ``divergences.py`` or ``known_failures.py``, and when a listed test passes; so
with the suite green, a file's count through gradchain is its baseline passes less its listed
tests.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from optax_suite.divergences import DIVERGENCES
from optax_suite.files import FILES, SELECT
from optax_suite.known_failures import KNOWN_FAILURES
from optax_suite.run import load_baseline, run_file

HEADER = (
    "| optax 0.2.8 test file | pass on optax | pass through gradchain | deliberate divergences "
    "| other failures |"
)


def rows() -> list[tuple[str, int, int, int, int]]:
    """``(file, optax passes, gradchain passes, divergences, other failures)`` per file."""
    files = load_baseline()["files"]
    out = []
    for path in FILES:
        passed = {k for k, v in files[path].items() if v == "passed"}
        if path in SELECT:  # only the selected cases run through gradchain: collect them
            with tempfile.TemporaryDirectory() as tmp:
                collected, _ = run_file(path, "gradchain", Path(tmp), extra=("--collect-only",))
            passed = {k for k in passed if collected.get(k) != "deselected"}
        div = sum(k in DIVERGENCES for k in passed)
        gaps = sum(k in KNOWN_FAILURES for k in passed)
        out.append((path, len(passed), len(passed) - div - gaps, div, gaps))
    return out


def markdown() -> str:
    lines = [HEADER, "|---|---|---|---|---|"]
    table = rows()
    for path, base, ours, div, gaps in table:
        name = f"`{path}`" + (" (gradchain's optimizers)" if path in SELECT else "")
        lines.append(f"| {name} | {base} | {ours} | {div} | {gaps} |")
    total = [sum(r[i] for r in table) for i in range(1, 5)]
    lines.append("| **total** | " + " | ".join(f"**{t}**" for t in total) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
