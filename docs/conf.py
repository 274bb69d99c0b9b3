"""Sphinx configuration of the gradchain site: ``make docs`` builds it into docs/_build/html."""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

import gradchain  # noqa: E402

project = "gradchain"
author = "the gradchain authors"
copyright = "the gradchain authors"
release = gradchain.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "gradchain_api",
]

# The API pages come from gradchain_api (one per public name); autosummary only draws the tables.
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
add_module_names = False

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

# Every build executes the notebooks, so the site shows what the current code prints. The test
# suite builds with ``-D nb_execution_mode=off`` (the committed outputs) because
# tests/test_notebooks.py executes every notebook already.
nb_execution_mode = "force"
nb_execution_timeout = 600
nb_execution_raise_on_error = True
nb_execution_show_tb = True

exclude_patterns = ["_build", "_ext", "notebooks/src", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

html_theme = "furo"
html_title = "gradchain"
