"""lowbit: low-bit matmul kernels for LLM inference in pure Python (PyTorch + Triton)."""
from . import ops
from .api import Int4WeightOnlyConfig, IntxWeightOnlyConfig, config_from_dict, quantize_
from .errors import FormatError, InputError, LowbitError, UnsupportedError
from .formats import IntxFormat, IntxWeight, get_format
from .nn import QuantLinear
from .warmup import warmup
from . import convert
from .api import (  # noqa: E402  8-bit activation configs
    Float8DynamicActivationFloat8WeightConfig, Int4WeightFloat8ActivationConfig, Int8DynamicActivationInt8WeightConfig,
    quantize_smooth_,
)
from .nn_a8 import Float8Linear, Int8Linear, W4A8Linear
from .checkpoint import CheckpointError, load_quantized, save_quantized
from .formats.intx_experts import IntxExpertWeights
from .nn_moe import QuantMoE, QuantMoEExperts

__version__ = "0.1.0"

__all__ = [
    "ops", "quantize_", "warmup", "Int4WeightOnlyConfig", "IntxWeightOnlyConfig", "config_from_dict", "QuantLinear",
    "IntxFormat", "IntxWeight", "get_format",
    "FormatError", "InputError", "LowbitError", "UnsupportedError", "__version__",
    "convert", "save_quantized", "load_quantized", "CheckpointError",
    "IntxExpertWeights", "QuantMoE", "QuantMoEExperts",
    "Float8DynamicActivationFloat8WeightConfig", "Int4WeightFloat8ActivationConfig",
    "Int8DynamicActivationInt8WeightConfig", "quantize_smooth_", "Float8Linear", "Int8Linear", "W4A8Linear",
]
