"""Ours for the 8-bit activation ops (quantization of the activations included in the timing):
``fp8`` (lowbit W8A8-fp8 row-wise), ``int8`` (lowbit W8A8-int8, plus the ``_int_mm`` + eager quant
baseline), ``w4a8`` (lowbit W4A8-fp8, against our W8A8-fp8 and cuBLAS bf16).

Each row is checked against the fp32 math of its own quantized operands (``ops_a8.reference_*``).
"""
from __future__ import annotations

from typing import Tuple

import torch

from .cases import OURS, Bound, Case, OpSpec, ShapeData, intx_weight_bytes, needs_cuda, register
from .cases_gemm import IntMM, _fp8_available, quant_int8_rows


class OursW8A8(Case):
    """lowbit linear_w8a8: fused activation quant kernel + scaled_mm, bf16/fp16 out."""

    def __init__(self, name: str, label: str, kind: str, **kw) -> None:
        super().__init__(name, label, **kw)
        self.kind = kind

    def math_kind(self, spec: OpSpec) -> str:
        return self.kind

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        if self.kind == "fp8":
            return _fp8_available(device)
        return needs_cuda(device)

    def bind(self, data: ShapeData) -> Bound:
        from ..formats import Fp8Format, Int8Format
        from ..ops_a8 import linear_w8a8_auto, reference_w8a8

        fmt = Fp8Format("row") if self.kind == "fp8" else Int8Format()
        qw = fmt.quantize(data.w_ref)

        def run(x, w):
            return linear_w8a8_auto(x, w[0], w[1], None, None, 0)

        s, e = data.shape, data.spec.dtype.itemsize
        return Bound((qw.qweight, qw.scales), run, s.n * s.k + s.n * 4, e, e, data.spec.dtype,
                     reference=lambda x: reference_w8a8(x, qw.qweight, qw.scales, None, None, 0).float())


class OursW4A8(Case):
    """lowbit linear_w4a8_fp8 on the shape's intx weight (4-bit, integer zeros); ``path`` forces one of the
    op's kernels at every M (``ops_a8.W4A8_PATHS``; 'auto' is the dispatch)."""

    def __init__(self, name: str, label: str, path: str = "auto", **kw) -> None:
        super().__init__(name, label, **kw)
        self.path = path

    def math_kind(self, spec: OpSpec) -> str:
        return "fp8"

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        if spec.bits > 4:
            return False, "W4A8-fp8 takes bits <= 4"
        return _fp8_available(device)

    def bind(self, data: ShapeData) -> Bound:
        from ..ops_a8 import linear_w4a8_fp8_auto, linear_w4a8_fp8_eager, reference_w4a8

        qw = data.qw
        args = (qw.bits, qw.group_size or 0, qw.in_features)

        def run(x, w):
            if self.path != "auto":
                return linear_w4a8_fp8_eager(x, w[0], w[1], w[2], None, *args, path=self.path)
            return linear_w4a8_fp8_auto(x, w[0], w[1], w[2], None, *args)

        s, e = data.shape, data.spec.dtype.itemsize
        zb = 0 if qw.zeros is None else qw.zeros.element_size()
        nbytes = intx_weight_bytes(s.n, s.k, qw.bits, qw.group_size, qw.scales.element_size(), zb)
        return Bound((qw.qweight, qw.scales, qw.zeros), run, nbytes, e, e, data.spec.dtype,
                     reference=lambda x: reference_w4a8(x, qw.qweight, qw.scales, qw.zeros, None, *args).float())


class IntMMQuant(IntMM):
    """``_int_mm`` with eager per-token int8 quantization and the scale epilogue (bf16/fp16 out)."""

    def tol(self, spec: OpSpec, bound: Bound) -> float:
        return Case.tol(self, spec, bound)

    def bind(self, data: ShapeData) -> Bound:
        wq, sw = quant_int8_rows(data.w_ref)
        out = data.spec.dtype

        def run(x, w):
            xq, sx = quant_int8_rows(x)
            return (torch._int_mm(xq, w[0].t()).float() * sx * w[1]).to(out)

        def reference(x):
            xq, sx = quant_int8_rows(x)
            return (xq.double() @ wq.double().t() * sx.double() * sw.double().t()).float()

        s = data.shape
        return Bound((wq, sw.t().contiguous()), run, s.n * s.k + 4 * s.n, out.itemsize, out.itemsize, out,
                     reference=reference)


register(OursW8A8("lowbit_fp8", "lowbit W8A8-fp8 row-wise, act quant included (ours)", "fp8", role=OURS, ops=("fp8",)))
register(OursW8A8("lowbit_int8", "lowbit W8A8-int8, act quant included (ours)", "int8", role=OURS, ops=("int8",)))
register(OursW4A8("lowbit_w4a8", "lowbit W4A8-fp8 g128, act quant included (ours)", role=OURS, ops=("w4a8",)))
for _path, _what in (("fp8mma", "on fp8 tensor cores (int4 -> e4m3 in registers)"),
                     ("packed", "on the packed 16-bit GEMM (fp8 codes as fp16)"),
                     ("codes", "per-channel: an expanded fp8 copy of the codes + the fp8 GEMM"),
                     ("dequant", "as dequantized 16-bit operands + cuBLAS")):
    register(OursW4A8(f"lowbit_w4a8_{_path}", f"lowbit W4A8 {_what} at every M", path=_path, ops=("w4a8",)))
register(OursW8A8("lowbit_fp8_ref", "lowbit W8A8-fp8 row-wise (for the W4A8 ratio)", "fp8", ops=("w4a8",)))
register(IntMMQuant("int_mm_quant", "int8 _int_mm + eager activation quant + scale epilogue", ops=("int8",)))
