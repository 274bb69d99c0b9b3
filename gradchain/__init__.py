"""gradchain: composable gradient transformations for JAX.

Every piece is a ``GradientTransformation`` with ``init(params) -> state`` and
``update(updates, state, params=None, **extra_args) -> (updates, state)``; named optimizers are
thin chains of them. Names, arguments and defaults follow optax where optax has the same concept,
so ``import gradchain as optax`` works for the optimizers gradchain implements.

Public names are re-exported here from the module of their concept; ``__all__`` is the union of
those modules' ``__all__``.
"""

from gradchain import (
    adaptive,
    base,
    clipping,
    decay,
    flat,
    momentum,
    numerics,
    optimizers,
    scaling,
)
from gradchain.adaptive import scale_by_adam
from gradchain.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    named_chain,
    state_class,
    to_optax,
    tree_get,
    tree_get_all_with_path,
    tree_set,
)
from gradchain.clipping import clip_by_global_norm, global_norm
from gradchain.decay import add_decayed_weights, add_decoupled_weight_decay
from gradchain.flat import FlatState, flatten, register_flat_safe, unflatten_state
from gradchain.momentum import trace
from gradchain.numerics import bias_correction, safe_increment
from gradchain.optimizers import adam, adamw, sgd
from gradchain.scaling import scale, scale_by_learning_rate, scale_by_schedule

__version__ = "0.1.0"

_MODULES = (adaptive, base, clipping, decay, flat, momentum, numerics, optimizers, scaling)
__all__ = sorted({name for module in _MODULES for name in module.__all__})
