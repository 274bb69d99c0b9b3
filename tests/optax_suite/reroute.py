"""Reroutes every public optax name that gradchain also has to gradchain's object.

optax's own tests import modules (``from optax._src import alias``) and read names from them at
run time (``alias.adam``, ``getattr(alias, opt_name)``), and optax's code calls its own pieces the
same way (``transform.scale_by_adam`` inside ``alias.adamw``). Rerouting therefore replaces the
object in every loaded optax module that holds it, before the test modules are imported: the
tests, and the optax code they call, then meet gradchain's object wherever optax's public object
of that name was. An optax object is matched to gradchain by its public name in its namespace
(``optax.contrib.muon`` to ``gradchain.contrib.muon``, ``optax.tree_utils.tree_get`` to
``gradchain.tree_utils.tree_get``); ``optax.transforms`` and ``optax.schedules`` names that optax
also exports at top level fall back to gradchain's top level, where gradchain keeps them.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from types import ModuleType

# optax's public namespaces and gradchain's module of the same role.
NAMESPACES = {
    "optax": "gradchain",
    "optax.contrib": "gradchain.contrib",
    "optax.tree_utils": "gradchain.tree_utils",
    "optax.tree": "gradchain.tree",
    "optax.transforms": "gradchain.transforms",
    "optax.schedules": "gradchain.schedules",
    "optax.losses": "gradchain.losses",
    "optax.projections": "gradchain.projections",
    "optax.microbatching": "gradchain.microbatching",
}


# Classes optax keeps private but returns from public functions, and gradchain's class of the
# same role: optax's tests check ``isinstance(optax.multi_normal(...), MultiNormalDiagFromLogScale)``.
PRIVATE = {"optax._src.utils.MultiNormalDiagFromLogScale": "gradchain.MultiNormalDiagFromLogScale"}


def _import_optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def import_optax_modules() -> list[ModuleType]:
    """Every importable non-test module of optax (each one may hold a public object)."""
    import optax

    modules = [optax]
    for info in pkgutil.walk_packages(optax.__path__, "optax."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.endswith("_test") or leaf == "test_utils":
            continue
        _import_optional(info.name)
    # optax/_src has no __init__.py, so the walk misses it; importing optax loaded it anyway.
    for name, module in sorted(sys.modules.items()):
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith("optax.") and not (leaf.endswith("_test") or leaf == "test_utils"):
            modules.append(module)
    return modules


def _public(module: ModuleType, name: str) -> bool:
    names = getattr(module, "__all__", None)
    return not name.startswith("_") and (names is None or name in names)


def public_map() -> dict[str, tuple[object, object]]:
    """``{"optax.contrib.muon": (optax_object, gradchain_object), ...}`` for shared names."""
    import optax

    found: dict[str, tuple[object, object]] = {}
    for optax_name, gradchain_name in NAMESPACES.items():
        o_ns = _import_optional(optax_name)
        g_ns = _import_optional(gradchain_name)
        if o_ns is None:
            continue
        for name in dir(o_ns):
            obj = getattr(o_ns, name)
            if name.startswith("_") or inspect.ismodule(obj):
                continue
            target = None
            if g_ns is not None and _public(g_ns, name) and hasattr(g_ns, name):
                target = getattr(g_ns, name)
            elif optax_name in ("optax.transforms", "optax.schedules") and (
                getattr(optax, name, None) is obj
            ):
                import gradchain

                if _public(gradchain, name) and hasattr(gradchain, name):
                    target = getattr(gradchain, name)
            if target is not None and target is not obj:
                found[f"{optax_name}.{name}"] = (obj, target)
    for optax_path, gradchain_path in PRIVATE.items():
        (o_mod, o_name), (g_mod, g_name) = (p.rsplit(".", 1) for p in (optax_path, gradchain_path))
        o_ns, g_ns = _import_optional(o_mod), _import_optional(g_mod)
        if o_ns is not None and g_ns is not None and hasattr(o_ns, o_name):
            found[optax_path] = (getattr(o_ns, o_name), getattr(g_ns, g_name))
    return found


def reroute() -> list[str]:
    """Replaces optax's objects by gradchain's in every loaded optax module; returns what was
    replaced, as ``module.name`` strings."""
    modules = import_optax_modules()
    # Keyed by object and name: optax binds one object to several names (``ClipState`` is
    # ``EmptyState``), and each name goes to gradchain's object of that name.
    by_key: dict[tuple[int, str], object] = {}
    for qualified, (obj, target) in public_map().items():
        # NAMESPACES lists the top level first, which is where optax users reach a name.
        by_key.setdefault((id(obj), qualified.rsplit(".", 1)[-1]), target)
    replaced = []
    for module in modules:
        for attr, value in list(vars(module).items()):
            target = by_key.get((id(value), attr))
            if target is not None:
                setattr(module, attr, target)
                replaced.append(f"{module.__name__}.{attr}")
    return sorted(replaced)


def optax_dir() -> str:
    import optax

    return optax.__path__[0]


def test_key(nodeid: str) -> str:
    """A node id relative to optax's package folder: ``_src/alias_test.py::Test::test_x``."""
    path, sep, rest = nodeid.partition("::")
    marker = "/optax/"
    path = path.replace("\\", "/")
    if marker in path:
        path = path[path.rindex(marker) + len(marker) :]
    return path + sep + rest


__all__ = ["import_optax_modules", "optax_dir", "public_map", "reroute", "test_key"]

if __name__ == "__main__":
    for line in reroute():
        sys.stdout.write(line + "\n")
