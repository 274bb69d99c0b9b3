"""optax public names gradchain does not have yet; issue #18 empties this list.

The API-surface test (``test_api_surface.py``) requires every public name of ``optax``,
``optax.contrib`` and ``optax.tree_utils`` (losses, projections, perturbations, assignment and
second_order aside) to be in gradchain's namespace of the same role or listed here. A name that
gradchain gains must leave the list (the test says so).
"""

from __future__ import annotations

TODO: dict[str, tuple[str, ...]] = {
    "optax": (),
    "optax.contrib": (
        "DAdaptAdamWState",
        "ProdigyState",
        "ScheduleFreeState",
    ),
}

__all__ = ["TODO"]
