"""Benchmark cases for 2:4-sparse int4 weights (``lowbit bench --op sparse24``).

Same run, same shapes, same activations: ours (``lowbit::linear_sparse24_wxa16``, dispatched), our
dense W4A16 (``lowbit::linear_wxa16`` on the same fp32 weight quantized densely), cuBLAS bf16 on the
dense weight, and -- named with ``--baselines`` -- each sparse backend forced (``sparse24_gemv``,
``sparse24_gemm``, ``sparse24_dequant_mm``, ``sparse24_semi``) to read the crossovers off one table.
Every method is checked against its own fp32 reference (x @ its dequantized weight^T).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from ..formats.intx import IntxFormat
from ..formats.sparse24 import Sparse24Format
from .cases import BASELINE, OURS, PEER, Bound, Case, OpSpec, ShapeData, needs_cuda, register
from .shapes import LinearShape


def _act_bytes(spec: OpSpec) -> int:
    return torch.empty((), dtype=spec.dtype).element_size()


def _fp32_reference(w_ref: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: x.float() @ w_ref.t()


class Sparse24Case(Case):
    """Ours: 2:4 magnitude-pruned, int4 kept values; ``launcher`` None = the op (dispatch), else a
    backend of ``lowbit.kernels.sparse24`` called directly for M <= ``max_m``."""

    def __init__(self, name: str, label: str, role: str = PEER, launcher: Optional[str] = None,
                 max_m: Optional[int] = None, min_m: int = 1, cuda_only: bool = False) -> None:
        super().__init__(name, label, role=role, ops=("sparse24",), default=launcher is None)
        self.launcher, self.max_m, self.min_m, self.cuda_only = launcher, max_m, min_m, cuda_only

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        if spec.bits != 4:
            return False, "sparse24 kept values are int4"
        return needs_cuda(device) if self.cuda_only else (True, "")

    def supports(self, spec: OpSpec, shape: LinearShape, m: int) -> Tuple[bool, str]:
        if self.max_m is not None and m > self.max_m or m < self.min_m:
            return False, f"{self.name} is timed for M in [{self.min_m}, {self.max_m or 'any'}]"
        if self.launcher == "dequant_semi_structured_sparse24":
            from ..kernels.sparse24 import semi_structured_ok

            return semi_structured_ok(m, shape.n, shape.k, spec.dtype, torch.device("cuda"))
        return True, ""

    def bind(self, data: ShapeData) -> Bound:
        from ..formats.intx import symmetric_zero
        from ..kernels import sparse24 as launchers
        from ..ops import PER_CHANNEL_GROUP_LEN
        from ..ops_sparse24 import linear_sparse24_wxa16

        spec = data.spec
        qw = Sparse24Format(spec.group_size, spec.symmetric, "int", spec.dtype).quantize(data.w_ref)
        gs, k = qw.group_size or 0, qw.in_features
        if self.launcher is None:
            def run(x, w):
                return linear_sparse24_wxa16(x, w[0], w[1], w[2], w[3], None, gs, k)
        else:
            fn = getattr(launchers, self.launcher)
            gl, z = qw.group_size or PER_CHANNEL_GROUP_LEN, symmetric_zero(4)

            def run(x, w):
                return fn(x, w[0], w[1], w[2], w[3], None, gl, z)
        e = _act_bytes(spec)
        return Bound((qw.qweight, qw.meta, qw.scales, qw.zeros), run, qw.ideal_nbytes(), e, e, spec.dtype,
                     reference=_fp32_reference(qw.dequantize(torch.float32)),
                     note=f"{8 * qw.ideal_nbytes() / (data.shape.n * data.shape.k):.2f} bit/weight")


class DenseW4(Case):
    """Our dense W4A16 (``lowbit::linear_wxa16``) on the unpruned weight, same group size: the bar."""

    def bind(self, data: ShapeData) -> Bound:
        from .. import ops

        spec = data.spec
        qw = IntxFormat(4, spec.group_size, spec.symmetric, "int", spec.dtype).quantize(data.w_ref)
        gs, k = qw.group_size or 0, qw.in_features

        def run(x, w):
            return ops.linear_wxa16(x, w[0], w[1], w[2], None, 4, gs, k)

        e = _act_bytes(spec)
        return Bound((qw.qweight, qw.scales, qw.zeros), run, qw.ideal_nbytes(), e, e, spec.dtype,
                     reference=_fp32_reference(qw.dequantize(torch.float32)),
                     note=f"{8 * qw.ideal_nbytes() / (data.shape.n * data.shape.k):.2f} bit/weight")


register(Sparse24Case("lowbit_sparse24", "lowbit linear_sparse24_wxa16 (ours, 2:4 sparse int4)", role=OURS))
register(DenseW4("lowbit_w4", "lowbit linear_wxa16 dense int4 (same group size)", role=BASELINE, ops=("sparse24",)))
register(Sparse24Case("sparse24_gemv", "sparse24 GEMV forced", launcher="gemv_sparse24", max_m=16))
register(Sparse24Case("sparse24_gemm", "sparse24 tensor-core GEMM forced", launcher="gemm_sparse24", max_m=1024))
register(Sparse24Case("sparse24_expand_mm", "sparse24 expanded to dense int4 + dense W4A16 dispatch forced",
                      launcher="expand_matmul_sparse24", max_m=1024))
register(Sparse24Case("sparse24_dequant_mm", "sparse24 dequantize + cuBLAS forced", launcher="dequant_matmul_sparse24",
                      min_m=32))
register(Sparse24Case("sparse24_semi", "sparse24 dequantize + torch semi-structured 2:4 matmul",
                      launcher="dequant_semi_structured_sparse24", min_m=32, cuda_only=True))

__all__ = ["Sparse24Case", "DenseW4"]
