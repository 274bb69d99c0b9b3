"""Run a test file shipped in the optax wheel against gradchain's namespaces.

``load(relative_path, name=value, ...)`` executes a fresh copy of the optax test module (the
installed one stays untouched) and rebinds the module-level names its tests call through, e.g.
``otu`` to :mod:`gradchain.tree_utils`. ``optax_testcases(module)`` gives its ``TestCase``
classes, which ``bind_optax_testcases`` binds to a test file's module-level names so pytest
collects them.
"""

import importlib.util
import pathlib
import unittest

import optax
import pytest

OPTAX_ROOT = pathlib.Path(optax.__file__).parent


def load(relative_path: str, **rebind):
    path = OPTAX_ROOT / relative_path
    name = "gradchain_rebound_" + relative_path.removesuffix(".py").replace("/", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr, value in rebind.items():
        if not hasattr(module, attr):
            raise AttributeError(f"{relative_path} has no module-level name {attr!r} to rebind")
        setattr(module, attr, value)
    return module


def optax_testcases(module) -> dict[str, type]:
    return {
        name: cls
        for name, cls in vars(module).items()
        if isinstance(cls, type)
        and issubclass(cls, unittest.TestCase)
        and cls.__module__ == module.__name__
    }


def bind_optax_testcases(namespace: dict, modules: dict) -> None:
    """Binds the ``TestCase`` classes of each loaded module (``{relative_path: module}``) into a
    test file's ``namespace`` as ``TestOptax_<file>_<class>``, so pytest collects them, each
    marked to run under :func:`optax_settings`."""
    for path, module in modules.items():
        stem = path.split("/")[-1].removesuffix("_test.py")
        for name, cls in optax_testcases(module).items():
            namespace[f"TestOptax_{stem}_{name}"] = pytest.mark.usefixtures("optax_settings")(cls)


@pytest.fixture
def optax_settings():
    """optax's tests are written for JAX's default rank promotion, not the suite's strict one;
    the classes of a rerouted optax test file are marked to use it."""
    import jax

    with jax.numpy_rank_promotion("allow"):
        yield
