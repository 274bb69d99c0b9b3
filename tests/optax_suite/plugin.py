"""pytest plugin for running optax's own test files, on optax or rerouted to gradchain.

Load it with ``-p optax_suite.plugin``. With ``GRADCHAIN_OPTAX_REROUTE=1`` it reroutes
optax's public names to gradchain's objects (see :mod:`optax_suite.reroute`) before any
test module is imported. With ``GRADCHAIN_OPTAX_REPORT=path`` it writes ``{test: outcome}`` as
JSON, keyed by the test's path inside optax's package.
"""

from __future__ import annotations

import json
import os

from optax_suite.reroute import reroute, test_key

_outcomes: dict[str, str] = {}


def pytest_configure(config) -> None:
    if os.environ.get("GRADCHAIN_OPTAX_REROUTE") == "1":
        config._gradchain_rerouted = reroute()


def pytest_report_header(config) -> str:
    replaced = getattr(config, "_gradchain_rerouted", None)
    if replaced is None:
        return "optax suite: plain optax (baseline)"
    return f"optax suite: rerouted to gradchain ({len(replaced)} module attributes replaced)"


def pytest_runtest_logreport(report) -> None:
    key = test_key(report.nodeid)
    if report.when == "call" or report.outcome != "passed":
        if report.when == "call" or key not in _outcomes:
            _outcomes[key] = "skipped" if report.skipped else report.outcome
        elif report.outcome == "failed":
            _outcomes[key] = "failed"


def pytest_collectreport(report) -> None:
    if report.failed:
        _outcomes[test_key(report.nodeid) + "::<collection>"] = "failed"


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("GRADCHAIN_OPTAX_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)
