"""Writes the API pages: one page per public name, grouped by subpackage.

Each page holds the name's docstring (its update rule as math, arguments and defaults, reference,
and where optax, PyTorch and the paper differ). A transformation's page also holds what its state
keeps, measured from shapes alone with ``jax.eval_shape(tx.init, params)``, what a NaN gradient
does to it, and for a named optimizer its update rule composed by ``gradchain.describe``: for its
defaults (a learning rate of 1e-3 where one is required), or for its configuration in
``tests/registry.py`` (the list the test suite runs every transformation from) where it needs
more arguments. The pages are written into ``docs/api/`` when the build starts; that folder is
generated (git ignores it).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pathlib
import pkgutil
import shutil
import sys
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from sphinx.ext.napoleon.docstring import GoogleDocstring

import gradchain
from gradchain.core.base import ChainState

ROOT = pathlib.Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api"

# The parameters every state is measured on: a matrix and a bias (a matrix alone where the
# transformation takes matrices only), float32.
MATRIX = (1024, 512)
BIAS = (512,)


def subpackages() -> list:
    """gradchain's subpackages with an ``__all__``, in the order of the import layers."""
    order = ["core", "transforms", "optimizers", "schedules", "scale_out", "contrib", "checkpoint"]
    found = [m.name for m in pkgutil.iter_modules(gradchain.__path__) if m.ispkg]
    names = [n for n in order if n in found] + sorted(n for n in found if n not in order)
    modules = [importlib.import_module(f"gradchain.{n}") for n in names]
    return [m for m in modules if getattr(m, "__all__", None)]


def documented_names() -> dict[str, list[str]]:
    """``{subpackage module name: [documented name, ...]}``, every public name once.

    A name of ``gradchain.__all__`` is documented as ``gradchain.NAME`` on the page of the first
    subpackage that exports it, or of the root where no subpackage does; a subpackage name the
    root does not export keeps its full path.
    """
    seen, pages = set(), {}
    for module in subpackages():
        names = []
        for name in module.__all__:
            full = f"gradchain.{name}" if name in gradchain.__all__ else f"{module.__name__}.{name}"
            if full not in seen:
                seen.add(full)
                names.append(full)
        pages[module.__name__] = names
    rest = [f"gradchain.{n}" for n in gradchain.__all__ if f"gradchain.{n}" not in seen]
    if rest:  # names of the root's own modules (gradchain.describe)
        pages["gradchain"] = rest
    return pages


def _resolve(full: str):
    module, _, attr = full.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _registry():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import registry

    return registry


# ---------------------------------------------------------------------------------------------
# State tables


def _is_state(x) -> bool:
    return isinstance(x, ChainState) or getattr(type(x), "_gradchain_state", False)


def _holds_state(x) -> bool:
    if _is_state(x):
        return True
    if isinstance(x, Mapping):
        return any(_holds_state(v) for v in x.values())
    if isinstance(x, (tuple, list)) and not hasattr(x, "_fields"):
        return any(_holds_state(v) for v in x)
    return False


def _fields(x, path: str) -> Iterator[tuple[str, str, object]]:
    """``(path, kind, value)`` of every field below ``x``; kind is "hyperparams" or "data"."""
    if isinstance(x, ChainState):
        counts = {n: x.names.count(n) for n in x.names}
        for i, (n, s) in enumerate(zip(x.names, x.states)):
            yield from _fields(s, f"{path}.{n}" if counts[n] == 1 else f"{path}[{i}]")
    elif getattr(type(x), "_gradchain_state", False) or hasattr(x, "_fields"):
        names = (
            [f.name for f in dataclasses.fields(x)]
            if dataclasses.is_dataclass(x)
            else list(x._fields)
        )
        for name in names:
            value = getattr(x, name)
            if name == "hyperparams" and isinstance(value, Mapping):
                yield f"{path}.{name}", "hyperparams", value
            elif _holds_state(value):
                yield from _fields(value, f"{path}.{name}")
            else:
                yield f"{path}.{name}", "data", value
    elif isinstance(x, Mapping):
        for k, v in x.items():
            yield from _fields(v, f"{path}[{k!r}]")
    elif isinstance(x, (tuple, list)):
        for i, v in enumerate(x):
            yield from _fields(v, f"{path}[{i}]")


def _shape_dtype(x) -> tuple[tuple, np.dtype]:
    """Shape and dtype of a state leaf (an abstract array, or a Python number kept as is)."""
    if hasattr(x, "dtype"):
        return tuple(x.shape), jnp.dtype(x.dtype)
    return (), np.asarray(x).dtype


def _nbytes(tree) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        shape, dtype = _shape_dtype(x)
        total += int(np.prod(shape)) * dtype.itemsize
    return total


def _fmt(x: float) -> str:
    return f"{x:.2f}" if x == 0 or x >= 0.01 else f"{x:.2g}"


def _default_build(obj):
    """The transformation with its defaults, or None where it needs more than a learning rate."""
    required = [
        p.name
        for p in inspect.signature(obj).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if required == []:
        return obj()
    if required == ["learning_rate"]:
        return obj(1e-3)
    return None


def state_section(tx, entry) -> list[str]:
    params = {"w": jax.ShapeDtypeStruct(MATRIX, jnp.float32)}
    if not entry.matrices:
        params["b"] = jax.ShapeDtypeStruct(BIAS, jnp.float32)
    n = sum(int(np.prod(p.shape)) for p in params.values())
    state = jax.eval_shape(lambda p: tx.init(entry.params_arg(p)), params)
    shapes = ", ".join(f'"{k}": {v.shape}' for k, v in params.items())
    lines = [
        "State",
        "-----",
        "",
        "Measured with ``jax.eval_shape(tx.init, params)`` on float32 parameters",
        f"``{{{shapes}}}`` ({n:,} numbers), for",
        "",
        ".. code-block:: text",
        "",
        *(f"   {line}" for line in repr(tx).splitlines()),
        "",
        "Moments of bfloat16 and float16 parameters keep their dtype by default, as in optax",
        "(half these bytes); with gc.with_float32_state(tx) they are float32, as here.",
        "",
    ]
    rows, hyper, scalars = [], [], 0
    for path, kind, value in _fields(state, "state"):
        leaves = jax.tree.leaves(value)
        if kind == "hyperparams":
            if value:
                hyper.append(f"``{path}``: {', '.join(sorted(value))}")
            scalars += _nbytes(value)
        elif all(_shape_dtype(x)[0] == () for x in leaves):
            scalars += _nbytes(value)
        else:
            dtypes = ", ".join(sorted({_shape_dtype(x)[1].name for x in leaves}))
            rows.append((path, dtypes, _fmt(_nbytes(value) / n)))
    if rows:
        lines += [
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - field",
            "     - dtype",
            "     - bytes per parameter",
        ]
        for row in rows:
            lines.append(f"   * - ``{row[0]}``")
            lines += [f"     - {cell}" for cell in row[1:]]
        lines.append("")
    else:
        lines += ["The state keeps nothing per parameter.", ""]
    lines += [
        f"Total: **{_fmt((_nbytes(state) - scalars) / n)}** bytes per parameter, plus "
        f"{scalars} bytes of counters and hyperparameters.",
        "",
    ]
    if hyper:
        lines += [
            "Live hyperparameters (the values the latest update used; "
            "``gradchain.tree_set`` changes them between jitted steps):",
            "",
        ]
        lines += [f"- {h}" for h in hyper] + [""]
    return lines


def rule_section(tx, entry) -> list[str]:
    """The update rule of a named optimizer as ``gradchain.describe`` composes it."""
    if not entry.optimizer:
        return []
    lines = ["Update rule, composed", "---------------------", ""]
    lines += ["``gradchain.describe(tx)`` for the configuration above:", ""]
    lines += [".. math::", "   :nowrap:", "", "   \\["]
    lines += [f"   {line}" for line in gradchain.describe(tx).latex.splitlines()]
    return [*lines, "   \\]", ""]


def nonfinite_section(entries, registry) -> list[str]:
    lines = ["Non-finite gradients", "--------------------", ""]
    lines.append(
        "A NaN in one coordinate of one gradient leaf (``tests/test_nonfinite.py``; "
        ":doc:`/guarantees` has the table of every transformation):"
    )
    lines.append("")
    for e in entries:
        label = f"``{e.id}``: " if len(entries) > 1 else ""
        stays = "stays in the state" if e.keeps_nan else "does not stay in the state"
        lines.append(
            f"- {label}shows in **{e.nonfinite}** ({registry.NONFINITE[e.nonfinite]}); {stays}."
        )
    return [*lines, ""]


# ---------------------------------------------------------------------------------------------
# Pages


def _title(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _default_text(value) -> str:
    if inspect.isclass(value):
        module = value.__module__.replace("jax.numpy", "jnp")
        return f"{module}.{value.__qualname__}"
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__ if value.__name__ != "<lambda>" else "..."
    return repr(value)


def _signature(cls) -> str:
    params = []
    for p in inspect.signature(cls).parameters.values():
        text = p.replace(annotation=p.empty, default=p.empty).__str__()
        if p.default is not p.empty:
            text += f"={_default_text(p.default)}"
        params.append((p.kind, text))
    parts, star = [], False
    for kind, text in params:
        if kind is inspect.Parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append(text)
    return ", ".join(parts)


def _renamed_class(full: str, obj, app) -> list[str]:
    """A class exported under another name (``scale_by_adam`` is ``ScaleByAdam``).

    autodoc documents such a class as an alias without its docstring, so its directive is
    written here, the docstring converted by napoleon as autodoc would.
    """
    module, _, short = full.rpartition(".")
    doc = GoogleDocstring(inspect.cleandoc(obj.__doc__ or ""), app.config, app, "class", full, obj)
    lines = [f".. py:class:: {short}({_signature(obj)})", f"   :module: {module}", ""]
    return lines + [f"   {line}" if line else "" for line in doc.lines()] + [""]


def name_page(full: str, module_name: str, registry, app) -> str:
    obj = _resolve(full)
    short = full.rpartition(".")[2]
    lines = _title(short, "=")
    if inspect.isclass(obj) and obj.__name__ != short:
        lines += _renamed_class(full, obj, app)
    else:
        if inspect.isclass(obj):
            kind = "autoclass"
        else:
            kind = "autofunction" if callable(obj) else "autodata"
        lines += [f".. {kind}:: {full}", ""]
    home = getattr(obj, "__module__", None)
    paths = [f"``{module_name}.{short}``"]
    if home and home != module_name:
        paths.append(f"defined in ``{home}``")
    if module_name != "gradchain" and full.count(".") == 1:
        lines += [f"Also importable as {', '.join(paths)}.", ""]
    entries = [e for e in registry.TRANSFORMS if e.name == short]
    if entries:
        tx = _default_build(obj) or entries[0].build()
        lines += state_section(tx, entries[0])
        lines += rule_section(tx, entries[0])
        lines += nonfinite_section(entries, registry)
    return "\n".join(lines)


def package_page(module_name: str, names: list[str]) -> str:
    lines = _title(f"``{module_name}``", "=")
    lines += [f".. automodule:: {module_name}", "   :no-members:", ""]
    lines += [".. currentmodule:: gradchain", "", ".. autosummary::", ""]
    lines += [f"   {full.removeprefix('gradchain.')}" for full in names]
    lines += ["", ".. toctree::", "   :hidden:", ""]
    short = module_name.rpartition(".")[2]
    lines += [f"   {short}/{full.rpartition('.')[2]}" for full in names]
    return "\n".join(lines) + "\n"


def write_pages(app) -> None:
    registry = _registry()
    pages = documented_names()
    if API.exists():
        shutil.rmtree(API)
    API.mkdir(parents=True)
    index = _title("API reference", "=")
    index += [
        "Every public name, by the subpackage that holds it. Each is importable from the root",
        "(``import gradchain as gc; gc.adamw``) and from its subpackage. A transformation's page",
        "has its update rule, defaults, state fields with their bytes per parameter, and what a",
        "NaN gradient does to it.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    for module_name, names in pages.items():
        short = module_name.rpartition(".")[2]
        index.append(f"   {short}")
        (API / f"{short}.rst").write_text(package_page(module_name, names))
        folder = API / short
        folder.mkdir()
        for full in names:
            (folder / f"{full.rpartition('.')[2]}.rst").write_text(
                name_page(full, module_name, registry, app) + "\n"
            )
    (API / "index.rst").write_text("\n".join(index) + "\n")


def setup(app):
    app.connect("builder-inited", write_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
