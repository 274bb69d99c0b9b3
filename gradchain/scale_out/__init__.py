"""Running optimizers at scale: sharded states, flat multi-tensor buffers and low-bit states."""

from gradchain.scale_out.flat import (
    FlatLayout,
    FlatState,
    flat_layout,
    flatten,
    register_flat_safe,
)
from gradchain.scale_out.quantization import (
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
from gradchain.scale_out.sharding import (
    abstract_state,
    init_sharded,
    per_device_bytes,
    per_process_bytes,
    state_shardings,
    zero1,
)

__all__ = [
    "FlatLayout",
    "FlatState",
    "QuantizedArray",
    "abstract_state",
    "adam_8bit",
    "adamw_8bit",
    "block_axis_sharding",
    "dequantize_blockwise",
    "dynamic_map",
    "flat_layout",
    "flatten",
    "init_sharded",
    "lion_8bit",
    "per_device_bytes",
    "per_process_bytes",
    "quantize_blockwise",
    "quantize_moments",
    "register_flat_safe",
    "sgd_8bit",
    "state_shardings",
    "zero1",
]
