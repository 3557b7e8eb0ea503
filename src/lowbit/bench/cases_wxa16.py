"""Cases for n-bit weights x 16-bit activations: ours, cuBLAS, tinygemm, two dequantize baselines, peers.

All of them multiply by the *same* quantized weight (the codes/scales/zeros of ``ShapeData.qw``), so
one fp32 reference checks every row. cuBLAS gets that weight dequantized to the activation dtype.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..formats.intx import IntxWeight, runs_mma_words, runtime_words, symmetric_zero, unpack
from .cases import (
    OURS, PEER, Bound, Case, OpSpec, ShapeData, intx_weight_bytes, needs_cuda, register,
)
from .shapes import LinearShape


def _act_bytes(spec: OpSpec) -> int:
    return torch.empty((), dtype=spec.dtype).element_size()


def _intx_bytes(data: ShapeData, scale_bytes: Optional[int] = None, zero_bytes: Optional[int] = None) -> int:
    qw, s = data.qw, data.shape
    sb = qw.scales.element_size() if scale_bytes is None else scale_bytes
    zb = (0 if qw.zeros is None else qw.zeros.element_size()) if zero_bytes is None else zero_bytes
    return intx_weight_bytes(s.n, s.k, qw.bits, qw.group_size, sb, zb)


def _zero_points(qw: IntxWeight) -> torch.Tensor:
    """(G, N) fp32 zero points (the implicit constant when symmetric)."""
    return qw.zero_points()


class Ours(Case):
    """A ``QuantLinear`` call (eager: its recorded-launch fast path), one module per weight copy."""

    def bind(self, data: ShapeData) -> Bound:
        from ..nn import QuantLinear

        qw = data.qw
        bits, k = qw.bits, qw.in_features
        qweight, k_order = runtime_words(qw.qweight, runs_mma_words(qw), bits)  # as QuantLinear runs
        modules = {}

        def module(w):
            mod = modules.get(id(w))
            if mod is None:
                # this copy itself, already in the run-time word order: no conversion (and no GPU work, as
                # the first call of a copy may come inside the timer's CUDA-graph capture)
                mod = QuantLinear(IntxWeight(w[0], w[1], w[2], bits, qw.group_size, k), k_order=k_order)
                modules[id(w)] = mod
            return mod

        def run(x, w):
            return module(w)(x)

        e = _act_bytes(data.spec)
        return Bound((qweight, qw.scales, qw.zeros), run, _intx_bytes(data), e, e, data.spec.dtype)


class Cublas(Case):
    """Dense ``F.linear`` with the weight in the activation dtype (the bar to beat)."""

    def bind(self, data: ShapeData) -> Bound:
        e = _act_bytes(data.spec)
        s = data.shape
        return Bound((data.w_dense,), lambda x, w: F.linear(x, w[0]), s.n * s.k * e, e, e, data.spec.dtype)


TINYGEMM_GROUPS = (32, 64, 128, 256)


def _inner_k_tiles(k: int) -> Optional[int]:
    return next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)


class Tinygemm(Case):
    """``aten._weight_int4pack_mm`` (int4, bf16 only); codes repacked with ``_convert_weight_to_int4pack``.

    tinygemm computes w = (q - 8) * s + zt; ours is w = (q - z) * s, so zt = (8 - z) * s.
    """

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        ok, why = needs_cuda(device)
        if not ok:
            return ok, why
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
            return False, "this torch has no aten._weight_int4pack_mm"
        if spec.bits != 4 or spec.dtype != torch.bfloat16:
            return False, "tinygemm is int4 weights with bf16 activations only"
        if spec.group_size not in TINYGEMM_GROUPS:
            return False, f"tinygemm group sizes are {TINYGEMM_GROUPS}, got {spec.group_size}"
        return True, ""

    def supports(self, spec: OpSpec, shape: LinearShape, m: int) -> Tuple[bool, str]:
        if shape.n % 8 or shape.k % spec.group_size or _inner_k_tiles(shape.k) is None:
            return False, "tinygemm needs N % 8 == 0, K % group_size == 0 and K % 32 == 0"
        return True, ""

    def bind(self, data: ShapeData) -> Bound:
        qw, s = data.qw, data.shape
        inner = _inner_k_tiles(s.k)
        wp = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(qw.codes()[:, : s.k]), inner)
        sz = tinygemm_scales_and_zeros(qw)
        g = qw.group_size

        def run(x, w):
            return torch.ops.aten._weight_int4pack_mm(x, w[0], g, w[1])

        nbytes = intx_weight_bytes(s.n, s.k, 4, g, 2, 2)
        return Bound((wp, sz), run, nbytes, 2, 2, torch.bfloat16, note=f"innerKTiles={inner}")


def tinygemm_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in [0, 15] -> (N, K/2) uint8 with even k in the high nibble (the CUDA input layout)."""
    c = codes.to(torch.uint8)
    return ((c[:, ::2] << 4) | c[:, 1::2]).contiguous()


def tinygemm_scales_and_zeros(qw: IntxWeight) -> torch.Tensor:
    """(G, N, 2) bf16 [scale, zt] with zt = (8 - z) * s, so (q - 8) * s + zt == (q - z) * s."""
    scale = qw.scales.float()
    zt = (8.0 - _zero_points(qw)) * scale
    return torch.stack([scale, zt], dim=-1).to(torch.bfloat16).contiguous()


class DequantCublas(Case):
    """Toy: unpacked uint8 codes -> w = (q - z) * s in eager torch (2 elementwise kernels) -> cuBLAS."""

    def bind(self, data: ShapeData) -> Bound:
        qw, s, dt = data.qw, data.shape, data.spec.dtype
        n, kp, gl = s.n, qw.padded_in_features, qw.group_len
        codes = qw.codes().view(n, kp // gl, gl)  # (N, G, gl) uint8, 1 byte per weight
        z = _zero_points(qw).t().unsqueeze(2).to(dt)  # (N, G, 1)
        sc = qw.scales.t().unsqueeze(2).to(dt)
        k = s.k

        def run(x, w):
            q, zz, ss = w
            wd = torch.sub(q, zz)  # uint8 - dt -> dt
            wd.mul_(ss)
            return F.linear(x, wd.view(n, kp)[:, :k])

        e = _act_bytes(data.spec)
        return Bound((codes, z, sc), run, _intx_bytes(data), e, e, dt,
                     note="uint8 codes, eager (q-z)*s, then F.linear")


def _dequant_linear(x, qweight, scales, zeros, bits: int, group_len: int, k: int):
    """Dequantize the packed intx weight with the format's own unpack, then ``F.linear``."""
    kp = qweight.shape[0] * 32 // bits
    codes = unpack(qweight, bits, kp)  # (N, Kp) uint8
    n = codes.shape[0]
    q = codes.view(n, kp // group_len, group_len).to(x.dtype)
    z = symmetric_zero(bits) if zeros is None else zeros.t().unsqueeze(2).to(x.dtype)
    w = ((q - z) * scales.t().unsqueeze(2).to(x.dtype)).view(n, kp)[:, :k]
    return F.linear(x, w)


@functools.lru_cache(maxsize=1)
def _compiled_dequant_linear():
    try:  # one compiled function serves every shape (dynamic=True), so lift the recompile cap a little
        cfg = torch._dynamo.config
        if hasattr(cfg, "recompile_limit"):
            cfg.recompile_limit = max(cfg.recompile_limit, 64)
        elif hasattr(cfg, "cache_size_limit"):
            cfg.cache_size_limit = max(cfg.cache_size_limit, 64)
    except Exception:  # noqa: BLE001 - a cap we cannot raise only costs recompiles
        pass
    return torch.compile(_dequant_linear, dynamic=True)


class CompiledDequant(Case):
    """``torch.compile``'d dequantize (from the packed int32 codes) + matmul; what inductor makes of it."""

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        return needs_cuda(device)

    def bind(self, data: ShapeData) -> Bound:
        qw = data.qw
        fn = _compiled_dequant_linear()
        bits, gl, k = qw.bits, qw.group_len, qw.in_features

        def run(x, w):
            return fn(x, w[0], w[1], w[2], bits, gl, k)

        e = _act_bytes(data.spec)
        return Bound((qw.qweight, qw.scales, qw.zeros), run, _intx_bytes(data), e, e, data.spec.dtype,
                     note="torch.compile(dynamic=True)")


class GemLite(Case):
    """gemlite ``GemLiteLinear`` fed our codes/scales/zeros (hqq convention (q - z) * s)."""

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        try:
            import gemlite  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return False, f"gemlite not importable ({type(e).__name__})"
        if spec.bits not in (1, 2, 4, 8):
            return False, "gemlite packs 1/2/4/8-bit weights"
        return needs_cuda(device)

    def bind(self, data: ShapeData) -> Bound:
        from gemlite import DType, GemLiteLinear

        qw, s, dt = data.qw, data.shape, data.spec.dtype
        gdt = DType.BF16 if dt == torch.bfloat16 else DType.FP16
        gs = qw.group_size or s.k
        lin = GemLiteLinear(qw.bits, group_size=gs, in_features=s.k, out_features=s.n,
                            input_dtype=gdt, output_dtype=gdt)
        codes = qw.codes()[:, : s.k].contiguous()
        lin.pack(codes, qw.scales.t().to(dt).contiguous(), _zero_points(qw).t().to(dt).contiguous(), None)
        e = _act_bytes(data.spec)
        return Bound(lin, lambda x, mod: mod(x), _intx_bytes(data, 2, 2), e, e, dt)


class TorchaoInt4(Case):
    """torchao ``Int4WeightOnlyConfig`` on an ``nn.Linear`` holding our dequantized weight (it requantizes)."""

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        try:
            import torchao.quantization  # noqa: F401
        except Exception as e:  # noqa: BLE001
            return False, f"torchao not importable ({type(e).__name__})"
        if spec.bits != 4 or spec.dtype != torch.bfloat16 or spec.group_size is None:
            return False, "torchao int4 weight-only: 4 bits, bf16, grouped"
        return needs_cuda(device)

    def bind(self, data: ShapeData) -> Bound:
        from torchao.quantization import quantize_

        try:
            from torchao.quantization import Int4WeightOnlyConfig
            cfg = Int4WeightOnlyConfig(group_size=data.spec.group_size)
        except ImportError:
            from torchao.quantization import int4_weight_only
            cfg = int4_weight_only(group_size=data.spec.group_size)
        s = data.shape
        lin = torch.nn.Linear(s.k, s.n, bias=False, device=data.device, dtype=torch.bfloat16)
        with torch.no_grad():
            lin.weight.copy_(data.w_dense)
        quantize_(lin, cfg)
        return Bound(lin, lambda x, mod: mod(x), intx_weight_bytes(s.n, s.k, 4, data.spec.group_size, 2, 2),
                     2, 2, torch.bfloat16, note="requantized by torchao")


register(Ours("lowbit", "lowbit linear_wxa16 (ours)", role=OURS))
register(Cublas("cublas", "cuBLAS F.linear, dense 16-bit weight", ops=("wxa16", "fp8", "int8", "w4a8", "sparse24")))
register(Tinygemm("tinygemm", "tinygemm aten._weight_int4pack_mm"))
register(DequantCublas("dequant_cublas", "toy: uint8 codes, eager (q-z)*s, then cuBLAS"))
register(CompiledDequant("compiled", "torch.compile(dequantize + matmul)"))
register(GemLite("gemlite", "gemlite GemLiteLinear", role=PEER))
register(TorchaoInt4("torchao", "torchao Int4WeightOnlyConfig", role=PEER))

__all__ = ["Ours", "Cublas", "Tinygemm", "DequantCublas", "CompiledDequant", "GemLite", "TorchaoInt4"]
