"""The package layout: one folder per layer, imports pointing one way, old paths still working."""

import ast
import importlib
import pathlib

import pytest

import gradchain

PACKAGE = pathlib.Path(gradchain.__file__).parent

# A module may import from its own layer and the layers below it, never from a layer above.
LAYERS = {
    "core": 0,
    "transforms": 1,
    "schedules": 1,
    "losses": 1,
    "projections": 1,
    "tree_utils": 1,
    "tree": 1,
    "optimizers": 2,
    "scale_out": 3,
    "contrib": 4,
    "checkpoint": 1,
    "describe": 5,
    "demo": 6,
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "gradchain" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS else None


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "gradchain":
                found += [(node.lineno, f"gradchain.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("gradchain")]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) > 1:
            yield path, rel.parts[0].removesuffix(".py")
        elif rel.stem != "__init__":
            yield path, rel.stem


def test_every_module_belongs_to_a_layer():
    unknown = {layer for _, layer in _modules() if layer not in LAYERS}
    assert not unknown, f"modules outside the known layers: {sorted(unknown)}"


def test_imports_point_from_leaves_to_the_spine():
    violations = []
    for path, layer in _modules():
        for line, module in _imports(path):
            target = _layer(module)
            if target is not None and LAYERS[target] > LAYERS[layer]:
                rel = path.relative_to(PACKAGE.parent)
                violations.append(f"{rel}:{line} ({layer}) imports {module} ({target})")
    assert not violations, "imports against the layer order:\n" + "\n".join(violations)


def test_the_spine_imports_no_other_layer():
    for path, layer in _modules():
        if layer == "core":
            for _, module in _imports(path):
                assert _layer(module) in (None, "core"), f"{path} imports {module}"


@pytest.mark.parametrize("old", sorted(gradchain._OLD_MODULES))
def test_old_flat_module_paths_still_import(old):
    module = importlib.import_module(f"gradchain.{old}")
    assert module is importlib.import_module(f"gradchain.{gradchain._OLD_MODULES[old]}")
    for name in getattr(module, "__all__", ()):
        assert getattr(gradchain, name) is getattr(module, name)


def test_every_public_name_is_exported_from_its_package_and_the_root():
    for package in ("core", "transforms", "optimizers", "schedules", "contrib", "scale_out"):
        pkg = importlib.import_module(f"gradchain.{package}")
        for name in pkg.__all__:
            assert getattr(gradchain, name) is getattr(pkg, name), (package, name)
