"""Every public name of optax is in gradchain (or listed as still to do), with optax's signature.

Signatures match when optax's positional parameters are gradchain's, in order, with the same
names, kinds and defaults, and optax's keyword-only parameters are keyword-only in gradchain
with the same defaults; gradchain may add keyword-only parameters. Defaults that are functions or
transformations match when both are (gradchain's are its own objects).
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect

import pytest

from optax_suite.todo_names import TODO

# optax's namespaces and gradchain's of the same role.
NAMESPACES = {
    "optax": "gradchain",
    "optax.contrib": "gradchain.contrib",
    "optax.tree_utils": "gradchain.tree_utils",
}
# Families another issue covers: optax's top level re-exports them, they are not counted here.
ASIDE = ("losses", "projections", "perturbations", "assignment", "second_order")

# Signatures that differ on purpose, with the reason (also in docs/DIVERGENCES.md).
SIGNATURE_DIVERGENCES = {
    "optax.scale_by_learning_rate": (
        "learning_rate is required: optax's default None silently returns identity(), "
        "which gradchain spells identity()"
    ),
}


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _aside() -> set[str]:
    names = set()
    for family in ASIDE:
        module = importlib.import_module(f"optax.{family}")
        names |= {n for n in dir(module) if not n.startswith("_")}
    return names


def _public(namespace: str) -> list[str]:
    module = importlib.import_module(namespace)
    aside = _aside() if namespace == "optax" else set()
    return sorted(
        n
        for n in dir(module)
        if not n.startswith("_") and not inspect.ismodule(getattr(module, n)) and n not in aside
    )


def _shared() -> list[tuple[str, object, object]]:
    out = []
    for o_name, g_name in NAMESPACES.items():
        o_ns, g_ns = importlib.import_module(o_name), _import(g_name)
        for n in _public(o_name):
            if g_ns is not None and hasattr(g_ns, n):
                out.append((f"{o_name}.{n}", getattr(o_ns, n), getattr(g_ns, n)))
    return out


@pytest.mark.parametrize("namespace", list(NAMESPACES))
def test_every_optax_name_is_in_gradchain_or_listed(namespace):
    g_ns = _import(NAMESPACES[namespace])
    todo = set(TODO.get(namespace, ()))
    missing = [n for n in _public(namespace) if (g_ns is None or not hasattr(g_ns, n))]
    assert not [n for n in missing if n not in todo], "neither in gradchain nor in todo_names"
    done = sorted(todo - set(missing))
    assert not done, f"gradchain has these now; remove them from todo_names.TODO: {done}"


def _same_default(a, b) -> bool:
    if a is b:
        return True
    if callable(a) and callable(b):
        return True
    if all(hasattr(x, "init") and hasattr(x, "update") for x in (a, b)):
        return True
    # An enum member matches optax's of the same class and member name (microbatch's default
    # accumulator is gradchain's AccumulationType.SUM, which accepts optax's members).
    if isinstance(a, enum.Enum) and isinstance(b, enum.Enum):
        return (type(a).__name__, a.name) == (type(b).__name__, b.name)
    try:
        return bool(a == b)
    except Exception:
        return False


def signature_mismatch(optax_obj, gradchain_obj) -> str | None:
    """Why ``gradchain_obj``'s signature does not extend ``optax_obj``'s, or None.

    A state class matches when its fields, less gradchain's extras (kept only on request, see
    ``gradchain.with_live_hyperparams``), are optax's, in optax's order.
    """
    if isinstance(optax_obj, type) and hasattr(optax_obj, "_fields"):
        if dataclasses.is_dataclass(gradchain_obj):
            extras = getattr(gradchain_obj, "_gradchain_extras", ())
            fields = [f.name for f in dataclasses.fields(gradchain_obj) if f.name not in extras]
        else:
            fields = list(getattr(gradchain_obj, "_fields", ()))
        if fields != list(optax_obj._fields):
            return f"state fields {fields} (less extras), optax's {list(optax_obj._fields)}"
        return None
    try:
        o_sig, g_sig = inspect.signature(optax_obj), inspect.signature(gradchain_obj)
    except (TypeError, ValueError):
        return None
    keyword = inspect.Parameter.KEYWORD_ONLY
    o_pos = [p for p in o_sig.parameters.values() if p.kind is not keyword]
    g_pos = [p for p in g_sig.parameters.values() if p.kind is not keyword]
    o_kw = {p.name: p for p in o_sig.parameters.values() if p.kind is keyword}
    g_kw = {p.name: p for p in g_sig.parameters.values() if p.kind is keyword}
    if len(g_pos) != len(o_pos):
        return f"positional parameters {[p.name for p in g_pos]}, optax {[p.name for p in o_pos]}"
    for o, g in zip(o_pos, g_pos):
        if (o.name, o.kind) != (g.name, g.kind) or not _same_default(o.default, g.default):
            return f"parameter {g} where optax has {o}"
    for name, o in o_kw.items():
        g = g_kw.get(name)
        if g is None or not _same_default(o.default, g.default):
            return f"keyword-only {name}: gradchain {g}, optax {o}"
    return None


_SHARED = _shared()


@pytest.mark.parametrize(
    "qualified, optax_obj, gradchain_obj", _SHARED, ids=[q for q, _, _ in _SHARED]
)
def test_signature_matches_optax(qualified, optax_obj, gradchain_obj):
    reason = signature_mismatch(optax_obj, gradchain_obj)
    if qualified in SIGNATURE_DIVERGENCES:
        assert reason is not None, f"{qualified} matches optax now; drop it from the list"
        return
    assert reason is None, f"{qualified}: {reason}"
