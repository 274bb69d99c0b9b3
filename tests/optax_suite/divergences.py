"""The optax tests that pass on optax and deliberately fail through gradchain, with the reason.

Keys are test ids inside optax's package folder (``_src/alias_test.py::Class::test_name``).
Every other test that passes on optax must pass through gradchain; the list is kept short by
fixing gradchain, not by adding to it. docs/DIVERGENCES.md explains each kind.
"""

from __future__ import annotations

_INTEGER_PARAMS = (
    "integer parameters are refused where float state is kept (optax silently keeps integer "
    "moments, which truncate every update)"
)
_CONSTRUCTION_ERRORS = (
    "invalid hyperparameters raise ValueError when the transformation is built, not at its "
    "first update"
)

DIVERGENCES: dict[str, str] = {
    "_src/combine_test.py::ExtraArgsTest::test_extra_args": _INTEGER_PARAMS,
    "transforms/_combining_test.py::ExtraArgsTest::test_extra_args": _INTEGER_PARAMS,
    "_src/transform_test.py::TransformTest::test_lion_invalid_mode_raises": _CONSTRUCTION_ERRORS,
    # optax warns and returns a constant schedule; gradchain raises ValueError naming the argument.
    "schedules/_schedule_test.py::ExponentialTest::test_nonvalid_decay_rate0": _CONSTRUCTION_ERRORS,
    "schedules/_schedule_test.py::ExponentialTest::test_nonvalid_decay_rate1": _CONSTRUCTION_ERRORS,
    "schedules/_schedule_test.py::ExponentialTest::test_nonvalid_transition_steps0": (
        _CONSTRUCTION_ERRORS
    ),
    "schedules/_schedule_test.py::ExponentialTest::test_nonvalid_transition_steps1": (
        _CONSTRUCTION_ERRORS
    ),
}

__all__ = ["DIVERGENCES"]
