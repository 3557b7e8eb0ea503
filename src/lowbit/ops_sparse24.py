"""``lowbit::linear_sparse24_wxa16``: y = x @ dequant(W)^T + bias for 2:4-sparse int4 weights.

``linear_sparse24_wxa16(x, qweight, meta, scales, zeros, bias, group_size, in_features)`` with the
tensors of ``lowbit.formats.sparse24.Sparse24Weight`` (``group_size`` 0 = per-channel). Backends
(``dispatch.select_sparse24``): the sparse GEMV (small M), dequantize + cuBLAS or dequantize + torch
semi-structured sparse matmul (large M), the fp32 reference; for explicit use (not auto-dispatched until measured
faster), the sparse tensor-core GEMM and the weight expanded to dense int4 words + the dense W4A16 dispatch.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch
from .formats.intx import symmetric_zero
from .formats.sparse24 import BITS, Sparse24Weight, check_sparse24_tensors
from .kernels.sparse24 import (
    dequant_matmul_sparse24, dequant_semi_structured_sparse24, expand_matmul_sparse24, gemm_sparse24, gemv_sparse24,
)
from .ops import PER_CHANNEL_GROUP_LEN, check_bias_devices, check_x, dense_reference, flatten_apply

_LAUNCHERS = {"triton_sparse24_gemv": gemv_sparse24, "triton_sparse24_gemm": gemm_sparse24,
              "triton_sparse24_dequant_mm": dequant_matmul_sparse24, "triton_sparse24_expand_mm": expand_matmul_sparse24,
              "torch_semi_structured": dequant_semi_structured_sparse24}


def _validate(x, qweight, meta, scales, zeros, bias, group_size, in_features) -> None:
    check_sparse24_tensors(qweight, meta, scales, zeros, group_size or None, in_features)
    check_x(x, in_features)
    check_bias_devices(x, qweight.shape[1], bias, qweight=qweight, meta=meta, scales=scales, zeros=zeros)


def reference_sparse24(x2d, qweight, meta, scales, zeros, bias, group_size, in_features) -> torch.Tensor:
    """fp32 dequantize-then-matmul (the oracle, and the CPU backend)."""
    w = Sparse24Weight(qweight, meta, scales, zeros, group_size or None, in_features).dequantize(torch.float32)
    return dense_reference(x2d, w, bias, x2d.dtype)


def linear_sparse24_wxa16_eager(
    x: torch.Tensor, qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
    zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_size: int, in_features: int,
) -> torch.Tensor:
    """The op's implementation without the torch.library dispatch (eager fast path)."""
    _validate(x, qweight, meta, scales, zeros, bias, group_size, in_features)
    n = qweight.shape[1]
    group_len = group_size or PER_CHANNEL_GROUP_LEN

    def run(x2d):
        problem = dispatch.WxA16Problem(x2d.shape[0], n, in_features, BITS, group_len, x2d.dtype, x2d.device.type)
        backend = dispatch.select_sparse24(problem)
        if backend == "reference":
            return reference_sparse24(x2d, qweight, meta, scales, zeros, bias, group_size, in_features)
        return _LAUNCHERS[backend](x2d, qweight, meta, scales, zeros, bias, group_len, symmetric_zero(BITS))

    return flatten_apply(x, in_features, n, run)


@torch.library.custom_op("lowbit::linear_sparse24_wxa16", mutates_args=())
def linear_sparse24_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
    zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_size: int, in_features: int,
) -> torch.Tensor:
    return linear_sparse24_wxa16_eager(x, qweight, meta, scales, zeros, bias, group_size, in_features)


@linear_sparse24_wxa16.register_fake
def _(x, qweight, meta, scales, zeros, bias, group_size, in_features):
    _validate(x, qweight, meta, scales, zeros, bias, group_size, in_features)
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


linear_sparse24_wxa16_auto = dispatch.eager_unless_compiling(linear_sparse24_wxa16, linear_sparse24_wxa16_eager)


def sparse24_linear(x: torch.Tensor, weight: Sparse24Weight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convenience: ``linear_sparse24_wxa16`` on a ``Sparse24Weight``."""
    return linear_sparse24_wxa16_auto(x, weight.qweight, weight.meta, weight.scales, weight.zeros, bias,
                                      weight.group_size or 0, weight.in_features)
