"""Checkpoint converters: the tensors of one quantized linear layer of another project -> ``IntxWeight``.

Repacking only, never requantizing: codes, scales and zero points keep their values, so the
dequantized weight equals the source format's own dequantization (in fp32) bit for bit.
Conventions per format: the docstrings of ``gptq``, ``awq``, ``hqq``, ``compressed_tensors`` and
docs/checkpoints.md. Act-order layers come back with a permutation ``perm`` of K: build them with
``quant_linear(weight, perm, bias)`` (a ``PermutedQuantLinear`` computing ``x[..., perm] @ W^T``).
"""
from .awq import awq_to_intx
from .compressed_tensors import compressed_tensors_to_intx, packing_for_version
from .gptq import gptq_to_intx
from .hqq import hqq_state_dict_to_intx, hqq_to_intx
from .modules import PermutedQuantLinear, quant_linear

__all__ = [
    "gptq_to_intx", "awq_to_intx", "hqq_to_intx", "hqq_state_dict_to_intx", "compressed_tensors_to_intx",
    "packing_for_version", "PermutedQuantLinear", "quant_linear",
]
