"""optax tests that pass on optax and still fail through gradchain: bugs to fix, not divergences.

Measured with optax 0.2.8 (see the README's table). The suite fails when a test not listed here
or in divergences.py breaks, and when a listed test passes (then it leaves this list), so the list
only shrinks. Each group is a gradchain gap, described in the report of issue #17.
"""

from __future__ import annotations

KNOWN_FAILURES: frozenset[str] = frozenset()

__all__ = ["KNOWN_FAILURES"]
