"""gradchain: composable gradient transformations for JAX.

Every piece is a ``GradientTransformation`` with ``init(params) -> state`` and
``update(updates, state, params=None, **extra_args) -> (updates, state)``; named optimizers are
thin chains of them. Names, arguments and defaults follow optax where optax has the same concept,
so ``import gradchain as optax`` works for the optimizers gradchain implements.

Public names are re-exported here from the module of their concept; ``__all__`` is the union of
those modules' ``__all__``.
"""

import importlib as _importlib
import sys as _sys

from gradchain import (
    checkpoint,
    contrib,
    core,
    losses,
    optimizers,
    scale_out,
    schedules,
    transforms,
)

# Namespaces optax has (``optax.projections``, ``optax.tree``, ``optax.tree_utils``) whose
# names stay out of the root: the root's tree_get and tree_set are gradchain's state readers.
from gradchain import projections as projections
from gradchain import tree as tree
from gradchain import tree_utils as tree_utils
from gradchain.checkpoint import *
from gradchain.contrib import *
from gradchain.core import *

# The function takes the package attribute ``gradchain.describe`` (as the optimizers named like
# their modules do); the module stays importable by its full name.
from gradchain.describe import describe as describe
from gradchain.losses import *
from gradchain.optimizers import *
from gradchain.scale_out import *
from gradchain.schedules import *
from gradchain.transforms import *

# optax's ``microbatching`` namespace (``optax.microbatching.AccumulationType``), importable by
# that name too.
from gradchain.transforms import microbatching as microbatching

# optax has this one tree utility at its root as well.
from gradchain.tree_utils import tree_map_params as tree_map_params

__version__ = "0.1.0"

# The flat module names of gradchain 0.1 keep working: ``gradchain.adaptive``,
# ``from gradchain.base import chain`` and the rest are the modules of the new layout under their
# old names (the same module objects, so private names and monkeypatching behave as before).
_OLD_MODULES = {
    "base": "core.base",
    "numerics": "core.numerics",
    "masks": "core.masks",
    "matrices": "core.matrices",
    "adaptive": "transforms.adaptive",
    "averaging": "transforms.averaging",
    "clipping": "transforms.clipping",
    "combinators": "transforms.combinators",
    "decay": "transforms.decay",
    "factored": "transforms.factored",
    "momentum": "transforms.momentum",
    "scaling": "transforms.scaling",
    "adagrad": "optimizers.adagrad",
    "adam_variants": "optimizers.adam_variants",
    "lion": "optimizers.lion",
    "trust_ratio": "optimizers.trust_ratio",
    "galore": "contrib.galore",
    "learning_rate_free": "contrib.learning_rate_free",
    "muon": "contrib.muon",
    "schedule_free": "contrib.schedule_free",
    "sophia": "contrib.sophia",
    "flat": "scale_out.flat",
    "quantization": "scale_out.quantization",
    "sharding": "scale_out.sharding",
}
_sys.modules["gradchain.microbatching"] = microbatching
for _old, _new in _OLD_MODULES.items():
    _module = _importlib.import_module(f"gradchain.{_new}")
    _sys.modules[f"gradchain.{_old}"] = _module
    # Modules named like their optimizer (``muon``, ``lion``, ...) leave the package attribute to
    # the optimizer, as ``optax.contrib.muon`` is the function.
    if _old not in globals():
        globals()[_old] = _module

__all__ = sorted(
    {
        name
        for package in (
            checkpoint,
            contrib,
            core,
            losses,
            optimizers,
            scale_out,
            schedules,
            transforms,
        )
        for name in package.__all__
    }
    | {"describe", "tree_map_params"}
)
