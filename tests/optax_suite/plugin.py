"""pytest plugin for running optax's own test files, on optax or rerouted to gradchain.

Load it with ``-p optax_suite.plugin``. With ``GRADCHAIN_OPTAX_REROUTE=1`` it reroutes
optax's public names to gradchain's objects (see :mod:`optax_suite.reroute`) before any
test module is imported. With ``GRADCHAIN_OPTAX_REPORT=path`` it writes ``{test: outcome}`` as
JSON, keyed by the test's path inside optax's package. With ``GRADCHAIN_OPTAX_BREAK=name`` the
body of ``gradchain.<name>`` is replaced by one that raises, to show that the rerouted tests run
gradchain's code (the object keeps its identity, so rerouting still finds it). With
``GRADCHAIN_OPTAX_SELECT=regex`` only the parameterized cases whose parameters (absl writes them
in the test's docstring) match the regex run; the others are reported as "deselected".
"""

from __future__ import annotations

import json
import os
import re

from optax_suite.reroute import reroute, test_key

_outcomes: dict[str, str] = {}


def _sabotaged(*args, **kwargs):
    raise RuntimeError("gradchain code ran under optax's tests")


def pytest_configure(config) -> None:
    broken = os.environ.get("GRADCHAIN_OPTAX_BREAK")
    if broken:
        import gradchain

        getattr(gradchain, broken).__code__ = _sabotaged.__code__
    if os.environ.get("GRADCHAIN_OPTAX_REROUTE") == "1":
        config._gradchain_rerouted = reroute()


def pytest_collection_modifyitems(config, items) -> None:
    pattern = os.environ.get("GRADCHAIN_OPTAX_SELECT")
    if not pattern:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "obj", None), "__doc__", None) or ""
        (keep if re.search(pattern, params) else drop).append(item)
    for item in drop:
        _outcomes[test_key(item.nodeid)] = "deselected"
    config.hook.pytest_deselected(items=drop)
    items[:] = keep


def pytest_report_header(config) -> str:
    replaced = getattr(config, "_gradchain_rerouted", None)
    if replaced is None:
        return "optax suite: plain optax (baseline)"
    return f"optax suite: rerouted to gradchain ({len(replaced)} module attributes replaced)"


def pytest_runtest_logreport(report) -> None:
    # pytest 9 reports each failing ``self.subTest`` as a report of its own, before the test's
    # own "call" report, which passes when only subtests failed; so a failure is final: the test
    # counts as failed when its setup, call, teardown or any of its subtests failed.
    key = test_key(report.nodeid)
    if _outcomes.get(key) == "failed":
        return
    if report.failed:
        _outcomes[key] = "failed"
    elif report.when == "call" or (report.skipped and key not in _outcomes):
        _outcomes[key] = "skipped" if report.skipped else report.outcome


def pytest_collectreport(report) -> None:
    if report.failed:
        _outcomes[test_key(report.nodeid) + "::<collection>"] = "failed"


def pytest_sessionfinish(session) -> None:
    path = os.environ.get("GRADCHAIN_OPTAX_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=0, sort_keys=True)
