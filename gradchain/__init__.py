"""gradchain: composable gradient transformations for JAX.

Every piece is a ``GradientTransformation`` with ``init(params) -> state`` and
``update(updates, state, params=None, **extra_args) -> (updates, state)``; named optimizers are
thin chains of them. Names, arguments and defaults follow optax where optax has the same concept,
so ``import gradchain as optax`` works for the optimizers gradchain implements.

Public names are re-exported here from the module of their concept; ``__all__`` is the union of
those modules' ``__all__``.
"""

from gradchain import (
    adam_variants,
    adaptive,
    averaging,
    base,
    checkpoint,
    clipping,
    combinators,
    decay,
    factored,
    learning_rate_free,
    masks,
    momentum,
    numerics,
    optimizers,
    quantization,
    scaling,
    schedules,
    sharding,
    trust_ratio,
)
# These modules share their name with their optimizer, and the optimizer wins the package
# attribute (``gradchain.muon`` is the function, as ``optax.contrib.muon`` is), so the modules
# are bound under private names.
from gradchain import adagrad as _adagrad_module
from gradchain import galore as _galore_module
from gradchain import lion as _lion_module
from gradchain import muon as _muon_module
from gradchain import schedule_free as _schedule_free_module
from gradchain import sophia as _sophia_module
from gradchain.adagrad import adagrad, scale_by_rss
from gradchain.adam_variants import (
    adamax,
    adamaxw,
    amsgrad,
    nadam,
    nadamw,
    radam,
    scale_by_adamax,
    scale_by_amsgrad,
    scale_by_nadam,
    scale_by_radam,
)
from gradchain.adaptive import scale_by_adam, scale_by_rms, scale_by_stddev
from gradchain.averaging import LookaheadParams, lookahead, params_ema
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
from gradchain.checkpoint import restore_state, save_state
from gradchain.clipping import clip, clip_by_block_rms, clip_by_global_norm, global_norm
from gradchain.combinators import (
    MaskedNode,
    MultiSteps,
    apply_if_finite,
    freeze,
    masked,
    multi_transform,
    partition,
    selective_transform,
    set_to_zero,
    skip_large_updates,
    skip_not_finite,
    zero_nans,
)
from gradchain.decay import add_decayed_weights, add_decoupled_weight_decay, add_l2_penalty
from gradchain.factored import (
    adafactor_decay_rate,
    factored_axes,
    factored_second_moment,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradchain.galore import GaLoreDimensionNumbers, galore, scale_by_galore
from gradchain.learning_rate_free import (
    dadapt_adamw,
    prodigy,
    scale_by_dadapt_adamw,
    scale_by_prodigy,
)
from gradchain.lion import lion, scale_by_lion
from gradchain.masks import path_labels, path_mask, tree_paths
from gradchain.momentum import ema, trace
from gradchain.muon import (
    MuonDimensionNumbers,
    muon,
    muon_labels,
    orthogonalize_via_newton_schulz,
    scale_by_muon,
    scale_by_shape,
)
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
from gradchain.schedule_free import (
    schedule_free,
    schedule_free_adamw,
    schedule_free_eval_params,
    schedule_free_sgd,
)
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
from gradchain.sophia import (
    gauss_newton_bartlett_estimator_diag_hessian,
    hutchinson_estimator_diag_hessian,
    scale_by_sophia,
    sophia,
)
from gradchain.trust_ratio import lamb, lars, scale_by_trust_ratio

__version__ = "0.1.0"

_MODULES = (
    _adagrad_module,
    adam_variants,
    adaptive,
    averaging,
    base,
    checkpoint,
    clipping,
    combinators,
    decay,
    factored,
    _galore_module,
    learning_rate_free,
    _lion_module,
    masks,
    momentum,
    _muon_module,
    numerics,
    optimizers,
    quantization,
    scaling,
    _schedule_free_module,
    schedules,
    sharding,
    _sophia_module,
    trust_ratio,
)
__all__ = sorted({name for module in _MODULES for name in module.__all__})
