"""optax's ``tree`` namespace, the newer name of ``tree_utils``: ``tree.norm`` is
``tree_utils.tree_norm``.
"""

from gradchain.core import tree as _tree

add = _tree.tree_add
add_scale = _tree.tree_add_scale
allclose = _tree.tree_allclose
batch_shape = _tree.tree_batch_shape
bias_correction = _tree.tree_bias_correction
cast = _tree.tree_cast
cast_like = _tree.tree_cast_like
clip = _tree.tree_clip
conj = _tree.tree_conj
div = _tree.tree_div
dtype = _tree.tree_dtype
full_like = _tree.tree_full_like
get = _tree.tree_get
get_all_with_path = _tree.tree_get_all_with_path
map_params = _tree.tree_map_params
max = _tree.tree_max
min = _tree.tree_min
mul = _tree.tree_mul
norm = _tree.tree_norm
ones_like = _tree.tree_ones_like
random_like = _tree.tree_random_like
real = _tree.tree_real
scale = _tree.tree_scale
set = _tree.tree_set
size = _tree.tree_size
split_key_like = _tree.tree_split_key_like
sub = _tree.tree_sub
sum = _tree.tree_sum
unwrap_random_key_data = _tree.tree_unwrap_random_key_data
update_infinity_moment = _tree.tree_update_infinity_moment
update_moment = _tree.tree_update_moment
update_moment_per_elem_norm = _tree.tree_update_moment_per_elem_norm
vdot = _tree.tree_vdot
where = _tree.tree_where
zeros_like = _tree.tree_zeros_like

__all__ = [
    "add",
    "add_scale",
    "allclose",
    "batch_shape",
    "bias_correction",
    "cast",
    "cast_like",
    "clip",
    "conj",
    "div",
    "dtype",
    "full_like",
    "get",
    "get_all_with_path",
    "map_params",
    "max",
    "min",
    "mul",
    "norm",
    "ones_like",
    "random_like",
    "real",
    "scale",
    "set",
    "size",
    "split_key_like",
    "sub",
    "sum",
    "unwrap_random_key_data",
    "update_infinity_moment",
    "update_moment",
    "update_moment_per_elem_norm",
    "vdot",
    "where",
    "zeros_like",
]
