"""Atomic gradient transformations, one module per concept (moments, momentum, scaling,
clipping, decay, factored statistics, combinators, averaging).
"""

from gradchain.transforms.accumulation import (
    apply_every,
)
from gradchain.transforms.adaptive import (
    ScaleByAdamState,
    ScaleByRmsState,
    ScaleByRStdDevState,
    scale_by_adam,
    scale_by_rms,
    scale_by_stddev,
)
from gradchain.transforms.averaging import (
    LookaheadParams,
    LookaheadState,
    lookahead,
    params_ema,
)
from gradchain.transforms.clipping import (
    ClipByGlobalNormState,
    ClipState,
    adaptive_grad_clip,
    clip,
    clip_by_block_rms,
    clip_by_global_norm,
    global_norm,
    per_example_global_norm_clip,
    per_example_layer_norm_clip,
)
from gradchain.transforms.combinators import (
    ApplyIfFiniteState,
    MaskedNode,
    MaskedState,
    MultiSteps,
    MultiStepsState,
    MultiTransformState,
    PartitionState,
    ShouldSkipUpdateFunction,
    ZeroNansState,
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
from gradchain.transforms.conditionality import (
    ConditionallyMaskState,
    ConditionallyTransformState,
    conditionally_mask,
    conditionally_transform,
)
from gradchain.transforms.constraining import (
    keep_params_nonnegative,
)
from gradchain.transforms.decay import (
    AddDecayedWeightsState,
    add_decayed_weights,
    add_decoupled_weight_decay,
    add_l2_penalty,
)
from gradchain.transforms.factored import (
    FactoredState,
    adafactor_decay_rate,
    factored_axes,
    factored_second_moment,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradchain.transforms.microbatching import (
    microbatch,
)
from gradchain.transforms.momentum import (
    EmaState,
    TraceState,
    ema,
    trace,
)
from gradchain.transforms.monitoring import (
    MonitorState,
    SnapshotState,
    measure_with_ema,
    monitor,
    snapshot,
)
from gradchain.transforms.noise import (
    add_noise,
)
from gradchain.transforms.normalization import (
    centralize,
    normalize_by_update_norm,
    scale_by_param_block_norm,
)
from gradchain.transforms.scaling import (
    ScaleState,
    scale,
    scale_by_learning_rate,
    scale_by_schedule,
    scale_gradient,
)
from gradchain.transforms.sign import (
    scale_by_sign,
)

__all__ = [
    "AddDecayedWeightsState",
    "ApplyIfFiniteState",
    "ClipByGlobalNormState",
    "ClipState",
    "ConditionallyMaskState",
    "ConditionallyTransformState",
    "EmaState",
    "FactoredState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MonitorState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "PartitionState",
    "ScaleByAdamState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleState",
    "ShouldSkipUpdateFunction",
    "SnapshotState",
    "TraceState",
    "ZeroNansState",
    "adafactor_decay_rate",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_decoupled_weight_decay",
    "add_l2_penalty",
    "add_noise",
    "apply_every",
    "apply_if_finite",
    "centralize",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "conditionally_mask",
    "conditionally_transform",
    "ema",
    "factored_axes",
    "factored_second_moment",
    "freeze",
    "global_norm",
    "keep_params_nonnegative",
    "lookahead",
    "masked",
    "measure_with_ema",
    "microbatch",
    "monitor",
    "multi_transform",
    "normalize_by_update_norm",
    "params_ema",
    "partition",
    "per_example_global_norm_clip",
    "per_example_layer_norm_clip",
    "scale",
    "scale_by_adam",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_rms",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_stddev",
    "scale_gradient",
    "selective_transform",
    "set_to_zero",
    "skip_large_updates",
    "skip_not_finite",
    "snapshot",
    "trace",
    "zero_nans",
]
