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
    factored,
    momentum,
    numerics,
    optimizers,
    quantization,
    scaling,
    sharding,
)
from gradchain.adaptive import scale_by_adam, scale_by_rms, scale_by_stddev
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
from gradchain.clipping import clip, clip_by_block_rms, clip_by_global_norm, global_norm
from gradchain.decay import add_decayed_weights, add_decoupled_weight_decay, add_l2_penalty
from gradchain.factored import (
    adafactor_decay_rate,
    factored_axes,
    factored_second_moment,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradchain.momentum import ema, trace
from gradchain.numerics import bias_correction, safe_increment
from gradchain.optimizers import adafactor, adam, adamw, rmsprop, sgd
from gradchain.quantization import (
    QuantizedArray,
    adam_8bit,
    adamw_8bit,
    block_axis_sharding,
    dequantize_blockwise,
    dynamic_map,
    lion_8bit,
    quantize_blockwise,
    quantize_moments,
    sgd_8bit,
)
from gradchain.scaling import scale, scale_by_learning_rate, scale_by_schedule
from gradchain import schedules
from gradchain.schedules import (
    Schedule,
    constant_schedule,
    cosine_decay_schedule,
    cosine_onecycle_schedule,
    cosine_warm_restarts_schedule,
    exponential_decay,
    join_schedules,
    linear_onecycle_schedule,
    linear_schedule,
    piecewise_constant_schedule,
    piecewise_interpolate_schedule,
    polynomial_schedule,
    reduce_on_plateau,
    sgdr_schedule,
    warmup_constant_schedule,
    warmup_cosine_decay_schedule,
    warmup_exponential_decay_schedule,
    warmup_inverse_sqrt_schedule,
    warmup_linear_decay_schedule,
    warmup_stable_decay_schedule,
)
from gradchain.sharding import abstract_state, per_device_bytes, state_shardings, zero1

__version__ = "0.1.0"

_MODULES = (
    adaptive,
    base,
    clipping,
    decay,
    factored,
    momentum,
    numerics,
    optimizers,
    quantization,
    scaling,
    schedules,
    sharding,
)
__all__ = sorted({name for module in _MODULES for name in module.__all__})
