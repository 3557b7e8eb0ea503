"""8-bit GEMM baselines (ops ``fp8`` and ``int8``): ``torch._scaled_mm`` row-wise and ``torch._int_mm``.

The weight is quantized once per shape (per output channel, symmetric). "GEMM only" rows quantize the
activations outside the timed region; the ``+quant`` rows include per-token activation
quantization (eager, or ``torch.compile``'d). Each row is checked against the fp32 product of its
own quantized operands, so quantization error is not mistaken for a wrong kernel.
"""
from __future__ import annotations

import functools
from typing import Tuple

import torch

from .cases import Bound, Case, OpSpec, ShapeData, needs_cuda, register
from .shapes import LinearShape

FP8 = getattr(torch, "float8_e4m3fn", None)
FP8_MAX = 448.0


def quant_fp8_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric fp8 e4m3: t ~= q * s with q (R, C) fp8 and s (R, 1) fp32."""
    s = t.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / FP8_MAX
    return (t.float() / s).clamp(-FP8_MAX, FP8_MAX).to(FP8), s


def quant_int8_rows(t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: t ~= q * s with q (R, C) int8 and s (R, 1) fp32."""
    s = t.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(t.float() / s).clamp(-127, 127).to(torch.int8), s


@functools.lru_cache(maxsize=1)
def _compiled_quant_fp8():
    return torch.compile(quant_fp8_rows, dynamic=True)


def _fp8_available(device: torch.device) -> Tuple[bool, str]:
    ok, why = needs_cuda(device)
    if not ok:
        return ok, why
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return False, "this torch has no float8_e4m3fn / _scaled_mm"
    if torch.cuda.get_device_capability(device) < (8, 9):
        return False, "fp8 _scaled_mm needs sm_89 or newer"
    return True, ""


class ScaledMM(Case):
    """``torch._scaled_mm`` fp8 e4m3 x e4m3, row-wise scales, output in the activation dtype."""

    def __init__(self, name: str, label: str, quant: str, **kw) -> None:
        super().__init__(name, label, ops=("fp8",), **kw)
        self.quant = quant  # "none" (GEMM only) | "eager" | "compiled"

    def math_kind(self, spec: OpSpec) -> str:
        return "fp8"

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        return _fp8_available(device)

    def supports(self, spec: OpSpec, shape: LinearShape, m: int) -> Tuple[bool, str]:
        if shape.n % 16 or shape.k % 16:
            return False, "_scaled_mm needs N and K multiples of 16"
        return True, ""

    def bind(self, data: ShapeData) -> Bound:
        w8, sw = quant_fp8_rows(data.w_ref)  # (N, K), (N, 1)
        weights = (w8, sw.t().contiguous())  # scale_b (1, N)
        out = data.spec.dtype
        pad16 = _scaled_mm_needs_m16(w8, weights[1], out)

        def gemm(x8, sx, w):
            m = x8.shape[0]
            if pad16 and m % 16:
                x8 = torch.cat([x8, x8.new_zeros(16 - m % 16, x8.shape[1])])
                sx = torch.cat([sx, sx.new_ones(16 - m % 16, 1)])
            y = torch._scaled_mm(x8, w[0].t(), scale_a=sx, scale_b=w[1], out_dtype=out)
            return y[:m]

        if self.quant == "none":
            prepare, run, x_bytes = quant_fp8_rows, (lambda xq, w: gemm(xq[0], xq[1], w)), 1
        else:
            qf = quant_fp8_rows if self.quant == "eager" else _compiled_quant_fp8()
            prepare, run, x_bytes = (lambda x: x), (lambda x, w: gemm(*qf(x), w)), data.spec.dtype.itemsize

        def reference(x):
            x8, sx = quant_fp8_rows(x)
            return (x8.float() * sx) @ (w8.float() * sw).t()

        s = data.shape
        note = "M padded to 16" if pad16 else ""
        return Bound(weights, run, s.n * s.k + s.n * 4, x_bytes, out.itemsize, out, prepare, reference, note)


def _scaled_mm_needs_m16(w8: torch.Tensor, sw: torch.Tensor, out: torch.dtype) -> bool:
    """Some torch versions require M % 16 == 0; probe once with M = 1."""
    x8 = torch.zeros(1, w8.shape[1], device=w8.device).to(FP8)
    try:
        torch._scaled_mm(x8, w8.t(), scale_a=torch.ones(1, 1, device=w8.device), scale_b=sw, out_dtype=out)
        return False
    except RuntimeError:
        return True


class IntMM(Case):
    """``torch._int_mm`` int8 x int8 -> int32, GEMM only (activations quantized outside the timing)."""

    def math_kind(self, spec: OpSpec) -> str:
        return "int8"

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        ok, why = needs_cuda(device)
        if ok and not hasattr(torch, "_int_mm"):
            return False, "this torch has no _int_mm"
        return ok, why

    def supports(self, spec: OpSpec, shape: LinearShape, m: int) -> Tuple[bool, str]:
        if m <= 16:
            return False, "_int_mm needs M > 16"
        if shape.n % 8 or shape.k % 8:
            return False, "_int_mm needs N and K multiples of 8"
        return True, ""

    def tol(self, spec: OpSpec, bound: Bound) -> float:
        return 1e-5  # exact integer products vs an fp32 reference

    def bind(self, data: ShapeData) -> Bound:
        wq, _ = quant_int8_rows(data.w_ref)

        def reference(x):
            xq, _ = quant_int8_rows(x)
            return xq.double().matmul(wq.double().t()).float()

        s = data.shape
        return Bound((wq,), lambda xq, w: torch._int_mm(xq, w[0].t()), s.n * s.k, 1, 4, torch.int32,
                     prepare_x=lambda x: quant_int8_rows(x)[0], reference=reference)


register(ScaledMM("scaled_mm", "fp8 _scaled_mm row-wise, GEMM only", quant="none"))
register(ScaledMM("scaled_mm_quant", "fp8 _scaled_mm + eager activation quant", quant="eager"))
register(ScaledMM("scaled_mm_quant_compiled", "fp8 _scaled_mm + compiled activation quant", quant="compiled"))
register(IntMM("int_mm", "int8 _int_mm, GEMM only", ops=("int8",)))

__all__ = ["ScaledMM", "IntMM", "quant_fp8_rows", "quant_int8_rows"]
