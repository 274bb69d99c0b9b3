"""The optax test files the suite runs, as paths inside optax's package folder."""

from __future__ import annotations

FILES = (
    "_src/alias_test.py",
    "_src/transform_test.py",
    "_src/update_test.py",
    "_src/combine_test.py",
    "_src/factorized_test.py",
    "_src/lookahead_test.py",
    "_src/base_test.py",
    "_src/numerics_test.py",
    "_src/linesearch_test.py",
    "_src/utils_test.py",
    "_src/linear_algebra_test.py",
    "microbatching/_microbatching_test.py",
    "transforms/_accumulation_test.py",
    "transforms/_adding_test.py",
    "transforms/_clipping_test.py",
    "transforms/_combining_test.py",
    "transforms/_conditionality_test.py",
    "transforms/_constraining_test.py",
    "transforms/_freezing_test.py",
    "transforms/_layouts_test.py",
    "transforms/_masking_test.py",
    "transforms/_monitoring_test.py",
    "schedules/_inject_test.py",
    "schedules/_join_test.py",
    "schedules/_schedule_test.py",
    "contrib/_galore_test.py",
    "contrib/_muon_test.py",
    "contrib/_reduce_on_plateau_test.py",
    "contrib/_schedule_free_test.py",
    "contrib/_common_test.py",
    "contrib/_complex_valued_test.py",
    "contrib/_sam_test.py",
    "contrib/_mechanic_test.py",
    "contrib/_privacy_test.py",
)

# Files that test every optimizer of a family, run for gradchain's optimizers only: a regex over
# the parameters absl records for each case. contrib/_common_test.py runs optax's 30 research
# optimizers; the others are not gradchain's (see todo_names.py) and take most of its 30 minutes.
SELECT = {
    "contrib/_common_test.py": (
        r"opt_name='(muon|galore|prodigy|dadapt_adamw|sophia|schedule_free_sgd|"
        r"schedule_free_adamw|ademamix|simplified_ademamix|adopt|acprop|cocob|dog|dowg|madgrad|momo|momo_adam)'"
    ),
}

__all__ = ["FILES", "SELECT"]
