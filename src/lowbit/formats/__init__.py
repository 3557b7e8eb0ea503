"""Weight formats: data + pure-torch quantize/pack/unpack/dequantize (the test oracle)."""
from .base import FORMATS, Format, QuantizedWeight, get_format, register_format
from .intx import IntxFormat, IntxWeight, bit_planes, pack, padded_k, symmetric_zero, unpack
from .intx_experts import IntxExpertWeights, quantize_experts
from .fp8 import Fp8Format, Fp8Weight
from .int8 import Int8Format, Int8Weight

__all__ = [
    "FORMATS", "Format", "QuantizedWeight", "get_format", "register_format",
    "IntxFormat", "IntxWeight", "bit_planes", "pack", "unpack", "padded_k", "symmetric_zero",
    "IntxExpertWeights", "quantize_experts",
    "Fp8Format", "Fp8Weight", "Int8Format", "Int8Weight",
]
