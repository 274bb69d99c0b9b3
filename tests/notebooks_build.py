"""Imports notebooks/build.py (not a package) for the notebook tests."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "_gradchain_notebooks_build", pathlib.Path(__file__).parent.parent / "notebooks" / "build.py"
)
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
cells_of = _module.cells_of
