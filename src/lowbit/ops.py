"""Public ops: the only entry to the kernels. Each is a torch.library custom op with a fake impl.

``linear_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order=0)``
    y[..., N] = x[..., K] @ dequant(W)^T + bias for W in ``lowbit.formats.intx`` layout.
    ``group_size`` 0 means per-channel. Any leading dims on x; fp16/bf16 on the Triton kernels,
    any float dtype on the reference backend. ``k_order`` 1: ``qweight`` in the mma word order
    (``formats.intx.to_mma_words``, what ``QuantLinear`` keeps at run time).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import dispatch
from .errors import FormatError, InputError, UnsupportedError
from .formats.intx import IntxWeight, mma_words_layout_ok, natural_words, padded_k, symmetric_zero
from .kernels.dequant import dequant_matmul_wxa16
from .kernels.gemm import gemm_wxa16
from .kernels.gemv import gemv_wxa16

PER_CHANNEL_GROUP_LEN = 1 << 30  # what kernels see as the group length for per-channel weights


def _validate_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order=0) -> None:
    if not 1 <= bits <= 8:
        raise FormatError(f"bits must be in 1..8, got {bits}")
    if group_size < 0 or group_size % 32:
        raise FormatError(f"group_size must be 0 (per-channel) or a positive multiple of 32, got {group_size}")
    check_x(x, in_features)
    kp = padded_k(in_features, group_size or None)
    check_k_order(k_order, bits, kp, group_size or kp)
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] != kp * bits // 32:
        raise FormatError(
            f"qweight must be int32 of shape ({kp * bits // 32}, N) for K={in_features}, bits={bits}, "
            f"group_size={group_size}; got {qweight.dtype} {tuple(qweight.shape)}"
        )
    n = qweight.shape[1]
    g = kp // (group_size or kp)
    if tuple(scales.shape) != (g, n) or not scales.is_floating_point():
        raise FormatError(f"scales must be float of shape ({g}, {n}), got {scales.dtype} {tuple(scales.shape)}")
    if zeros is not None and tuple(zeros.shape) != (g, n):
        raise FormatError(f"zeros must have shape ({g}, {n}), got {tuple(zeros.shape)}")
    check_bias_devices(x, n, bias, qweight=qweight, scales=scales, zeros=zeros)


def check_k_order(k_order: int, bits: int, kp: int, group_len: int) -> None:
    """k_order is 0 (natural words) or 1 (mma word order: ``formats.intx.mma_words_layout_ok``) (FormatError)."""
    if k_order not in (0, 1) or (k_order == 1 and not mma_words_layout_ok(bits, kp, group_len)):
        raise FormatError(f"k_order must be 0 (natural) or 1 (mma word order: 1, 2, 4 or 8 bits, Kp and the group "
                          f"a multiple of {128 // bits if bits in (1, 2, 4, 8) else '128/bits'}); got {k_order} with "
                          f"bits={bits}, Kp={kp}, group={group_len}")


def check_x(x: torch.Tensor, in_features: int) -> None:
    """x is floating point with last dim in_features (InputError)."""
    if not x.is_floating_point():
        raise InputError(f"x must be a floating point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise InputError(f"x's last dim must be in_features={in_features}, got shape {tuple(x.shape)}")


def check_bias_devices(x: torch.Tensor, n: int, bias: Optional[torch.Tensor], **weights) -> None:
    """bias has shape (n,) (InputError); every weight tensor and bias is on x's device (UnsupportedError)."""
    if bias is not None and tuple(bias.shape) != (n,):
        raise InputError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    for name, t in (*weights.items(), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise UnsupportedError(f"{name} is on {t.device} but x is on {x.device}; move the module to x's device")


def dense_reference(x: torch.Tensor, w: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """fp32 x @ w^T (+ bias) cast to dtype: the common tail of every dequantize-then-matmul oracle."""
    y = x.float() @ w.t()
    if bias is not None:
        y += bias.float()
    return y.to(dtype)


def flatten_apply(x: torch.Tensor, k: int, n: int, run) -> torch.Tensor:
    """Flatten x's leading dims, run (M, K) -> (M, N), restore them (M = 0: no launch)."""
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    if x2d.shape[0] == 0:
        return x.new_empty((*lead, n))
    return run(x2d).reshape(*lead, n)


def reference_wxa16(x2d, qweight, scales, zeros, bias, bits, group_size, in_features, k_order=0) -> torch.Tensor:
    """fp32 dequantize-then-matmul (the oracle, and the CPU backend)."""
    w = IntxWeight(natural_words(qweight, k_order, bits), scales, zeros, bits, group_size or None, in_features).dequantize(torch.float32)
    return dense_reference(x2d, w, bias, x2d.dtype)


def _run_wxa16(x2d, qweight, scales, zeros, bias, bits, group_size, in_features, k_order=0) -> torch.Tensor:
    m, n = x2d.shape[0], qweight.shape[1]
    group_len = group_size or PER_CHANNEL_GROUP_LEN
    problem = dispatch.WxA16Problem(m, n, in_features, bits, group_len, x2d.dtype, x2d.device.type)
    backend = dispatch.select(problem)
    if backend == "reference":
        return reference_wxa16(x2d, qweight, scales, zeros, bias, bits, group_size, in_features, k_order)
    return _LAUNCHERS[backend](x2d, qweight, scales, zeros, bias, bits, group_len, symmetric_zero(bits), n,
                               k_order=k_order)


_LAUNCHERS = {"triton_gemv": gemv_wxa16, "triton_gemm": gemm_wxa16, "triton_dequant_mm": dequant_matmul_wxa16}


def linear_wxa16_eager(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int, k_order: int = 0,
) -> torch.Tensor:
    """The op's implementation, callable without the torch.library dispatch (eager fast path)."""
    _validate_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order)
    return flatten_apply(x, in_features, qweight.shape[1],
                         lambda x2d: _run_wxa16(x2d, qweight, scales, zeros, bias, bits, group_size, in_features,
                                                k_order))


@torch.library.custom_op("lowbit::linear_wxa16", mutates_args=())
def linear_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int, k_order: int = 0,
) -> torch.Tensor:
    return linear_wxa16_eager(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order)


@linear_wxa16.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order=0):
    _validate_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features, k_order)
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


linear_wxa16_auto = dispatch.eager_unless_compiling(linear_wxa16, linear_wxa16_eager)


def intx_linear(x: torch.Tensor, weight: IntxWeight, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convenience: ``linear_wxa16`` on an ``IntxWeight``."""
    return linear_wxa16_auto(
        x, weight.qweight, weight.scales, weight.zeros, bias, weight.bits, weight.group_size or 0,
        weight.in_features,
    )


# mixture-of-experts ops live in their own module; re-exported here (the one door to the kernels)
from .ops_moe import grouped_gemm, grouped_gemm_wxa16, moe_align  # noqa: E402,F401
# 8-bit activation ops (lowbit::quantize_act, lowbit::linear_w8a8, lowbit::linear_w4a8_fp8) live in ops_a8.
from .ops_a8 import (  # noqa: E402,F401
    linear_w4a8_fp8, linear_w4a8_fp8_auto, linear_w8a8, linear_w8a8_auto, quantize_act,
)
