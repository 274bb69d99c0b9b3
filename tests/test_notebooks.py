"""The notebooks execute from top to bottom, so the committed copies never rot."""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_carries_outputs_and_matches_its_source(path):
    from notebooks_build import cells_of

    nb = nbformat.read(path, as_version=4)
    src = path.parent / "src" / (path.stem + ".py")
    assert [c.source for c in nb.cells] == [c.source for c in cells_of(src.read_text())], (
        f"{path.name} is stale: run python notebooks/build.py {path.stem[:2]}"
    )
    assert any(c.outputs for c in nb.cells if c.cell_type == "code")
