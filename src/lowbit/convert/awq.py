"""AWQ checkpoints (AutoAWQ ``version: gemm``, AutoRound "auto_awq") -> intx.

Tensors of one linear layer (K = in_features, N = out_features, G = K / group_size)::

    qweight  int32 (K, N*bits/32)   codes packed along N, in AWQ's interleaved order
    qzeros   int32 (G, N*bits/32)   zero points, packed the same way (no off-by-one)
    scales   fp16  (G, N)

    w[n, k] = (q[k, n] - z[k // group_size, n]) * scales[k // group_size, n]

Packing along N: every block of 8 output channels is stored permuted, storage slot i of block b
holding channel ``8b + AWQ_ORDER[i]`` with ``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``; the slots of a
row then form a little-endian bit stream (bits 4: one block per word, slot i at bits 4i..4i+3).
AutoAWQ writes bits 4 only; AutoRound writes 5/6/7 bits with the same interleave over the generic
bit stream. Other AWQ kernels' layouts (GEMV, GEMV-fast, Marlin, ExLlama) differ and are refused.

Sources: AutoAWQ ``awq/modules/linear/gemm.py`` (``WQLinear_GEMM.from_linear``) and
``awq/utils/packing_utils.py`` (``unpack_awq``, ``reverse_awq_order``, ``dequantize_gemm``); AutoRound
``auto_round/export/export_to_awq/utils.py`` and ``auto_round/utils/bit_packing.py``
(``pack_awq_bitstream``); vLLM ``vllm/model_executor/layers/quantization/awq.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import FormatError
from ..formats.intx import IntxWeight
from ._common import (
    as_int32, check_scales, check_shape, intx_from_codes, normalize_group_size, num_groups, unpack_bitstream,
)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
AWQ_BITS = (4, 5, 6, 7)


def awq_deinterleave(values: torch.Tensor) -> torch.Tensor:
    """Storage order (..., N) -> channel order: channel 8b + AWQ_ORDER[i] is storage slot 8b + i."""
    n = values.shape[-1]
    if n % 8:
        raise FormatError(f"AWQ packs output channels in blocks of 8; N={n} is not a multiple of 8")
    inverse = torch.argsort(torch.tensor(AWQ_ORDER)).to(values.device)
    blocks = values.reshape(*values.shape[:-1], n // 8, 8)
    return blocks.index_select(-1, inverse).reshape(values.shape)


def awq_to_intx(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    *,
    bits: int = 4,
    group_size: Optional[int],
    version: str = "gemm",
) -> IntxWeight:
    """Repack one AWQ GEMM layer into intx (codes, scales and zero points unchanged).

    ``group_size`` -1/None = per-channel. ``version`` is AutoAWQ's ``quant_config["version"]``.
    """
    if str(version).lower() != "gemm":
        raise FormatError(f"only AWQ version 'gemm' is supported (its layout is documented here), got {version!r}")
    if bits not in AWQ_BITS:
        raise FormatError(f"AWQ bits must be one of {AWQ_BITS} (AutoAWQ: 4; AutoRound: 5-7), got {bits!r}")
    gs = normalize_group_size(group_size)
    as_int32(qweight, "qweight")
    as_int32(qzeros, "qzeros")
    check_scales(scales)
    if scales.dim() != 2:
        raise FormatError(f"scales must be 2-D (G, N), got shape {tuple(scales.shape)}")
    k, n = qweight.shape[0], scales.shape[1]
    g = num_groups(k, gs)
    words = -(-n * bits // 32)
    check_shape(scales, (g, n), "scales")
    check_shape(qweight, (k, words), "qweight")
    check_shape(qzeros, (g, words), "qzeros")
    codes = awq_deinterleave(unpack_bitstream(qweight, bits, n)).t()  # (N, K)
    zeros = awq_deinterleave(unpack_bitstream(qzeros, bits, n))  # (G, N)
    return intx_from_codes(codes, scales, zeros, bits, gs)
