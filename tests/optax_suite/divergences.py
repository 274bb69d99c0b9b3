"""The optax tests that pass on optax and deliberately fail through gradchain, with the reason.

Keys are test ids inside optax's package folder (``_src/alias_test.py::Class::test_name``).
Every other test that passes on optax must pass through gradchain; the list is kept short by
fixing gradchain, not by adding to it.
"""

from __future__ import annotations

DIVERGENCES: dict[str, str] = {}

__all__ = ["DIVERGENCES"]
