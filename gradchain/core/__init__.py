"""The spine of gradchain: the transformation protocol, states, numerics and tree utilities.

Every other layer imports from here; nothing here imports from another layer.
"""

from gradchain.core.base import (
    ChainState,
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    chain,
    identity,
    init_empty_state,
    named_chain,
    named_optimizer,
    state_class,
    stateless,
    stateless_with_tree_map,
    to_optax,
    tree_get,
    tree_get_all_with_path,
    tree_set,
    with_extra_args_support,
    with_live_hyperparams,
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
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "Updates",
    "apply_updates",
    "bias_correction",
    "chain",
    "identity",
    "init_empty_state",
    "named_chain",
    "named_optimizer",
    "path_labels",
    "path_mask",
    "safe_increment",
    "state_class",
    "stateless",
    "stateless_with_tree_map",
    "to_optax",
    "tree_get",
    "tree_get_all_with_path",
    "tree_paths",
    "tree_set",
    "with_extra_args_support",
    "with_live_hyperparams",
]
