"""Symmetric 8-bit quantization of rows and 1 x B blocks (fp8 e4m3 or int8): the pure-torch oracle.

Shared by the weight formats (``fp8``, ``int8``: weights are rows of W) and by the dynamic activation
quantization that the kernels fuse (``lowbit.kernels.quant_act``); the kernels match this bit for bit
on the GPU. For a row (or a 1 x B block) t::

    amax = max_k |t_k|        (NaN if any t_k is NaN; Inf if any is Inf)
    s    = max(amax, AMAX_FLOOR) / QMAX               fp32, QMAX = 448 (e4m3) or 127 (int8)
    q_k  = cast(clamp(t_k / s, -QMAX, QMAX))          fp8: round-to-nearest-even cast;
                                                      int8: round half to even, then cast
    t_k ~= q_k * s

All-zero rows get s = AMAX_FLOOR / QMAX and q = 0 (no division by zero). A row with NaN/Inf gets a
non-finite scale, so everything computed from it is non-finite, as in torch.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import FormatError

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0
INT8_MAX = 127.0
AMAX_FLOOR = 1e-12
ACT_DTYPES = ("fp8", "int8")


def torch_dtype(kind: str) -> torch.dtype:
    """'fp8' -> torch.float8_e4m3fn, 'int8' -> torch.int8."""
    if kind == "int8":
        return torch.int8
    if kind == "fp8":
        if FP8 is None:
            raise FormatError("this torch has no float8_e4m3fn")
        return FP8
    raise FormatError(f"8-bit kind must be one of {ACT_DTYPES}, got {kind!r}")


def qmax(kind: str) -> float:
    torch_dtype(kind)
    return FP8_MAX if kind == "fp8" else INT8_MAX


def quantize_rows(t: torch.Tensor, kind: str, block: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """t (R, C) float -> (q (R, C) fp8/int8, s fp32): s is (R,) per row, or (R, ceil(C/block)) per
    1 x ``block`` block (the last block of a row may be short). q = cast(clamp(t * (qmax / amax))),
    s = amax / qmax (amax floored at ``AMAX_FLOOR``)."""
    if t.dim() != 2 or not t.is_floating_point():
        raise FormatError(f"expected a 2-D float tensor, got {tuple(t.shape)} {t.dtype}")
    dt, qm = torch_dtype(kind), qmax(kind)
    r, c = t.shape
    tf = t.float()
    if block is not None:
        nb = -(-c // block)
        tp = torch.zeros(r, nb * block, dtype=torch.float32, device=t.device)
        tp[:, :c] = tf
        tf = tp.view(r, nb, block)
    amax = tf.abs().amax(dim=-1, keepdim=True)  # propagates NaN
    # tensor / tensor: IEEE divisions on every device (CUDA torch turns "/ python float" into a
    # multiplication by the reciprocal, 1 ulp off at times -- the kernels use div_rn), once per row /
    # block; each value is then multiplied by inv = qmax / amax (not divided by s), as the kernels do
    a = amax.clamp_min(AMAX_FLOOR)  # clamp_min keeps NaN
    s = a / torch.full_like(amax, qm)
    inv = torch.full_like(amax, qm) / a
    v = (tf * inv).clamp(-qm, qm)
    q = torch.round(v).to(dt) if kind == "int8" else v.to(dt)
    if block is not None:
        return q.view(r, -1)[:, :c].contiguous(), s.squeeze(-1)
    return q, s.squeeze(-1)


def dequantize_rows(q: torch.Tensor, s: torch.Tensor, block: Optional[int] = None) -> torch.Tensor:
    """Inverse of ``quantize_rows`` up to rounding: fp32 (R, C)."""
    if block is None:
        return q.float() * s.float()[:, None]
    return q.float() * s.float().repeat_interleave(block, dim=1)[:, : q.shape[1]]
