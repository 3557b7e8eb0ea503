"""``lowbit::linear_sparse24_wxa16``: y = x @ dequant(W)^T + bias for 2:4-sparse int4 weights.

``linear_sparse24_wxa16(x, qweight, meta, scales, zeros, bias, group_size, in_features)`` with the
tensors of ``lowbit.formats.sparse24.Sparse24Weight`` (``group_size`` 0 = per-channel). Backends
(``dispatch.select_sparse24``): the sparse GEMV (small M), the sparse tensor-core GEMM (medium M),
dequantize + cuBLAS or dequantize + torch semi-structured sparse matmul (large M), the fp32 reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch
from .errors import InputError, UnsupportedError
from .formats.intx import symmetric_zero
from .formats.sparse24 import BITS, Sparse24Weight, check_sparse24_tensors
from .kernels.sparse24 import (
    dequant_matmul_sparse24, dequant_semi_structured_sparse24, gemm_sparse24, gemv_sparse24,
)
from .ops import PER_CHANNEL_GROUP_LEN

_LAUNCHERS = {"triton_sparse24_gemv": gemv_sparse24, "triton_sparse24_gemm": gemm_sparse24,
              "triton_sparse24_dequant_mm": dequant_matmul_sparse24,
              "torch_semi_structured": dequant_semi_structured_sparse24}


def _validate(x, qweight, meta, scales, zeros, bias, group_size, in_features) -> None:
    check_sparse24_tensors(qweight, meta, scales, zeros, group_size or None, in_features)
    if not x.is_floating_point():
        raise InputError(f"x must be a floating point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise InputError(f"x's last dim must be in_features={in_features}, got shape {tuple(x.shape)}")
    n = qweight.shape[1]
    if bias is not None and tuple(bias.shape) != (n,):
        raise InputError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (("qweight", qweight), ("meta", meta), ("scales", scales), ("zeros", zeros), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise UnsupportedError(f"{name} is on {t.device} but x is on {x.device}; move the module to x's device")


def reference_sparse24(x2d, qweight, meta, scales, zeros, bias, group_size, in_features) -> torch.Tensor:
    """fp32 dequantize-then-matmul (the oracle, and the CPU backend)."""
    w = Sparse24Weight(qweight, meta, scales, zeros, group_size or None, in_features).dequantize(torch.float32)
    y = x2d.float() @ w.t()
    if bias is not None:
        y += bias.float()
    return y.to(x2d.dtype)


def linear_sparse24_wxa16_eager(
    x: torch.Tensor, qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
    zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_size: int, in_features: int,
) -> torch.Tensor:
    """The op's implementation without the torch.library dispatch (eager fast path)."""
    _validate(x, qweight, meta, scales, zeros, bias, group_size, in_features)
    lead, n = x.shape[:-1], qweight.shape[1]
    x2d = x.reshape(-1, in_features)
    if x2d.shape[0] == 0:
        return x.new_empty((*lead, n))
    group_len = group_size or PER_CHANNEL_GROUP_LEN
    problem = dispatch.WxA16Problem(x2d.shape[0], n, in_features, BITS, group_len, x2d.dtype, x2d.device.type)
    backend = dispatch.select_sparse24(problem)
    if backend == "reference":
        y = reference_sparse24(x2d, qweight, meta, scales, zeros, bias, group_size, in_features)
    else:
        y = _LAUNCHERS[backend](x2d, qweight, meta, scales, zeros, bias, group_len, symmetric_zero(BITS))
    return y.reshape(*lead, n)


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
