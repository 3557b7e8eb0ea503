"""Public ops with 8-bit activations (torch.library custom ops + fake impls; re-exported by ``lowbit.ops``).

``quantize_act(x, kind, block, inv_smooth) -> (q, s)``
    Dynamic symmetric quantization of x (M, K) to ``kind`` 'fp8' (e4m3) or 'int8': per token
    (``block`` 0: s (M,)) or per 1 x ``block`` slice (s (M, ceil(K/block))). ``inv_smooth`` (K,)
    multiplies x first (SmoothQuant). Semantics: ``lowbit.formats.act8``.
``linear_w8a8(x, qweight, scales, inv_smooth, bias, block) -> y``
    y = x @ W^T + bias with W in ``formats.fp8`` (qweight float8_e4m3fn) or ``formats.int8``
    (qweight int8) layout; the activation is quantized per token (``block`` 0) or per 1 x 128
    block (``block`` 128, fp8 block-scaled weights) inside the op. fp16/bf16 in and out.
``linear_w4a8_fp8(x, qweight, scales, zeros, bias, bits, group_size, in_features) -> y``
    intx weights (bits <= 4, integer or symmetric zeros; ``group_size`` 0 = per-channel) times
    fp8 per-token activations: y = sx[m] * sum_g s[g, n] * sum_k qx[m, k] (q[n, k] - z[g, n]) + bias.
    Kernel by M (``w4a8_path``): the packed 16-bit GEMM on the fp8 codes (exact operands), the fp8
    tensor-core kernel (int4 -> e4m3 in registers) where the packed path does not apply; at large M
    per-channel weights as an expanded fp8 copy of the codes + the row-wise fp8 GEMM, group-wise ones as
    dequantized 16-bit operands + cuBLAS.

The reference backend (CPU, or no fp8 tensor cores) computes in fp32 from the same quantized
operands, so it differs from the kernels only by summation order.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import torch

from . import dispatch
from .errors import FormatError, InputError, UnsupportedError
from .formats.act8 import FP8, dequantize_rows, quantize_rows
from .formats.fp8 import BLOCK
from .formats.intx import IntxWeight, symmetric_zero
from .kernels.quant_act import act_scale_shape, quantize_act as quantize_act_triton
from .kernels.scaled_mm import (FUSED_QUANT_MAX_M, codes_mm_applies, scaled_mm, scaled_mm_codes, scaled_mm_fused_quant,
                                scaled_mm_intx)
from .kernels.dequant import dequant_matmul_wxa16
from .kernels.gemm import gemm_wxa16, scaled_x_config
from .ops import dense_reference, flatten_apply

PER_CHANNEL_GROUP_LEN = 1 << 30
W4A8_MAX_BITS = 4  # q - z in [-15, 15]: exact in e4m3 (integers up to 16 are)
# W4A8 problems with M <= this run on the packed 16-bit GEMM with fp8 X (``w4a8_path``), larger ones on
# dequantized 16-bit operands + cuBLAS. H200 (benchmarks/results/h200/w4a8_packed/, 2983321): the packed
# GEMM beat the fp8 tensor-core kernel at every M from 1 to 4096 on all 8 Llama-3 8B/70B shapes.
W4A8_PACKED_MAX_M = 128


def _kind_of(qweight: torch.Tensor) -> str:
    if qweight.dtype == torch.int8:
        return "int8"
    if FP8 is not None and qweight.dtype == FP8:
        return "fp8"
    raise FormatError(f"qweight must be float8_e4m3fn or int8, got {qweight.dtype}")


def _check_x(x: torch.Tensor, k: int) -> None:
    if not x.is_floating_point() or x.dtype in (FP8,):
        raise InputError(f"x must be a 16/32-bit floating point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise InputError(f"x's last dim must be in_features={k}, got shape {tuple(x.shape)}")


def _check_devices(x: torch.Tensor, **tensors) -> None:
    for name, t in tensors.items():
        if t is not None and t.device != x.device:
            raise UnsupportedError(f"{name} is on {t.device} but x is on {x.device}; move the module to x's device")


def _check_block(kind: str, block: int) -> None:
    if block not in (0, BLOCK):
        raise FormatError(f"block must be 0 (per token / per channel) or {BLOCK}, got {block}")
    if block and kind != "fp8":
        raise FormatError("block scales exist for fp8 only")


def _validate_w8a8(x, qweight, scales, inv_smooth, bias, block) -> str:
    kind = _kind_of(qweight)
    _check_block(kind, block)
    if qweight.dim() != 2:
        raise FormatError(f"qweight must be 2-D (N, K), got {tuple(qweight.shape)}")
    n, k = qweight.shape
    _check_x(x, k)
    want = (n,) if not block else (-(-n // block), -(-k // block))
    if scales.dtype != torch.float32 or tuple(scales.shape) != want:
        raise FormatError(f"scales must be fp32 {want}, got {scales.dtype} {tuple(scales.shape)}")
    if inv_smooth is not None and (inv_smooth.dtype != torch.float32 or tuple(inv_smooth.shape) != (k,)):
        raise FormatError(f"inv_smooth must be fp32 ({k},), got {inv_smooth.dtype} {tuple(inv_smooth.shape)}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise InputError(f"bias must have shape ({n},), got {tuple(bias.shape)}")
    _check_devices(x, qweight=qweight, scales=scales, inv_smooth=inv_smooth, bias=bias)
    return kind


def _problem(kind: str, x2d: torch.Tensor, n: int) -> dispatch.A8Problem:
    cap = torch.cuda.get_device_capability(x2d.device) if x2d.is_cuda else (0, 0)
    return dispatch.A8Problem(kind, x2d.shape[0], n, x2d.shape[1], x2d.dtype, x2d.device.type, cap)


def fused_quant_max_m() -> int:
    """Largest M whose activation quantization runs inside the GEMM prologue (one launch instead of two);
    ``LOWBIT_FUSED_QUANT_MAX_M`` overrides the measured default (0 turns the fusion off)."""
    return int(os.environ.get("LOWBIT_FUSED_QUANT_MAX_M", FUSED_QUANT_MAX_M))


def _fuse_quant(x2d: torch.Tensor, block: int, inv_smooth) -> bool:
    return block == 0 and inv_smooth is None and x2d.stride(-1) == 1 and x2d.shape[0] <= fused_quant_max_m()


# ---- quantize_act ---------------------------------------------------------------------------------

def reference_quantize_act(x2d, kind: str, block: int, inv_smooth=None) -> Tuple[torch.Tensor, torch.Tensor]:
    xs = x2d.float() if inv_smooth is None else x2d.float() * inv_smooth
    return quantize_rows(xs, kind, block or None)


def _quantize_2d(x2d, kind, block, inv_smooth, backend, dequant: bool = False):
    """(q, s); ``dequant``: q is q * s in x's dtype (``kernels.quant_act``)."""
    if backend == "reference":
        q, s = reference_quantize_act(x2d, kind, block, inv_smooth)
        return (dequantize_rows(q, s, block or None).to(x2d.dtype), s) if dequant else (q, s)
    x2d = x2d.contiguous() if x2d.stride(-1) != 1 else x2d
    return quantize_act_triton(x2d, kind, block or None, inv_smooth, dequant)


def quantize_act_eager(x: torch.Tensor, kind: str, block: int = 0,
                       inv_smooth: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    if kind not in ("fp8", "int8"):
        raise FormatError(f"kind must be 'fp8' or 'int8', got {kind!r}")
    _check_block(kind, block)
    if x.dim() < 1:
        raise InputError("x must have at least one dimension")
    k = x.shape[-1]
    _check_x(x, k)
    if inv_smooth is not None and tuple(inv_smooth.shape) != (k,):
        raise FormatError(f"inv_smooth must be fp32 ({k},), got {tuple(inv_smooth.shape)}")
    x2d = x.reshape(-1, k)
    backend = dispatch.select_a8(_problem(kind, x2d, k))
    q, s = _quantize_2d(x2d, kind, block, inv_smooth, backend)
    lead = x.shape[:-1]
    return q.reshape(*lead, k), s.reshape(*lead, *s.shape[1:])


@torch.library.custom_op("lowbit::quantize_act", mutates_args=())
def quantize_act(x: torch.Tensor, kind: str, block: int = 0,
                 inv_smooth: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    return quantize_act_eager(x, kind, block, inv_smooth)


@quantize_act.register_fake
def _(x, kind, block=0, inv_smooth=None):
    from .formats.act8 import torch_dtype

    k = x.shape[-1]
    lead = x.shape[:-1]
    q = x.new_empty(x.shape, dtype=torch_dtype(kind))
    s_tail = act_scale_shape(1, k, block or None)[1:]
    return q, x.new_empty((*lead, *s_tail), dtype=torch.float32)


# ---- linear_w8a8 (fp8 / int8 weights) -------------------------------------------------------------

def reference_w8a8(x2d, qweight, scales, inv_smooth, bias, block) -> torch.Tensor:
    """fp32 math of the quantized operands (the oracle and the CPU backend)."""
    kind = _kind_of(qweight)
    xq, sx = reference_quantize_act(x2d, kind, block, inv_smooth)
    xd = dequantize_rows(xq, sx, block or None)
    if block:
        n, k = qweight.shape
        w = qweight.float() * scales.repeat_interleave(block, 0).repeat_interleave(block, 1)[:n, :k]
    else:
        w = qweight.float() * scales[:, None]
    return dense_reference(xd, w, bias, x2d.dtype)


def linear_w8a8_eager(x, qweight, scales, inv_smooth, bias, block) -> torch.Tensor:
    kind = _validate_w8a8(x, qweight, scales, inv_smooth, bias, block)
    n, k = qweight.shape

    def run(x2d):
        backend = dispatch.select_a8(_problem(kind, x2d, n))
        if backend == "reference":
            return reference_w8a8(x2d, qweight, scales, inv_smooth, bias, block)
        if _fuse_quant(x2d, block, inv_smooth):
            return scaled_mm_fused_quant(x2d, kind, qweight, scales, bias, x2d.dtype)
        xq, sx = _quantize_2d(x2d, kind, block, inv_smooth, backend)
        return scaled_mm(xq, sx, qweight, scales, bias, x2d.dtype, block or None)

    return flatten_apply(x, k, n, run)


@torch.library.custom_op("lowbit::linear_w8a8", mutates_args=())
def linear_w8a8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, inv_smooth: Optional[torch.Tensor],
                bias: Optional[torch.Tensor], block: int) -> torch.Tensor:
    return linear_w8a8_eager(x, qweight, scales, inv_smooth, bias, block)


@linear_w8a8.register_fake
def _(x, qweight, scales, inv_smooth, bias, block):
    _validate_w8a8(x, qweight, scales, inv_smooth, bias, block)
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


linear_w8a8_auto = dispatch.eager_unless_compiling(linear_w8a8, linear_w8a8_eager)


# ---- linear_w4a8_fp8 (intx weights, fp8 activations) ----------------------------------------------

def _validate_w4a8(x, qweight, scales, zeros, bias, bits, group_size, in_features) -> None:
    from .ops import _validate_wxa16

    _validate_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features)
    if bits > W4A8_MAX_BITS:
        raise UnsupportedError(f"W4A8-fp8 takes bits <= {W4A8_MAX_BITS} (q - z must be exact in e4m3), got {bits}")
    if zeros is not None and zeros.dtype != torch.uint8:
        raise UnsupportedError("W4A8-fp8 needs integer (uint8) or symmetric zero points; float (HQQ-style) "
                               f"zeros are not exact in fp8, got {zeros.dtype}")
    if zeros is None and symmetric_zero(bits) != int(symmetric_zero(bits)):
        raise UnsupportedError(f"W4A8-fp8 needs an integer zero point; symmetric {bits}-bit codes have "
                               f"z = {symmetric_zero(bits)} (use asymmetric 1-bit weights)")


def reference_w4a8(x2d, qweight, scales, zeros, bias, bits, group_size, in_features) -> torch.Tensor:
    xq, sx = quantize_rows(x2d.float(), "fp8")
    w = IntxWeight(qweight, scales, zeros, bits, group_size or None, in_features).dequantize(torch.float32)
    return dense_reference(dequantize_rows(xq, sx), w, bias, x2d.dtype)


W4A8_PATHS = ("auto", "packed", "codes", "dequant", "fp8mma")


def w4a8_path(m: int) -> str:
    """Kernel for a W4A8 product of M rows: 'packed' (the packed 16-bit GEMM on the fp8 codes, exact
    operands) for M <= W4A8_PACKED_MAX_M (``LOWBIT_W4A8_PACKED_MAX_M`` overrides; where the packed
    dequantization does not apply, the caller falls back to 'fp8mma': fp8 tensor cores, int4 -> e4m3 in
    registers), 'codes' above (per-channel weights: codes expanded to an fp8 copy + the row-wise fp8 GEMM,
    ``scaled_mm_codes``; where it does not apply -- group scales, not sm_90 -- the caller falls back to
    'dequant': 16-bit dequantized operands + cuBLAS)."""
    if m <= int(os.environ.get("LOWBIT_W4A8_PACKED_MAX_M", W4A8_PACKED_MAX_M)):
        return "packed"
    return "codes"


def linear_w4a8_fp8_eager(x, qweight, scales, zeros, bias, bits, group_size, in_features,
                          path: str = "auto") -> torch.Tensor:
    """``path`` forces one kernel at every M (``W4A8_PATHS``; benchmarks compare them); 'packed' falls back
    to 'fp8mma' where the packed dequantization does not apply."""
    _validate_w4a8(x, qweight, scales, zeros, bias, bits, group_size, in_features)
    if path not in W4A8_PATHS:
        raise ValueError(f"path must be one of {W4A8_PATHS}, got {path!r}")
    n = qweight.shape[1]
    group_len = group_size or PER_CHANNEL_GROUP_LEN
    sym_zero = int(symmetric_zero(bits))

    def run(x2d):
        backend = dispatch.select_a8(_problem("w4a8", x2d, n))
        if backend == "reference":
            return reference_w4a8(x2d, qweight, scales, zeros, bias, bits, group_size, in_features)
        m = x2d.shape[0]
        chosen = w4a8_path(m) if path == "auto" else path  # 'packed' falls back below where it can't run
        cfg = scaled_x_config(m, n, in_features, bits, group_len, zeros, sym_zero, x2d) if chosen == "packed" else None
        if chosen == "packed" and cfg is None:
            chosen = "fp8mma"
        if chosen == "codes" and not codes_mm_applies(m, in_features, group_len, x2d.device):
            chosen = "dequant"
        if chosen == "dequant":  # q * s rounded once to x's dtype, W dequantized to it: two 16-bit roundings
            xd, _ = _quantize_2d(x2d, "fp8", 0, None, backend, dequant=True)
            return dequant_matmul_wxa16(xd, qweight, scales, zeros, bias, bits, group_len, sym_zero, n)
        if chosen == "fp8mma" and _fuse_quant(x2d, 0, None):
            return scaled_mm_intx(x2d, None, qweight, scales, zeros, bias, bits, group_len, sym_zero, n, x2d.dtype,
                                  x_kind="fp8")
        xq, sx = _quantize_2d(x2d, "fp8", 0, None, backend)
        if chosen == "codes":  # fp8 MMAs on an expanded fp8 copy of q - z (per-channel scales)
            return scaled_mm_codes(xq, sx, qweight, scales, zeros, bias, bits, group_len, sym_zero, n, x2d.dtype)
        if chosen == "packed":  # the same products on 16-bit MMAs (exact), scaled per K tile and per token
            return gemm_wxa16(xq, qweight, scales, zeros, bias, bits, group_len, sym_zero, n, config=cfg,
                              x_scale=sx, out_dtype=x2d.dtype)
        return scaled_mm_intx(xq, sx, qweight, scales, zeros, bias, bits, group_len, sym_zero, n, x2d.dtype)

    return flatten_apply(x, in_features, n, run)


@torch.library.custom_op("lowbit::linear_w4a8_fp8", mutates_args=())
def linear_w4a8_fp8(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
                    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int) -> torch.Tensor:
    return linear_w4a8_fp8_eager(x, qweight, scales, zeros, bias, bits, group_size, in_features)


@linear_w4a8_fp8.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features):
    _validate_w4a8(x, qweight, scales, zeros, bias, bits, group_size, in_features)
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


linear_w4a8_fp8_auto = dispatch.eager_unless_compiling(linear_w4a8_fp8, linear_w4a8_fp8_eager)

__all__ = ["quantize_act", "quantize_act_eager", "linear_w8a8", "linear_w8a8_eager", "linear_w8a8_auto",
           "linear_w4a8_fp8", "linear_w4a8_fp8_eager", "linear_w4a8_fp8_auto", "reference_w8a8", "reference_w4a8",
           "reference_quantize_act"]
