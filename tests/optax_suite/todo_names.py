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
        "ScaleByBacktrackingLinesearchState",
        "ScaleByBeliefState",
        "ScaleByLBFGSState",
        "ScaleByNovogradState",
        "ScaleByRpropState",
        "ScaleBySM3State",
        "ScaleByScheduleState",
        "ScaleByZoomLinesearchState",
        "ZoomLinesearchInfo",
        "lbfgs",
        "scale_by_backtracking_linesearch",
        "scale_by_lbfgs",
        "scale_by_zoom_linesearch",
        "value_and_grad_from_state",
    ),
    "optax.contrib": (
        "DAdaptAdamWState",
        "DifferentiallyPrivateAggregateState",
        "HutchinsonState",
        "MuonState",
        "ProdigyState",
        "ScaleByAdemamixState",
        "ScaleBySimplifiedAdEMAMixState",
        "ScheduleFreeState",
        "ademamix",
        "adopt",
        "differentially_private_aggregate",
        "dpsgd",
        "scale_by_ademamix",
        "scale_by_adopt",
        "scale_by_simplified_ademamix",
        "simplified_ademamix",
    ),
}

__all__ = ["TODO"]
