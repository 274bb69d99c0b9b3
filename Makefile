# The two commands a newcomer runs: `make demo` and `make test`. Each creates the virtual
# environment when it is missing and installs gradchain with the extras it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[demo]'
	touch $@

LINTED := gradchain tests benchmarks notebooks

test: $(VENV)/.test-installed lint
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

lint: $(VENV)/.test-installed
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/ruff check $(LINTED)

demo: $(VENV)/.demo-installed
	$(BIN)/python -m gradchain.demo

clean:
	rm -rf $(VENV) gradchain-demo
