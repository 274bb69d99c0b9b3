"""optax public names gradchain does not have yet; issue #18 empties this list.

The API-surface test (``test_api_surface.py``) requires every public name of ``optax``,
``optax.contrib`` and ``optax.tree_utils`` (losses, projections, perturbations, assignment and
second_order aside) to be in gradchain's namespace of the same role or listed here. A name that
gradchain gains must leave the list (the test says so).
"""

from __future__ import annotations

TODO: dict[str, tuple[str, ...]] = {
    "optax": (
        "AdaptiveGradClipState",
        "AddNoiseState",
        "ApplyEvery",
        "NonNegativeParamsState",
        "ScaleByAdaDeltaState",
        "ScaleByAdanState",
        "ScaleByBeliefState",
        "ScaleByNovogradState",
        "ScaleByRpropState",
        "ScaleBySM3State",
        "ScaleByScheduleState",
        "scale_by_distance_over_gradients",
    ),
    "optax.contrib": (
        "COCOBState",
        "DAdaptAdamWState",
        "DifferentiallyPrivateAggregateState",
        "DoGState",
        "DoWGState",
        "HutchinsonState",
        "MadgradState",
        "MechanicState",
        "MomoAdamState",
        "MomoState",
        "MuonState",
        "NormalizeState",
        "ProdigyState",
        "SAMState",
        "ScheduleFreeState",
        "SplitRealAndImaginaryState",
        "acprop",
        "cocob",
        "differentially_private_aggregate",
        "dog",
        "dowg",
        "dpsgd",
        "madgrad",
        "mechanize",
        "momo",
        "momo_adam",
        "normalize",
        "sam",
        "scale_by_acprop",
        "scale_by_cocob",
        "scale_by_madgrad",
        "split_real_and_imaginary",
    ),
}

__all__ = ["TODO"]
