# jaxlib's compiled core ships no type stubs. gradchain declares here the part of it that its
# own code touches (the tree definition object), so that mypy checks those calls instead of
# treating the type as unknown; everything else in jaxlib stays Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
