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
    Rank1QuantizedArray,
    adam_8bit,
    adamw_4bit,
    adamw_8bit,
    block_axis_sharding,
    dequantize_blockwise,
    dequantize_rank1,
    dynamic_map,
    lion_8bit,
    quantize_blockwise,
    quantize_moments,
    quantize_rank1,
    sgd_8bit,
)
from gradchain.scale_out.sharding import (
    abstract_state,
    per_device_bytes,
    state_shardings,
    zero1,
)

__all__ = [
    "FlatLayout",
    "FlatState",
    "QuantizedArray",
    "Rank1QuantizedArray",
    "abstract_state",
    "adam_8bit",
    "adamw_4bit",
    "adamw_8bit",
    "block_axis_sharding",
    "dequantize_blockwise",
    "dequantize_rank1",
    "dynamic_map",
    "flat_layout",
    "flatten",
    "lion_8bit",
    "per_device_bytes",
    "quantize_blockwise",
    "quantize_moments",
    "quantize_rank1",
    "register_flat_safe",
    "sgd_8bit",
    "state_shardings",
    "zero1",
]
