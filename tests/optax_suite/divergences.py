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
_LOW_PRECISION_STATE = (
    "bfloat16/float16 parameters get float32 state by default (optax keeps the parameter's "
    "dtype, where Adam's b2 = 0.999 rounds to 1); a dtype argument chooses otherwise"
)
_CONSTRUCTION_ERRORS = (
    "invalid hyperparameters raise ValueError when the transformation is built, not at its "
    "first update"
)

DIVERGENCES: dict[str, str] = {
    "_src/combine_test.py::ExtraArgsTest::test_extra_args": _INTEGER_PARAMS,
    "transforms/_combining_test.py::ExtraArgsTest::test_extra_args": _INTEGER_PARAMS,
    "_src/transform_test.py::TransformTest::test_lion_invalid_mode_raises": _CONSTRUCTION_ERRORS,
    # sgd(momentum, accumulator_dtype=None), adam and adamw(mu_dtype=None) on bfloat16
    # parameters: optax's trace and mu are bfloat16.
    "_src/alias_test.py::AliasTest::test_explicit_dtype9": _LOW_PRECISION_STATE,
    "_src/alias_test.py::AliasTest::test_explicit_dtype10": _LOW_PRECISION_STATE,
    "_src/alias_test.py::AliasTest::test_explicit_dtype11": _LOW_PRECISION_STATE,
    # scale_by_adam(mu_dtype=float32) inside galore on bfloat16 parameters: optax's nu is bfloat16.
    "contrib/_galore_test.py::GaLoreTest::test_mu_dtype_controls_moment_dtype": (
        _LOW_PRECISION_STATE
    ),
    # schedule_free(state_dtype=None) on bfloat16 parameters: optax's z is bfloat16.
    "contrib/_schedule_free_test.py::ScheduleFreeTest::test_explicit_dtype3": _LOW_PRECISION_STATE,
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
