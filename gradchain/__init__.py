"""gradchain: composable gradient transformations for JAX.

Every piece is a ``GradientTransformation`` with ``init(params) -> state`` and
``update(updates, state, params=None, **extra_args) -> (updates, state)``; named optimizers are
thin chains of them. Names, arguments and defaults follow optax where optax has the same concept,
so ``import gradchain as optax`` works for the optimizers gradchain implements.
"""

from gradchain.adaptive import scale_by_adam
from gradchain.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    named_chain,
    to_optax,
    tree_get,
    tree_get_all_with_path,
    tree_set,
)
from gradchain.clipping import clip_by_global_norm, global_norm
from gradchain.decay import add_decayed_weights, add_decoupled_weight_decay
from gradchain.momentum import trace
from gradchain.numerics import bias_correction, safe_increment
from gradchain.optimizers import adam, adamw, sgd
from gradchain.scaling import scale, scale_by_learning_rate, scale_by_schedule

__version__ = "0.1.0"

__all__ = [
    "ChainState",
    "EmptyState",
    "GradientTransformation",
    "adam",
    "adamw",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "apply_updates",
    "bias_correction",
    "chain",
    "clip_by_global_norm",
    "global_norm",
    "identity",
    "named_chain",
    "safe_increment",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_schedule",
    "sgd",
    "to_optax",
    "trace",
    "tree_get",
    "tree_get_all_with_path",
    "tree_set",
]
