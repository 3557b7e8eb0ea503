"""``lowbit::linear_luta16``: y = x @ (table[q] * s)^T + bias for lookup-table weights.

``linear_luta16(x, qweight, scales, table, bias, bits, group_size, in_features)`` with the tensors of
``lowbit.formats.lut.LutWeight`` (``group_size`` 0 = per-channel). A separate op rather than a
``table`` argument on ``linear_wxa16``: the intx op's schema, fake and callers stay untouched, and
the two never take zeros and a table at once. Both run the same kernels (``LUT`` constexpr).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch
from .errors import UnsupportedError
from .formats.intx import natural_words
from .formats.lut import LutWeight, check_lut_tensors
from .kernels.dequant import dequant_matmul_wxa16
from .kernels.gemm import gemm_wxa16
from .kernels.gemv import gemv_wxa16
from .ops import PER_CHANNEL_GROUP_LEN, _validate_wxa16, dense_reference, flatten_apply

_LAUNCHERS = {"triton_gemv": gemv_wxa16, "triton_gemm": gemm_wxa16, "triton_dequant_mm": dequant_matmul_wxa16}


def _validate_luta16(x, qweight, scales, table, bias, bits, group_size, in_features, k_order=0) -> None:
    _validate_wxa16(x, qweight, scales, None, bias, bits, group_size, in_features, k_order)
    check_lut_tensors(qweight, scales, table, bits, group_size or None, in_features)
    if table.device != x.device:
        raise UnsupportedError(f"table is on {table.device} but x is on {x.device}; move the module to x's device")


def reference_luta16(x2d, qweight, scales, table, bias, bits, group_size, in_features, k_order=0) -> torch.Tensor:
    """fp32 dequantize-then-matmul (the oracle, and the CPU backend)."""
    w = LutWeight(natural_words(qweight, k_order, bits), scales, table, bits, group_size or None,
                  in_features).dequantize(torch.float32)
    return dense_reference(x2d, w, bias, x2d.dtype)


def linear_luta16_eager(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, table: torch.Tensor,
    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int, k_order: int = 0,
) -> torch.Tensor:
    """The op's implementation without the torch.library dispatch (eager fast path). ``k_order`` 1:
    4-bit words in the mma word order (``formats.intx.to_mma_words``)."""
    _validate_luta16(x, qweight, scales, table, bias, bits, group_size, in_features, k_order)
    n = qweight.shape[1]
    group_len = group_size or PER_CHANNEL_GROUP_LEN

    def run(x2d):
        problem = dispatch.WxA16Problem(x2d.shape[0], n, in_features, bits, group_len, x2d.dtype, x2d.device.type)
        backend = dispatch.select_lut(problem)
        if backend == "reference":
            return reference_luta16(x2d, qweight, scales, table, bias, bits, group_size, in_features, k_order)
        return _LAUNCHERS[backend](x2d, qweight, scales, None, bias, bits, group_len, 0.0, n, table=table,
                                   k_order=k_order)

    return flatten_apply(x, in_features, n, run)


@torch.library.custom_op("lowbit::linear_luta16", mutates_args=())
def linear_luta16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, table: torch.Tensor,
    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int, k_order: int = 0,
) -> torch.Tensor:
    return linear_luta16_eager(x, qweight, scales, table, bias, bits, group_size, in_features, k_order)


@linear_luta16.register_fake
def _(x, qweight, scales, table, bias, bits, group_size, in_features, k_order=0):
    _validate_luta16(x, qweight, scales, table, bias, bits, group_size, in_features, k_order)
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


linear_luta16_auto = dispatch.eager_unless_compiling(linear_luta16, linear_luta16_eager)


def lut_linear(x: torch.Tensor, weight: LutWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convenience: ``linear_luta16`` on a ``LutWeight``."""
    return linear_luta16_auto(x, weight.qweight, weight.scales, weight.table, bias, weight.bits,
                              weight.group_size or 0, weight.in_features)
