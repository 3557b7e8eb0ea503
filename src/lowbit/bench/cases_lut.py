"""Benchmark cases for lookup-table weights (``lowbit::linear_luta16``): NF4, FP4 e2m1, 4-bit codebooks.

Not part of any default set: name them, e.g.
``lowbit bench --op w4a16 --group 64 --baselines lowbit_nf4,lowbit_fp4,lowbit_cb4`` times them next to
our uniform int4 (``lowbit``) on the same shapes and activations. Each re-quantizes the shape's fp32
weight with its own format and is checked against its own fp32 reference (x @ dequant(W)^T).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch

from ..formats.intx import runtime_words
from ..formats.lut import CodebookFormat, Fp4Format, NF4Format
from .cases import PEER, Bound, Case, OpSpec, ShapeData, register


class LutOurs(Case):
    """Ours with a lookup-table format built by ``make_format(group_size, scale_dtype)``."""

    def __init__(self, name: str, label: str, make_format: Callable[[int, torch.dtype], object]) -> None:
        super().__init__(name, label, role=PEER, default=False)
        self.make_format = make_format

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        if spec.bits != 4 or spec.group_size is None:
            return False, "LUT cases are 4-bit and grouped (run them with --op w4a16)"
        return True, ""

    def bind(self, data: ShapeData) -> Bound:
        from ..ops_lut import linear_luta16

        qw = self.make_format(data.spec.group_size, data.spec.dtype).quantize(data.w_ref)
        bits, gs, k = qw.bits, qw.group_size or 0, qw.in_features
        w_ref = qw.dequantize(torch.float32)
        qweight, k_order = runtime_words(qw.qweight, bits == 4)  # the word order LutLinear runs (lowbit.nn_lut)

        def run(x, w):
            return linear_luta16(x, w[0], w[1], w[2], None, bits, gs, k, k_order)

        e = torch.empty((), dtype=data.spec.dtype).element_size()
        return Bound((qweight, qw.scales, qw.table), run, qw.ideal_nbytes(), e, e, data.spec.dtype,
                     reference=lambda x: x.float() @ w_ref.t(), note=f"table {tuple(qw.table.shape)}")


register(LutOurs("lowbit_nf4", "lowbit linear_luta16 NF4", lambda g, dt: NF4Format(g, dt)))
register(LutOurs("lowbit_fp4", "lowbit linear_luta16 FP4 e2m1 (e8m0 scales)",
                 lambda g, dt: Fp4Format(g, "e8m0", torch.bfloat16)))  # e8m0 needs bf16/fp32 storage
register(LutOurs("lowbit_cb4", "lowbit linear_luta16 4-bit per-row codebook",
                 lambda g, dt: CodebookFormat(4, g, "row", dt, torch.float32, iters=10)))

__all__ = ["LutOurs"]
