"""Builds the notebooks from their sources and executes them, so the committed copies carry outputs.

Each ``notebooks/src/NN_name.py`` is a script in "percent" format: ``# %%`` starts a code cell and
``# %% [markdown]`` a Markdown cell whose lines are comments. Run from the repository root:

    python notebooks/build.py            # every notebook
    python notebooks/build.py 01         # the ones whose name starts with 01

The test suite executes the built notebooks (tests/test_notebooks.py), so they never rot.
"""

from __future__ import annotations

import pathlib
import sys

import nbformat
from nbclient import NotebookClient

HERE = pathlib.Path(__file__).parent


def cells_of(source: str):
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind == "markdown":
            text = "\n".join(
                line[2:] if line.startswith("# ") else line.lstrip("#")
                for line in text.splitlines()
            )
            cells.append(nbformat.v4.new_markdown_cell(text))
        elif kind == "code" and text.strip():
            cells.append(nbformat.v4.new_code_cell(text))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        else:
            lines.append(line)
    flush()
    return cells


def build(src: pathlib.Path, execute: bool = True) -> pathlib.Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = cells_of(src.read_text())
    if execute:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
        ).execute()
    out = HERE / (src.stem + ".ipynb")
    nbformat.write(nb, out)
    return out


if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else ""
    for src in sorted((HERE / "src").glob(f"{prefix}*.py")):
        print("built", build(src))
