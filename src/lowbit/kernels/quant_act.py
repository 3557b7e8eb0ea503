"""quantize_act: fused dynamic 8-bit activation quantization (amax + scale + cast) in one kernel.

x (M, K) fp16/bf16/fp32 -> q (M, K) fp8 e4m3 or int8 (K contiguous) and fp32 scales, either per
token (``block=None``: s (M,)) or per 1 x ``block`` slice of a token (s (M, ceil(K/block)), the
DeepSeek-V3 activation layout). Semantics, rounding and the zero/NaN/Inf rules are those of the
pure-torch oracle ``lowbit.formats.act8.quantize_rows`` (bit-exact on the GPU). An optional
``inv_smooth`` (K,) fp32 multiplies x first (SmoothQuant, ``lowbit.formats.int8``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..formats.act8 import AMAX_FLOOR, qmax, torch_dtype

@triton.jit
def row_scale(amax, any_nan, QMAX: tl.constexpr, FLOOR: tl.constexpr):
    """(s, inv): s = max(amax, FLOOR) / QMAX and inv = QMAX / max(amax, FLOOR) (IEEE divisions, once per
    row / block), both NaN when the row/block had a NaN."""
    a = tl.maximum(amax, FLOOR)
    s = tl.math.div_rn(a, tl.zeros_like(amax) + QMAX)
    inv = tl.math.div_rn(tl.zeros_like(amax) + QMAX, a)
    return tl.where(any_nan, float("nan"), s), tl.where(any_nan, float("nan"), inv)


@triton.jit
def cast_8bit(x, inv, QMAX: tl.constexpr, IS_INT8: tl.constexpr, OUT_TY: tl.constexpr):
    """clamp(x * inv, -QMAX, QMAX) -> int8 (round half to even) or fp8 e4m3 (RNE cast); NaN stays NaN."""
    v = tl.clamp(x * inv, -QMAX, QMAX, propagate_nan=tl.PropagateNan.ALL)
    if IS_INT8:  # (v + 1.5 * 2**23) - 1.5 * 2**23 rounds |v| < 2**22 to an integer, ties to even
        v = (v + 12582912.0) - 12582912.0
    return v.to(OUT_TY)


@triton.jit
def emit_8bit(x, s, inv, QMAX: tl.constexpr, IS_INT8: tl.constexpr, OUT_TY: tl.constexpr, DEQUANT: tl.constexpr):
    """What the kernel stores for x: the 8-bit code (``cast_8bit``), or with DEQUANT the value it stands
    for, q * s, rounded once to OUT_TY (a 16-bit dtype; the operand of a 16-bit GEMM)."""
    if DEQUANT:
        q = cast_8bit(x, inv, QMAX, IS_INT8, tl.int8 if IS_INT8 else tl.float8e4nv)
        return (q.to(tl.float32) * s).to(OUT_TY)
    return cast_8bit(x, inv, QMAX, IS_INT8, OUT_TY)


@triton.jit
def quantize_act_kernel(
    x_ptr, q_ptr, s_ptr, ism_ptr,
    M, K,
    stride_xm, stride_qm, stride_sm,
    HAS_SMOOTH: tl.constexpr, IS_INT8: tl.constexpr, QMAX: tl.constexpr, FLOOR: tl.constexpr,
    BLOCK: tl.constexpr, CHUNK: tl.constexpr, DEQUANT: tl.constexpr = False,
):
    """One program per token row. BLOCK == 0: per-row scale; a row of K <= CHUNK is read once and kept
    in registers, a longer one in two passes of CHUNK pieces (amax, then cast; the second read hits
    L2). BLOCK > 0: CHUNK // BLOCK scale blocks per step, one pass. DEQUANT: q holds q * s in its own
    16-bit dtype (``emit_8bit``)."""
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    q_row = q_ptr + row.to(tl.int64) * stride_qm
    out_ty = q_ptr.dtype.element_ty
    if BLOCK == 0 and K <= CHUNK:
        offs = tl.arange(0, CHUNK)
        x = _smoothed(x_row, ism_ptr, offs, offs < K, HAS_SMOOTH)
        s, inv = row_scale(tl.max(tl.abs(x), axis=0), tl.max((x != x).to(tl.int32), axis=0) > 0, QMAX, FLOOR)
        tl.store(s_ptr + row * stride_sm, s)
        tl.store(q_row + offs, emit_8bit(x, s, inv, QMAX, IS_INT8, out_ty, DEQUANT), mask=offs < K)
    elif BLOCK == 0:
        amax = tl.zeros((CHUNK,), dtype=tl.float32)
        nan = tl.zeros((CHUNK,), dtype=tl.int32)
        for k0 in range(0, K, CHUNK):
            offs = k0 + tl.arange(0, CHUNK)
            x = _smoothed(x_row, ism_ptr, offs, offs < K, HAS_SMOOTH)
            amax = tl.maximum(amax, tl.abs(x))
            nan = tl.maximum(nan, (x != x).to(tl.int32))
        s, inv = row_scale(tl.max(amax, axis=0), tl.max(nan, axis=0) > 0, QMAX, FLOOR)
        tl.store(s_ptr + row * stride_sm, s)
        for k0 in range(0, K, CHUNK):
            offs = k0 + tl.arange(0, CHUNK)
            x = _smoothed(x_row, ism_ptr, offs, offs < K, HAS_SMOOTH)
            tl.store(q_row + offs, emit_8bit(x, s, inv, QMAX, IS_INT8, out_ty, DEQUANT), mask=offs < K)
    else:
        NB: tl.constexpr = CHUNK // BLOCK
        for k0 in range(0, K, CHUNK):
            offs = k0 + tl.arange(0, NB)[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]  # [NB, BLOCK]
            x = _smoothed(x_row, ism_ptr, offs, offs < K, HAS_SMOOTH)
            amax = tl.max(tl.abs(x), axis=1)
            nan = tl.max((x != x).to(tl.int32), axis=1) > 0
            s, inv = row_scale(amax, nan, QMAX, FLOOR)
            blk = k0 // BLOCK + tl.arange(0, NB)
            tl.store(s_ptr + row * stride_sm + blk, s, mask=blk * BLOCK < K)
            tl.store(q_row + offs, emit_8bit(x, s[:, None], inv[:, None], QMAX, IS_INT8, out_ty, DEQUANT),
                     mask=offs < K)


@triton.jit
def _smoothed(x_row, ism_ptr, offs, mask, HAS_SMOOTH: tl.constexpr):
    """x[offs] in fp32, times inv_smooth[offs] when SmoothQuant factors are folded in."""
    x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SMOOTH:
        x = x * tl.load(ism_ptr + offs, mask=mask, other=1.0)
    return x


def act_scale_shape(m: int, k: int, block: Optional[int]):
    return (m,) if block is None else (m, triton.cdiv(k, block))


def quantize_act(x: torch.Tensor, kind: str, block: Optional[int] = None,
                 inv_smooth: Optional[torch.Tensor] = None, dequant: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) with K contiguous -> (q (M, K) fp8/int8, s fp32 (M,) or (M, ceil(K/block))).
    ``dequant``: q is instead q * s in x's dtype (fp16/bf16), one rounding: the quantized activation as
    the operand of a 16-bit GEMM.

    Inputs are validated by ``lowbit.ops``; ``block`` is a power of two >= 16 or None.
    """
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=x.dtype if dequant else torch_dtype(kind))
    s = torch.empty(act_scale_shape(m, k, block), device=x.device, dtype=torch.float32)
    if m == 0:
        return q, s
    warps = None
    if block is None:
        # H200 probe (scripts/quant_act_probe.py, benchmarks/results/h200/quant_act_probe/): one read of a
        # whole row in registers wins up to K = 8192, and at small M up to 32768; long rows at large M are
        # faster in two passes of 4096 (M = 4096, K = 14336: 60 us vs 86 us one-pass)
        whole = triton.next_power_of_2(k)
        chunk = whole if whole <= 8192 or (m <= 64 and whole <= 32768) else 4096
        warps = 4 if k <= 4096 else 8 if chunk <= 8192 and k <= 16384 else 16
    else:
        chunk = block * max(1, min(4096, triton.next_power_of_2(k)) // block)
    quantize_act_kernel[(m,)](
        x, q, s, inv_smooth if inv_smooth is not None else s,
        m, k, x.stride(0), q.stride(0), s.stride(0),
        HAS_SMOOTH=inv_smooth is not None, IS_INT8=kind == "int8", QMAX=qmax(kind), FLOOR=AMAX_FLOOR,
        BLOCK=block or 0, CHUNK=chunk, DEQUANT=dequant, num_warps=warps or (4 if chunk <= 1024 else 8),
    )
    return q, s
