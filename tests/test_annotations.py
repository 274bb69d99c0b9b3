"""The public API is fully annotated: every parameter and every return of every public function,
and every parameter of every public class's constructor, in the root and optax's namespaces."""

import importlib
import inspect
import typing

import pytest

NAMESPACES = (
    "gradchain",
    "gradchain.checkpoint",
    "gradchain.contrib",
    "gradchain.core",
    "gradchain.losses",
    "gradchain.optimizers",
    "gradchain.projections",
    "gradchain.scale_out",
    "gradchain.schedules",
    "gradchain.transforms",
    "gradchain.tree",
    "gradchain.tree_utils",
)


def _public_callables() -> dict[str, object]:
    """Each public function or class once, under the first namespace that exports it."""
    found: dict[int, tuple[str, object]] = {}
    for namespace in NAMESPACES:
        module = importlib.import_module(namespace)
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and getattr(obj, "__module__", "").startswith("gradchain"):
                found.setdefault(id(obj), (f"{namespace}.{name}", obj))
    return dict(found.values())


def _unannotated(obj) -> list[str]:
    """The names of ``obj``'s parameters without an annotation, and ``return`` for a function
    without a return annotation. A protocol has no constructor of its own to annotate."""
    if inspect.isclass(obj) and typing.Protocol in obj.__mro__:
        return []
    signature = inspect.signature(obj)
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.annotation is inspect.Parameter.empty
        and not (p.name == "self" and p.kind is inspect.Parameter.POSITIONAL_ONLY)
    ]
    if not inspect.isclass(obj) and signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


PUBLIC = _public_callables()


def test_the_namespaces_hold_the_optimizers_and_transformations():
    # A walk that found nothing would pass vacuously.
    for name in ("gradchain.adamw", "gradchain.adamw_8bit", "gradchain.contrib.muon"):
        assert name in PUBLIC or any(n.endswith("." + name.split(".")[-1]) for n in PUBLIC)
    assert len(PUBLIC) > 250


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_every_parameter_and_return_is_annotated(name):
    missing = _unannotated(PUBLIC[name])
    assert not missing, f"{name}: no annotation on {', '.join(missing)}"


def test_the_check_names_what_is_missing():
    def untyped(a, b: int, *args, c=1, **kw) -> None:
        pass

    def no_return(a: int):
        pass

    assert _unannotated(untyped) == ["a", "args", "c", "kw"]
    assert _unannotated(no_return) == ["return"]
