"""The spine of gradchain: the transformation protocol, states, numerics and tree utilities.

Every other layer imports from here; nothing here imports from another layer.
"""

from gradchain.core.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    apply_updates,
    chain,
    identity,
    named_chain,
    named_optimizer,
    state_class,
    to_optax,
    tree_get,
    tree_get_all_with_path,
    tree_set,
)
from gradchain.core.masks import (
    path_labels,
    path_mask,
    tree_paths,
)
from gradchain.core.numerics import (
    bias_correction,
    safe_increment,
)

__all__ = [
    "ChainState",
    "EmptyState",
    "GradientTransformation",
    "apply_updates",
    "bias_correction",
    "chain",
    "identity",
    "named_chain",
    "named_optimizer",
    "path_labels",
    "path_mask",
    "safe_increment",
    "state_class",
    "to_optax",
    "tree_get",
    "tree_get_all_with_path",
    "tree_paths",
    "tree_set",
]
