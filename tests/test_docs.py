"""The documentation site builds with zero warnings, documents every public name, and its
examples run; the README stays a short first read.

The site is built once per test session (shared by the xdist workers) with the notebooks'
committed outputs (``nb_execution_mode=off``): ``tests/test_notebooks.py`` executes every notebook
already, and ``make docs`` executes them into the site.
"""

from __future__ import annotations

import fcntl
import importlib
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest
from registry import TRANSFORMS
from sphinx.util.inventory import InventoryFile

import gradchain

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BUILD_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``(html folder, sphinx-build output)`` of one build, shared by the xdist workers."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    out, log = shared / "docs-html", shared / "docs-build.log"
    with open(shared / "docs-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not log.exists():
            result = subprocess.run(
                [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q"]
                + ["-D", "nb_execution_mode=off", str(DOCS), str(out)],
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            log.write_text(f"exit {result.returncode}\n{result.stdout}{result.stderr}")
    return out, log.read_text()


def test_the_site_builds_with_zero_warnings(site):
    _, log = site
    assert log.startswith("exit 0\n") and "WARNING" not in log and "ERROR" not in log, log


def _public_names():
    """``(subpackage, name)`` for every name of every subpackage's ``__all__``."""
    for info in pkgutil.iter_modules(gradchain.__path__):
        if info.ispkg:
            module = importlib.import_module(f"gradchain.{info.name}")
            for name in getattr(module, "__all__", ()):
                yield module.__name__, name


def test_every_public_name_has_a_page_entry(site):
    out, _ = site
    inventory = InventoryFile.load((out / "objects.inv").open("rb"), "", lambda *a: "/".join(a[1:]))
    entries = {name for objects in inventory.values() for name in objects}
    missing = [f"gradchain.{n}" for n in gradchain.__all__ if f"gradchain.{n}" not in entries]
    missing += [
        f"{package}.{n}"
        for package, n in _public_names()
        if f"{package}.{n}" not in entries and f"gradchain.{n}" not in entries
    ]
    assert not missing, f"public names without a page entry: {missing}"


def _page_text(path: pathlib.Path) -> str:
    html = path.read_text()
    html = re.sub(r"<(script|style).*?</\1>", "", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_every_transformation_page_has_its_update_rule_and_state_bytes(site):
    out, _ = site
    pages = {p.stem: p for p in (out / "api").glob("*/*.html")}
    for name in sorted({e.name for e in TRANSFORMS}):
        text = _page_text(pages[name])
        assert "bytes per parameter" in text and "Non-finite gradients" in text, name
    # Adam keeps two float32 moments; Adafactor one number per row and column of the matrix.
    assert "Total: 8.00 bytes per parameter" in _page_text(pages["adamw"])
    assert "Total: 0.02 bytes per parameter" in _page_text(pages["adafactor"])
    # The math is rendered: MathJax reads the \( \) and \[ \] spans the docstrings become.
    assert "\\hat m_t" in pages["scale_by_adam"].read_text()
    # A named optimizer's page shows its rule composed by gradchain.describe.
    assert "Update rule, composed" in _page_text(pages["adamw"])
    assert "\\begin{aligned}" in pages["adamw"].read_text()


def test_the_notebooks_are_in_the_site_with_their_outputs(site):
    out, _ = site
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb in notebooks:
        html = (out / "notebooks" / f"{nb.stem}.html").read_text()
        assert "cell_output" in html, nb.name


@pytest.mark.parametrize("page", ["migrating_from_optax.md", "coming_from_torch.md"])
def test_the_examples_of_a_page_run(page):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/{page}#{i}", "exec"), {"__name__": "docs_example"})


def test_the_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    first_code = text.index("```")
    assert (
        text.startswith("```sh\nmake demo", first_code) and "make test" in text[first_code:][:200]
    )
