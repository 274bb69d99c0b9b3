"""The README's table of the optax suite, from the recorded baseline and the two lists.

    PYTHONPATH=tests python -m optax_suite.table            # print it
    PYTHONPATH=tests python -m optax_suite.table --write    # and put it in README.md

``test_optax_suite.py`` fails when a test that passes on optax fails through gradchain without
being listed in ``divergences.py`` or ``known_failures.py``, and when a listed test passes; so
with the suite green, a file's count through gradchain is its baseline passes less its listed
tests. ``test_optax_suite.py::test_readme_table_is_the_lists_table`` keeps the README in step.
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


README = Path(__file__).resolve().parents[2] / "README.md"


Rows = list[tuple[str, int, int, int, int]]


def rows() -> Rows:
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


def totals(table: Rows) -> list[int]:
    """The columns' sums: optax passes, gradchain passes, divergences, other failures."""
    return [sum(r[i] for r in table) for i in range(1, 5)]


def markdown(table: Rows) -> str:
    lines = [HEADER, "|---|---:|---:|---:|---:|"]
    for path, base, ours, div, gaps in table:
        name = f"`{path}`" + (" (gradchain's optimizers)" if path in SELECT else "")
        lines.append(f"| {name} | {base} | {ours} | {div} | {gaps} |")
    lines.append("| **total** | " + " | ".join(f"**{t}**" for t in totals(table)) + " |")
    return "\n".join(lines)


def summary(table: Rows) -> str:
    """The README's sentence with the totals."""
    base, ours, div, gaps = totals(table)

    def count(n: int, one: str, many: str) -> str:
        return f"{n} {one if n == 1 else many}"

    return (
        f"today {ours} of {base} do, {count(div, 'is a divergence', 'are divergences')} and "
        f"{count(gaps, 'is a gap', 'are gaps')} still open."
    )


def readme_table(text: str) -> str:
    """The table in the README's text: the lines from the header to the total."""
    start = text.index(HEADER)
    end = text.index("\n", text.index("| **total** |", start))
    return text[start:end]


def write_readme(table: Rows) -> None:
    text = README.read_text()
    text = text.replace(readme_table(text), markdown(table))
    start = text.index("today ", text.index("## Drop-in for optax"))
    end = text.index("still open.", start) + len("still open.")
    text = text[:start] + summary(table) + text[end:]
    README.write_text(text)


if __name__ == "__main__":
    import sys

    table = rows()  # one collection run of the selected files serves every output
    if "--write" in sys.argv:
        write_readme(table)
    print(markdown(table))
