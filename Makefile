# The two commands a newcomer runs: `make demo` and `make test` (and `make docs` for the site).
# Each creates the virtual environment when it is missing and installs gradchain with the extras
# it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

$(VENV)/.docs-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

LINTED := gradchain tests benchmarks notebooks docs

test: $(VENV)/.test-installed lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

demo: $(VENV)/.demo-installed
	$(BIN)/python -m gradchain.demo

# The site from scratch into docs/_build/html, warnings as errors, the notebooks executed.
docs: $(VENV)/.docs-installed
	rm -rf docs/_build docs/api
	$(BIN)/python -m sphinx -W --keep-going -E docs docs/_build/html

clean:
	rm -rf $(VENV) gradchain-demo docs/_build docs/api
