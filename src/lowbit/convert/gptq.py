"""GPTQ checkpoints (AutoGPTQ, GPTQModel, Optimum/transformers, AutoRound "auto_gptq") -> intx.

Tensors of one linear layer (K = in_features, N = out_features, G = ceil(K / group_size))::

    qweight  int32 (K*bits/32, N)   codes packed along K. The words of column n form one
                                     little-endian bit stream, k at stream bits [k*bits, (k+1)*bits):
                                     bits 4 -> 8 consecutive k per word, k = 8r + j at bits 4j..4j+3
                                     (exactly intx's 4-bit layout); bits 3 -> 32 k in 3 words, k = 10
                                     and k = 21 straddle a word boundary; bits 2/8 -> 16/4 k per word
    qzeros   int32 (G, N*bits/32)   zero points, packed along N with the same bit stream per row
    scales   fp16  (G, N)
    g_idx    int32 (K,)              optional: group of input column k (act-order, ``desc_act``)

    w[n, k] = scales[g, n] * (q[k, n] - z[g, n]),   g = g_idx[k]  (default k // group_size)

Zero-point convention (``checkpoint_format`` in quantize_config.json):

* ``"gptq"`` (v1: AutoGPTQ, and every GPTQ checkpoint older than GPTQModel's v2): the field holds
  z - 1 and readers compute z = field + 1 per field (AutoGPTQ's torch forward masks the field, then
  adds 1). A true zero point of 0 was written as -1, so its field reads 2**bits - 1 and z becomes
  2**bits; we reproduce the readers exactly. GPTQModel's v1->v2 conversion instead adds a constant to
  the whole word, which carries into the next field in that one corrupted case; we follow the per-field
  readers (AutoGPTQ, exllama, vLLM).
* ``"gptq_v2"`` (GPTQModel): the field holds z.

Act-order: when g_idx is not ``k // group_size``, K is permuted so that groups become contiguous
(``perm = argsort(g_idx)``, as vLLM's Marlin path sorts g_idx) and ``perm`` is returned: the layer
must compute ``x[..., perm] @ W'^T`` (``lowbit.convert.PermutedQuantLinear`` does).

Sources read for these conventions: AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py``
(``pack`` and the torch ``forward``), GPTQModel ``gptqmodel/utils/model.py``
(``convert_gptq_v1_to_v2_format_module``), AutoRound ``auto_round_extension/torch/qlinear_torch.py``,
``qlinear_torch_zp.py`` and ``auto_round/utils/bit_packing.py`` (the bit stream for 5/6/7 bits),
vLLM ``vllm/model_executor/layers/quantization/utils/marlin_utils.py`` (``marlin_sort_g_idx``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import FormatError
from ..formats.intx import IntxWeight
from ._common import (
    as_int32, check_scales, check_shape, group_permutation, intx_from_codes, normalize_group_size,
    num_groups, unpack_bitstream,
)

GPTQ_BITS = (2, 3, 4, 5, 6, 7, 8)
ZERO_OFFSET = {"gptq": 1, "gptq_v1": 1, "gptq_v2": 0}


def gptq_to_intx(
    qweight: torch.Tensor,
    qzeros: torch.Tensor,
    scales: torch.Tensor,
    g_idx: Optional[torch.Tensor] = None,
    *,
    bits: int,
    group_size: Optional[int],
    sym: Optional[bool] = None,
    desc_act: Optional[bool] = None,
    checkpoint_format: str = "gptq",
    in_features: Optional[int] = None,
) -> Tuple[IntxWeight, Optional[torch.Tensor]]:
    """Repack one GPTQ layer into intx (codes, scales and zero points unchanged).

    ``group_size`` -1/None = per-channel. ``sym=True`` checks that every zero point is 2**(bits-1)
    and stores the weight as symmetric intx (no zeros tensor). ``in_features`` defaults to
    ``len(g_idx)`` or ``qweight.shape[0] * 32 // bits``.

    Returns ``(weight, perm)``; ``perm`` is None unless act-order reorders K, in which case the
    caller must feed ``x[..., perm]`` (see the module docstring).
    """
    if bits not in GPTQ_BITS:
        raise FormatError(f"GPTQ bits must be one of {GPTQ_BITS}, got {bits!r}")
    if checkpoint_format not in ZERO_OFFSET:
        raise FormatError(f"checkpoint_format must be one of {sorted(ZERO_OFFSET)}, got {checkpoint_format!r}")
    gs = normalize_group_size(group_size)
    as_int32(qweight, "qweight")
    as_int32(qzeros, "qzeros")
    check_scales(scales)
    if (qweight.shape[0] * 32) % bits:
        raise FormatError(f"qweight has {qweight.shape[0]} rows; rows * 32 must be a multiple of bits={bits}")
    k_max = qweight.shape[0] * 32 // bits
    k = in_features if in_features is not None else (len(g_idx) if g_idx is not None else k_max)
    if not 0 < k <= k_max:
        raise FormatError(f"in_features={k} does not fit qweight with {qweight.shape[0]} rows ({k_max} codes)")
    n = qweight.shape[1]
    g = num_groups(k, gs)
    check_shape(scales, (g, n), "scales")
    check_shape(qzeros, (g, -(-n * bits // 32)), "qzeros")
    if desc_act and g_idx is None:
        raise FormatError("desc_act=True needs the layer's g_idx")
    perm = group_permutation(g_idx, k, gs)

    codes = unpack_bitstream(qweight.t().contiguous(), bits, k)  # (N, K)
    if perm is not None:
        codes = codes[:, perm]
    zeros = unpack_bitstream(qzeros, bits, n).to(torch.int64) + ZERO_OFFSET[checkpoint_format]
    if sym:
        if not bool((zeros == 2 ** (bits - 1)).all()):
            raise FormatError(
                f"sym=True but the zero points are not all {2 ** (bits - 1)} "
                f"(checkpoint_format={checkpoint_format!r}: is the off-by-one convention right?)"
            )
        zeros = None
    return intx_from_codes(codes, scales, zeros, bits, gs), perm
