"""optax's own test files, rerouted to gradchain, pass wherever they pass on optax.

Each file runs in a separate pytest process (rerouting patches optax for the whole process). The
baseline, the outcome of every test on plain optax, is recorded in ``baseline.json`` by
``python -m optax_suite.run --mode optax --record``; it is recomputed here when the installed
optax is not the recorded version.
"""

from __future__ import annotations

import optax
import pytest

from optax_suite import table
from optax_suite.divergences import DIVERGENCES
from optax_suite.files import FILES
from optax_suite.known_failures import KNOWN_FAILURES
from optax_suite.run import broken_tests, load_baseline, run_file


def _baseline(path: str, tmp_path) -> dict[str, str]:
    recorded = load_baseline()
    if recorded["optax"] == optax.__version__ and path in recorded["files"]:
        return recorded["files"][path]
    return run_file(path, "optax", tmp_path)[0]


@pytest.mark.parametrize("path", FILES)
def test_optax_tests_pass_through_gradchain(path, tmp_path):
    outcomes, _ = run_file(path, "gradchain", tmp_path)
    broken = [k for k in broken_tests(_baseline(path, tmp_path), outcomes) if k not in DIVERGENCES]
    new = [k for k in broken if k not in KNOWN_FAILURES]
    assert not new, f"{len(new)} fail through gradchain:\n" + "\n".join(new)
    fixed = [k for k in KNOWN_FAILURES if k.startswith(path + "::") and k not in broken]
    assert not fixed, "these pass now; remove them from known_failures.py:\n" + "\n".join(fixed)


@pytest.mark.parametrize(
    ("path", "selection", "name"),
    [
        ("_src/update_test.py", "apply_updates", "apply_updates"),
        ("_src/combine_test.py", "test_chain or test_extra_args_chaining", "chain"),
    ],
)
def test_rerouted_tests_run_gradchain_code(path, selection, name, tmp_path):
    # With gradchain's ``name`` made to raise, the selected tests that pass through gradchain
    # must fail, so the rerouted run is gradchain's code and not optax's.
    extra = ("-k", selection)
    passing, _ = run_file(path, "gradchain", tmp_path / "a", extra=extra)
    broken, _ = run_file(
        path, "gradchain", tmp_path / "b", extra=extra, env_extra={"GRADCHAIN_OPTAX_BREAK": name}
    )
    ran = [k for k, v in passing.items() if v == "passed"]
    assert ran
    assert all(broken[k] == "failed" for k in ran)


_SUBTESTS = """
import unittest


class T(unittest.TestCase):
    def test_subtest_fails(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 1)

    def test_subtests_pass(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertLess(i, 3)

    def test_fails(self):
        self.assertEqual(1, 2)
"""


@pytest.mark.parametrize("mode", ["optax", "gradchain"])
def test_a_failing_subtest_fails_its_test(mode, tmp_path):
    # pytest reports a failing subTest apart from its test, whose own report then passes; the
    # harness must count the test as failed, on the baseline and through gradchain alike.
    source = tmp_path / "subtests_test.py"
    source.write_text(_SUBTESTS)
    outcomes, _ = run_file(str(source), mode, tmp_path / "out")
    by_name = {k.rsplit("::", 1)[-1]: v for k, v in outcomes.items()}
    assert by_name == {
        "test_subtest_fails": "failed",
        "test_subtests_pass": "passed",
        "test_fails": "failed",
    }
    baseline = dict.fromkeys(outcomes, "passed")
    assert [k.rsplit("::", 1)[-1] for k in broken_tests(baseline, outcomes)] == [
        "test_fails",
        "test_subtest_fails",
    ]


def test_divergences_name_real_tests():
    files = load_baseline()["files"]
    for key in DIVERGENCES:
        path = key.split("::", 1)[0]
        assert files.get(path, {}).get(key) == "passed", f"{key} does not pass on optax"


def test_readme_table_is_the_lists_table():
    # The counts follow from the baseline and the two lists, which the test above enforces;
    # ``python -m optax_suite.table --write`` rewrites the README's table from them.
    text, rows = table.README.read_text(), table.rows()
    assert table.readme_table(text) == table.markdown(rows)
    assert table.summary(rows) in " ".join(text.split())
