"""8-bit activations: formats (fp8 row/block, int8 + SmoothQuant), quantize_act, scaled_mm (W8A8 fp8/int8,
block scales, W4A8) vs fp32 references, ops/dispatch/modules/configs.

The Triton interpreter does int8 and fp8 tl.dot exactly, but its fp32 -> fp8 cast is wrong when the
rounding carries into the exponent (it returns half the value) and flushes subnormals, so fp8
*quantization* is checked bit-exactly on the GPU only; on the CPU the GEMMs get torch-quantized operands.
"""
import dataclasses
import json
import math

import pytest
from hypothesis import given, settings, strategies as st
import torch
import triton
import triton.language as tl

import lowbit
from lowbit import ops, ops_a8
from lowbit.errors import FormatError, InputError, UnsupportedError
from lowbit.formats import Fp8Format, Int8Format, IntxFormat
from lowbit.formats.act8 import dequantize_rows, quantize_rows
from lowbit.formats.intx import IntxWeight, pack, symmetric_zero
from lowbit.kernels import gemm as gemm_module
from lowbit.kernels.gemm import GemmConfig, gemm_wxa16, scaled_x_config
from lowbit.kernels.int4_fp8 import (UNPACK_MAGIC, UNPACK_PRMT, e4m3_bytes, e4m3_tables, intx_operand, load_tables,
                                     signed_words, table_words)
from lowbit.kernels.quant_act import quantize_act
from lowbit.kernels.dequant import dequantize_intx
from lowbit.kernels.scaled_mm import (ScaledMMConfig, codes_mm_applies, scaled_mm, scaled_mm_codes, scaled_mm_fused_quant,
                                     scaled_mm_intx)
from lowbit.kernels.scaled_mm_wgmma import WGMMA_CANDIDATES, WgmmaConfig, instr_n
from lowbit.kernels.scaled_mm_tma import BLOCK_SCALE_TILES, HEURISTIC_TILES, TMA_CANDIDATES, TmaConfig, heuristic_tma_config, tma_applies
from lowbit.ops_a8 import reference_w4a8, reference_w8a8

from helpers import DEVICE, HAS_CUDA, KERNEL_DTYPES, gpu_only

HAS_FP8_MMA = HAS_CUDA and torch.cuda.get_device_capability() >= (8, 9)
fp8_dev = pytest.mark.skipif(HAS_CUDA and not HAS_FP8_MMA, reason="fp8 tensor cores need sm_89+")
UNPACKS = [pytest.param(UNPACK_MAGIC.value, id="magic"),  # pure Triton: interpreter and GPU
           pytest.param(UNPACK_PRMT.value, id="prmt", marks=gpu_only)]  # inline PTX: GPU only
CONFIGS = [  # (M, config): swap-AB and plain tiles, split-K, M across tile edges
    pytest.param(1, ScaledMMConfig(16, 32, 32, 3, 8, 4, 2, True), id="m1-swap-split3"),
    pytest.param(17, ScaledMMConfig(16, 64, 64, 1, 8, 4, 2, True), id="m17-swap"),
    pytest.param(33, ScaledMMConfig(32, 32, 128, 2, 2, 4, 2, False), id="m33-split2"),
]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rel(y, ref):
    return ((y.double() - ref.double()).norm() / ref.double().norm()).item()


def _ref_y(xd, wd, bias=None):
    y = xd.double() @ wd.double().t()
    return y if bias is None else y + bias.double()


# ---- formats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,block", [("fp8", None), ("int8", None), ("fp8", 128), ("int8", 64)])
def test_quantize_rows_bounds(kind, block):
    t = torch.randn(5, 300, generator=_gen(0)) * 3
    t[1] = 0
    q, s = quantize_rows(t, kind, block)
    assert q.shape == t.shape and s.shape == ((5,) if block is None else (5, math.ceil(300 / block)))
    assert torch.all(q[1].float() == 0) and torch.isfinite(s).all() and (s > 0).all()
    err = (dequantize_rows(q, s, block) - t).abs()
    sfull = s[:, None] if block is None else s.repeat_interleave(block, 1)[:, :300]
    # int8: |err| <= s/2; e4m3: 3 mantissa bits -> relative 2^-4 (+ subnormal spacing 2^-9 of s)
    bound = sfull / 2 if kind == "int8" else t.abs() * 2.0**-4 + sfull * 2.0**-10
    assert torch.all(err <= bound * (1 + 1e-6))


def test_quantize_rows_nonfinite_propagates():
    t = torch.randn(3, 64, generator=_gen(1))
    t[0, 3], t[2, 5] = float("nan"), float("inf")
    for kind in ("fp8", "int8"):
        _, s = quantize_rows(t, kind)
        assert torch.isnan(s[0]) and torch.isinf(s[2]) and torch.isfinite(s[1])


@pytest.mark.parametrize("granularity", ["row", "block"])
def test_fp8_format(granularity):
    w = torch.randn(200, 300, generator=_gen(2)) * 0.05
    qw = Fp8Format(granularity).quantize(w)
    assert qw.qweight.dtype == torch.float8_e4m3fn and qw.scales.shape == qw.scale_shape
    assert qw.scale_shape == ((200,) if granularity == "row" else (2, 3))
    assert _rel(qw.dequantize(), w) < 0.04  # e4m3: ~2^-4 relative per element, ~0.03 rms
    assert lowbit.get_format("fp8", granularity=granularity).quantize(w).scales.shape == qw.scales.shape
    with pytest.raises(FormatError):
        Fp8Format("column")
    with pytest.raises(FormatError):
        Fp8Format().quantize(torch.full((4, 4), float("nan")))


def test_int8_format_and_smoothquant():
    g = _gen(3)
    w = torch.randn(64, 96, generator=g) * 0.05
    x = torch.randn(32, 96, generator=g)
    x[:, 5] *= 50  # an outlier channel
    plain = Int8Format().quantize(w)
    assert plain.inv_smooth is None and plain.qweight.dtype == torch.int8
    err = (plain.dequantize() - w).abs()
    assert torch.all(err <= plain.scales[:, None] / 2 * (1 + 1e-6))
    sm = Int8Format(0.5).quantize(w, calib=x)
    amax = x.abs().amax(0)
    m = amax.sqrt() / w.abs().amax(0).sqrt()
    torch.testing.assert_close(sm.inv_smooth, 1 / m)
    torch.testing.assert_close(sm.dequantize(), w, atol=3 * sm.scales.max().item() * (1 / m).max().item(), rtol=0)
    # smoothing helps the outlier case end to end (fp32 math of the quantized operands)
    y = x @ w.t()
    e_plain = _rel(reference_w8a8(x, plain.qweight, plain.scales, None, None, 0), y)
    e_sm = _rel(reference_w8a8(x, sm.qweight, sm.scales, sm.inv_smooth, None, 0), y)
    assert e_sm < e_plain
    with pytest.raises(FormatError, match="activation statistics"):
        Int8Format(0.5).quantize(w)
    with pytest.raises(FormatError):
        Int8Format(1.5)


# ---- quantize_act kernel ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["int8", pytest.param("fp8", marks=gpu_only)])
@pytest.mark.parametrize("block", [None, 128, 32])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES + [torch.float32])
def test_quantize_act_matches_oracle(kind, block, dtype):
    """Bit-exact against the torch oracle, with an all-zero row, a NaN row and an Inf row."""
    x = (torch.randn(6, 300, generator=_gen(4)) * 4).to(dtype)
    x[1] = 0
    x[2, 7] = float("nan")
    x[3, 290] = float("inf")
    x = x.to(DEVICE)
    q, s = quantize_act(x, kind, block)
    qr, sr = quantize_rows(x, kind, block)
    assert q.dtype == qr.dtype and s.shape == sr.shape
    torch.testing.assert_close(s, sr, rtol=0, atol=0, equal_nan=True)
    finite = torch.isfinite(x).all(dim=1) if block is None else torch.ones(6, dtype=torch.bool, device=DEVICE)
    if block is not None:
        finite[2:4] = False  # rows with a non-finite block
    assert torch.equal(q[finite].view(torch.uint8), qr[finite].view(torch.uint8))
    assert torch.all(q[1].float() == 0)


@pytest.mark.parametrize("kind", ["int8", pytest.param("fp8", marks=[gpu_only, fp8_dev])])
@pytest.mark.parametrize("block,k", [(None, 300), (None, 33000), (64, 300)])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_quantize_act_dequant(kind, block, k, dtype):
    """dequant=True stores q * s rounded once to x's dtype: bit-exact against the oracle's codes and scales
    (one pass, two passes, blocks; a NaN row stays NaN)."""
    x = (torch.randn(4, k, generator=_gen(8)) * 3).to(dtype)
    x[1, 5] = float("nan")
    x = x.to(DEVICE)
    xd, s = quantize_act(x, kind, block, dequant=True)
    qr, sr = quantize_rows(x, kind, block)
    assert xd.dtype == dtype and torch.equal(s[[0, 2, 3]], sr[[0, 2, 3]])
    ref = dequantize_rows(qr, sr, block).to(dtype)
    assert torch.equal(xd[[0, 2, 3]], ref[[0, 2, 3]]) and torch.isnan(xd[1]).any()


@pytest.mark.parametrize("k", [4096, 33000])
def test_quantize_act_one_and_two_passes(k):
    """Rows up to 32768 values are read once (registers), longer ones in two passes: both bit-exact."""
    x = (torch.randn(3, k, generator=_gen(7)) * 3).to(DEVICE, torch.float16)
    x[1, k - 1] = 1000.0  # the row's amax sits in the last chunk
    q, s = quantize_act(x, "int8", None)
    qr, sr = quantize_rows(x, "int8")
    assert torch.equal(q, qr) and torch.equal(s, sr)


def test_quantize_act_smooth_int8():
    x = torch.randn(3, 100, generator=_gen(5)).to(DEVICE, torch.float16)
    inv = (torch.rand(100, generator=_gen(6)) + 0.5).to(DEVICE)
    q, s = quantize_act(x, "int8", None, inv)
    qr, sr = quantize_rows(x.float() * inv, "int8")
    assert torch.equal(q, qr) and torch.equal(s, sr)


# ---- scaled_mm kernels ------------------------------------------------------------------------------

def _check_gemm(y, ref, k, dtype):
    """Exact operands: only fp32 summation order and the output cast differ."""
    assert _rel(y, ref) <= 2 * torch.finfo(dtype).eps


def _run_rowwise(kind, m, n, k, config, dtype, seed, outlier_row=None):
    """quantize_rows operands -> scaled_mm -> checked against the fp32 oracle (2 eps of the output dtype);
    int8: the int32 accumulation is exact, y / (sx sw) recovers the integer dot products."""
    x = torch.randn(m, k, generator=_gen(seed)) * 2
    if outlier_row is not None:
        x[outlier_row] *= 50  # one token with a much larger scale: a wrong row scale is visible
    w = torch.randn(n, k, generator=_gen(seed + 100)) * 0.05
    bias = torch.randn(n, generator=_gen(seed + 200)).to(dtype)
    xq, sx = quantize_rows(x, kind)
    wq, sw = quantize_rows(w, kind)
    y = scaled_mm(xq.to(DEVICE), sx.to(DEVICE), wq.to(DEVICE), sw.to(DEVICE), bias.to(DEVICE), dtype, None, config)
    assert y.dtype == dtype and y.shape == (m, n)
    ref = _ref_y(dequantize_rows(xq, sx), dequantize_rows(wq, sw), bias.float())
    _check_gemm(y.cpu(), ref, k, dtype)
    if kind == "int8":
        exact = xq.double() @ wq.double().t()
        y32 = (y.cpu().double() - bias.double()) / (sx.double()[:, None] * sw.double()[None, :])
        assert (y32 - exact).abs().max() <= exact.abs().max() * 2 * torch.finfo(dtype).eps + 1


@fp8_dev
@pytest.mark.parametrize("m,config", CONFIGS)
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_rowwise(kind, m, config, dtype):
    _run_rowwise(kind, m, 72, 300, config, dtype, seed=m)


TMA_CONFIGS = [  # small tiles for the interpreter: several tiles per program, ragged M / N / K tails
    pytest.param(65, TmaConfig(64, 32, 32, 2, 4, 2), id="m65-64x32x32"),
    pytest.param(200, TmaConfig(32, 64, 64, 3, 4, 3), id="m200-32x64x64"),
    pytest.param(33, TmaConfig(16, 32, 128, 1, 4, 2), id="m33-forced"),
]


@fp8_dev
@pytest.mark.parametrize("m,config", TMA_CONFIGS + [pytest.param(300, None, id="m300-heuristic", marks=gpu_only)]
                         + [pytest.param(260, c, id=f"m260-{i}", marks=gpu_only) for i, c in enumerate(TMA_CANDIDATES)])
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_tma_rowwise(kind, m, config, dtype):
    """The persistent TMA kernel: same oracle as the pointer kernel, int32 accumulation exact."""
    _run_rowwise(kind, m, 200, 304, config, dtype, seed=m, outlier_row=m // 2)


@gpu_only
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.get_device_capability()[0] != 9, reason="Gluon wgmma kernel: sm_90")
@pytest.mark.parametrize("config", [None] + list(WGMMA_CANDIDATES), ids=lambda c: "default" if c is None else
                         f"{c.block_m}x{c.block_n}x{c.block_k}s{c.stages}")
@pytest.mark.parametrize("kind", ["fp8", "int8"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_wgmma_rowwise(kind, config, dtype):
    """The Gluon kernel: ragged M / N (partial tiles), several tiles per program, int32 exactness."""
    _run_rowwise(kind, 300, 200, 640, config or WgmmaConfig(), dtype, seed=14, outlier_row=7)


@pytest.mark.parametrize("m,config", [
    pytest.param(1, ScaledMMConfig(16, 32, 64, 3, 8, 4, 2, True), id="m1-swap-split3"),
    pytest.param(3, ScaledMMConfig(16, 64, 128, 1, 8, 4, 2, True), id="m3-swap"),
    pytest.param(3, None, id="m3-heuristic"),
])
@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_fused_quant_matches_two_launches(kind, m, config, dtype):
    """Quantizing x in the GEMM prologue gives the operands of quantize_act + scaled_mm exactly, so the
    same tile config returns the same bits; plus the fp32 reference where the cast is trusted."""
    n, k = 72, 2500  # K > QUANT_CHUNK: the amax pass takes several steps; ragged K tail
    x = (torch.randn(m, k, generator=_gen(17)) * 3).to(dtype)
    x[0, k - 3] = 40.0  # the amax in the last chunk
    w = torch.randn(n, k, generator=_gen(18)) * 0.05
    bias = torch.randn(n, generator=_gen(19)).to(dtype)
    wq, sw = quantize_rows(w, kind)
    xd, wq, sw, bias = x.to(DEVICE), wq.to(DEVICE), sw.to(DEVICE), bias.to(DEVICE)
    y = scaled_mm_fused_quant(xd, kind, wq, sw, bias, dtype, config)
    xq, sx = quantize_act(xd, kind)
    y2 = scaled_mm(xq, sx, wq, sw, bias, dtype, None, config)
    assert torch.equal(y, y2)
    if kind == "int8" or HAS_CUDA:  # the interpreter's fp32 -> fp8 cast is off at exponent carries
        xr, sxr = quantize_rows(x, kind)
        ref = _ref_y(dequantize_rows(xr, sxr), dequantize_rows(wq.cpu(), sw.cpu()), bias.cpu().float())
        _check_gemm(y.cpu(), ref, k, dtype)


def test_scaled_mm_w4a8_fused_quant():
    m, n, k = 2, 96, 512
    x = torch.randn(m, k, generator=_gen(20)).to(torch.float16)
    qw = IntxFormat(4, 128, False, "int", torch.float16).quantize(torch.randn(n, k, generator=_gen(21)) * 0.05)
    qw = qw.to(DEVICE)
    cfg = ScaledMMConfig(16, 32, 64, 2, 8, 4, 2, True)
    y = scaled_mm_intx(x.to(DEVICE), None, qw.qweight, qw.scales, qw.zeros, None, 4, 128, 8, n, torch.float16,
                       cfg, UNPACK_MAGIC.value, x_kind="fp8")
    xq, sx = quantize_act(x.to(DEVICE), "fp8")
    y2 = scaled_mm_intx(xq, sx, qw.qweight, qw.scales, qw.zeros, None, 4, 128, 8, n, torch.float16, cfg,
                        UNPACK_MAGIC.value)
    assert torch.equal(y, y2)


@pytest.mark.parametrize("kind", ["int8", pytest.param("fp8", marks=[gpu_only, fp8_dev])])
def test_linear_ops_fused_quant_env(kind, monkeypatch):
    """LOWBIT_FUSED_QUANT_MAX_M routes small-M op calls through the fused prologue: same result as the
    two-launch default (W8A8 and W4A8)."""
    dtype = torch.float16
    _, qw, block = _weights(kind)
    qw = qw.to(DEVICE)
    x = torch.randn(3, 300, generator=_gen(22)).to(DEVICE, dtype)
    b = torch.randn(72, generator=_gen(23)).to(DEVICE, dtype)
    y2 = ops.linear_w8a8(x, qw.qweight, qw.scales, None, b, block)
    monkeypatch.setenv("LOWBIT_FUSED_QUANT_MAX_M", "4")
    y = ops.linear_w8a8(x, qw.qweight, qw.scales, None, b, block)
    if HAS_CUDA or kind == "int8":
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
    if kind == "fp8" or not HAS_CUDA:
        w4 = IntxFormat(4, 64, False, "int", dtype).quantize(torch.randn(72, 300, generator=_gen(24)) * 0.05).to(DEVICE)
        args = (w4.qweight, w4.scales, w4.zeros, b, 4, 64, 300)
        yf = ops.linear_w4a8_fp8(x, *args)
        monkeypatch.setenv("LOWBIT_FUSED_QUANT_MAX_M", "0")
        torch.testing.assert_close(yf, ops.linear_w4a8_fp8(x, *args), rtol=0, atol=0)


def test_wgmma_instr_n():
    assert instr_n(256, True) == 128 and instr_n(128, True) == 128 and instr_n(256, False) == 256
    assert instr_n(64, True) == 64


@settings(max_examples=12, deadline=None)
@given(m=st.integers(65, 300), n=st.integers(1, 300), k16=st.integers(1, 40),
       tile=st.sampled_from([(64, 32, 32), (32, 64, 64), (64, 64, 128)]), stages=st.integers(2, 4))
def test_scaled_mm_tma_random_shapes(m, n, k16, tile, stages):
    """The persistent TMA kernel on random int8 shapes (K % 16 == 0, ragged against every tile edge):
    the int32 dot products are exact, so y / (sx sw) - bias must recover them."""
    _run_rowwise("int8", m, n, 16 * k16, TmaConfig(*tile, 2, 4, stages), torch.float16, seed=m + n + k16)


def test_tma_applies_and_heuristic():
    xq = torch.zeros(128, 256, dtype=torch.int8)
    wq = torch.zeros(64, 256, dtype=torch.int8)
    assert tma_applies(128, 256, xq, wq, None)
    assert not tma_applies(64, 256, xq[:64], wq, None)  # small M: the swap-AB pointer kernel
    assert not tma_applies(128, 256, xq, wq, 128)  # block scales: the pointer kernel
    odd = torch.zeros(128, 248 + 8, dtype=torch.int8)[:, :248]  # K % 16 != 0 and a row stride of 256
    assert not tma_applies(128, 248, odd, wq[:, :248], None)
    assert not tma_applies(128, 256, xq.t().contiguous().t(), wq, None)  # not K-contiguous
    with pytest.raises(ValueError, match="K % 16"):
        scaled_mm(odd, torch.ones(128), wq[:, :248], torch.ones(64), None, torch.float16, None, TmaConfig())
    # the wave model: big tiles when they fill the GPU, smaller ones when they would leave SMs idle
    assert heuristic_tma_config(4096, 4096, 4096, 132) == HEURISTIC_TILES[0][0]
    small = heuristic_tma_config(128, 4096, 4096, 132)
    assert small.block_m * small.block_n < 128 * 256


@fp8_dev
@pytest.mark.parametrize("m,config", CONFIGS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_block_scales(m, config, dtype):
    cfg = ScaledMMConfig(config.block_m, config.block_n, min(config.block_k, 128), config.split_k, config.group_m,
                         config.num_warps, config.num_stages, config.swap_ab)
    _run_block_scales(m, 300, cfg, dtype)


def _run_block_scales(m, k, cfg, dtype):
    """fp8 128 x 128 weight blocks x 1 x 128 activation blocks against the fp32 oracle."""
    n = 200  # 2 x 3 weight blocks, short edge blocks
    x = torch.randn(m, k, generator=_gen(10))
    x[:, 128:256] *= 30  # blocks with different scales: a wrong block index is visible
    w = torch.randn(n, k, generator=_gen(11)) * 0.05
    w[128:] *= 10
    fw = Fp8Format("block").quantize(w)
    xq, sx = quantize_rows(x, "fp8", 128)
    y = scaled_mm(xq.to(DEVICE), sx.to(DEVICE), fw.qweight.to(DEVICE), fw.scales.to(DEVICE), None, dtype, 128, cfg)
    _check_gemm(y.cpu(), _ref_y(dequantize_rows(xq, sx, 128), fw.dequantize()), k, dtype)


@fp8_dev
@pytest.mark.parametrize("m,cfg", [pytest.param(130, TmaConfig(64, 64, 64, 2, 4, 3), id="m130-64x64x64"),
                                   pytest.param(70, TmaConfig(32, 128, 128, 1, 4, 2), id="m70-32x128x128"),
                                   pytest.param(300, BLOCK_SCALE_TILES[0], id="m300-default", marks=gpu_only),
                                   pytest.param(300, BLOCK_SCALE_TILES[1], id="m300-64x128", marks=gpu_only)])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_tma_block_scales(m, cfg, dtype):
    """The persistent TMA kernel with fp8 block scales (opt-in through a TmaConfig)."""
    _run_block_scales(m, 304, cfg, dtype)


@fp8_dev
@pytest.mark.parametrize("m,config", CONFIGS)
@pytest.mark.parametrize("group_size,symmetric", [(64, False), (32, True), (128, False), (None, False), (None, True)])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("unpack", UNPACKS)
def test_scaled_mm_w4a8(m, config, group_size, symmetric, dtype, unpack):
    n, k = 72, 300
    qw = IntxFormat(4, group_size, symmetric, "int", dtype).quantize(torch.randn(n, k, generator=_gen(12)) * 0.05)
    x = torch.randn(m, k, generator=_gen(13))
    xq, sx = quantize_rows(x, "fp8")
    bk = config.block_k if group_size is None else min(config.block_k, group_size)
    cfg = ScaledMMConfig(config.block_m, config.block_n, bk, config.split_k, config.group_m, config.num_warps,
                         config.num_stages, config.swap_ab)
    qw = qw.to(DEVICE)
    y = scaled_mm_intx(xq.to(DEVICE), sx.to(DEVICE), qw.qweight, qw.scales, qw.zeros, None, 4,
                       group_size or (1 << 30), 8, n, dtype, cfg, unpack=unpack)
    _check_gemm(y.cpu(), _ref_y(dequantize_rows(xq, sx), qw.dequantize().cpu()), k, dtype)


@fp8_dev
@pytest.mark.parametrize("m,cfg", [pytest.param(70, TmaConfig(64, 64, 64, 2, 4, 3), id="m70-64x64x64"),
                                   pytest.param(130, None, id="m130-default", marks=gpu_only),
                                   pytest.param(300, None, id="m300-default", marks=gpu_only)])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_scaled_mm_codes(m, cfg, symmetric, dtype):
    """Per-channel W4A8 at large M: q - z expanded to an fp8 (N, K) copy (exact), the row-wise TMA GEMM with
    s[n], per-token scales and bias in the epilogue; N tail (72), rows of very different scale, against the fp32
    product of the quantized operands."""
    n, k = 72, 320
    qw = IntxFormat(4, None, symmetric, "int", dtype).quantize(torch.randn(n, k, generator=_gen(40)) * 0.05)
    x = torch.randn(m, k, generator=_gen(41))
    x[::3] *= 30
    bias = torch.randn(n, generator=_gen(42))
    xq, sx = quantize_rows(x, "fp8")
    if not codes_mm_applies(m, k, 1 << 30, torch.device(DEVICE)):
        pytest.skip("the TMA kernel needs sm_90")
    qw = qw.to(DEVICE)
    y = scaled_mm_codes(xq.to(DEVICE), sx.to(DEVICE), qw.qweight, qw.scales, qw.zeros, bias.to(DEVICE, dtype), 4,
                        1 << 30, 8, n, dtype, cfg)
    assert y.dtype == dtype and y.shape == (m, n)
    _check_gemm(y.cpu(), _ref_y(dequantize_rows(xq, sx), qw.dequantize().cpu(), bias.to(dtype).float()), k, dtype)


def test_codes_path_is_per_channel_only():
    """Group-wise weights are not 'codes' (measured slower than dequantize + cuBLAS); per-channel ones are,
    above M = 64 with K % 16 == 0 (the TMA kernel's rule)."""
    dev = torch.device("cpu")
    assert not codes_mm_applies(200, 512, 128, dev) and not codes_mm_applies(200, 512, 32, dev)
    assert codes_mm_applies(200, 512, 1 << 30, dev) and not codes_mm_applies(64, 512, 1 << 30, dev)
    assert not codes_mm_applies(200, 500, 1 << 30, dev)


def test_codes_expansion_is_exact():
    """``dequantize_intx(codes=True)``: q - z for every code and zero point (0..15 across channels), exact in e4m3."""
    n, k = 16, 64
    q = (torch.arange(n * k) % 16).reshape(n, k)
    z = torch.arange(n, dtype=torch.uint8)[None, :]
    qw = IntxWeight(pack(q, 4), torch.ones(1, n, dtype=torch.float16), z, 4, None, k).to(DEVICE)
    wq = dequantize_intx(qw.qweight, qw.scales, qw.zeros, 4, 1 << 30, 8, k, torch.float8_e4m3fn, codes=True)
    assert wq.dtype == torch.float8_e4m3fn
    assert torch.equal(wq.float().cpu(), (q - z.t().float()).float())


@fp8_dev
def test_linear_w4a8_codes_path():
    """Above W4A8_PACKED_MAX_M the op runs 'codes' for per-channel weights (K % 16 == 0): the same products as the
    fp8 tensor-core kernel within 2 eps; group-wise weights run dequantized operands + cuBLAS."""
    dtype = torch.float16
    x = torch.randn(150, 320, generator=_gen(44)).to(DEVICE, dtype)
    for group in (None, 64):
        qw = IntxFormat(4, group, False, "int", dtype).quantize(torch.randn(72, 320, generator=_gen(43)) * 0.05)
        qw = qw.to(DEVICE)
        args = (x, qw.qweight, qw.scales, qw.zeros, None, 4, group or 0, 320)
        y = {p: ops_a8.linear_w4a8_fp8_eager(*args, path=p) for p in ("codes", "fp8mma", "dequant")}
        if group is None:
            assert _rel(y["codes"].float(), y["fp8mma"].float()) <= 2 * torch.finfo(dtype).eps
        else:
            assert torch.equal(y["codes"], y["dequant"])
        assert torch.equal(ops.linear_w4a8_fp8(*args), y["codes"])


@fp8_dev
@pytest.mark.parametrize("m,split_k", [(1, 3), (5, 1), (17, 2), (40, 1)])
@pytest.mark.parametrize("group_size,symmetric", [(64, False), (32, True), (128, False), (None, False), (None, True)])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_gemm_scaled_x(m, split_k, group_size, symmetric, dtype):
    """W4A8 at small M: fp8 X on the packed 16-bit GEMM (``gemm_wxa16(x_scale=)``), one group per K tile,
    per-token scales and bias in the epilogue, K and N tails; against the fp32 product of the quantized
    operands (rows of very different scale: a scale applied to the wrong row is visible)."""
    n, k = 72, 300
    qw = IntxFormat(4, group_size, symmetric, "int", dtype).quantize(torch.randn(n, k, generator=_gen(30)) * 0.05)
    x = torch.randn(m, k, generator=_gen(31))
    x[::2] *= 40
    xq, sx = quantize_rows(x, "fp8")
    bias = torch.randn(n, generator=_gen(32)).to(dtype)
    group_len = group_size or (1 << 30)
    qw, xqd = qw.to(DEVICE), xq.to(DEVICE)
    cfg = scaled_x_config(m, n, k, 4, group_len, qw.zeros, 8, xqd)
    assert cfg is not None and cfg.block_k <= group_len and group_len % cfg.block_k == 0
    y = gemm_wxa16(xqd, qw.qweight, qw.scales, qw.zeros, bias.to(DEVICE), 4, group_len, 8, n,
                   config=dataclasses.replace(cfg, split_k=split_k), x_scale=sx.to(DEVICE), out_dtype=dtype)
    assert y.dtype == dtype and y.shape == (m, n)
    _check_gemm(y.cpu(), _ref_y(dequantize_rows(xq, sx), qw.dequantize().cpu(), bias.float()), k, dtype)


def test_scaled_x_config_falls_back(monkeypatch):
    """No packed path for 3-bit natural words: the fp8 kernel keeps them; a table tile chosen for the folded
    scale (``scale_after=False``) is replaced by the heuristic one (the post-MMA scale must fit)."""
    x = torch.zeros(4, 256, dtype=torch.float16)
    z = torch.zeros(1, 1, dtype=torch.uint8)
    assert scaled_x_config(4, 64, 256, 3, 64, z, 4, x) is None
    cfg = scaled_x_config(4, 64, 256, 4, 32, z, 8, x)
    assert cfg is not None and cfg.block_k == 32 and not cfg.prefetch and cfg.scale_after
    folded = GemmConfig(256, 128, 64, 1, 8, 8, 3, False, False)  # a large-M table tile (folded scale)
    monkeypatch.setattr(gemm_module, "resolve_config", lambda *a: folded)
    cfg = scaled_x_config(100, 64, 256, 4, 128, z, 8, x)
    assert cfg.scale_after and (cfg.block_m, cfg.block_n) == (64, 64)  # the heuristic tile, not 256x128


@fp8_dev
@pytest.mark.parametrize("m", [1, 6, 200])
def test_linear_w4a8_paths_agree(m, monkeypatch):
    """The op's kernels compute the same products: the packed 16-bit GEMM and the fp8 tensor-core kernel
    within 2 eps of each other and of the reference; dequantized 16-bit operands + cuBLAS (two more
    roundings) within 4 eps. The dispatch picks by M (``W4A8_PACKED_MAX_M``, here set to 8)."""
    dtype = torch.float16
    qw = IntxFormat(4, 64, False, "int", dtype).quantize(torch.randn(72, 300, generator=_gen(33)) * 0.05).to(DEVICE)
    x = torch.randn(m, 300, generator=_gen(34)).to(DEVICE, dtype)
    b = torch.randn(72, generator=_gen(35)).to(DEVICE, dtype)
    args = (x, qw.qweight, qw.scales, qw.zeros, b, 4, 64, 300)
    y = {p: ops_a8.linear_w4a8_fp8_eager(*args, path=p) for p in ("packed", "fp8mma", "dequant")}
    eps = torch.finfo(dtype).eps
    assert _rel(y["packed"].float(), y["fp8mma"].float()) <= 2 * eps
    assert _rel(y["dequant"].float(), y["fp8mma"].float()) <= 4 * eps
    monkeypatch.setenv("LOWBIT_W4A8_PACKED_MAX_M", "8")
    assert torch.equal(ops.linear_w4a8_fp8(*args), y["packed" if m <= 8 else "dequant"])
    assert ops_a8.w4a8_path(8) == "packed" and ops_a8.w4a8_path(9) == "codes"  # K = 300: 'codes' falls back
    with pytest.raises(ValueError, match="path"):
        ops_a8.linear_w4a8_fp8_eager(*args, path="fast")
    if HAS_FP8_MMA:  # the interpreter's fp8 activation quantization is off (module docstring)
        ref = reference_w4a8(*args)
        assert _rel(y["packed"].float(), ref.float()) <= 2 * eps and _rel(y["fp8mma"].float(), ref.float()) <= 2 * eps


@fp8_dev
@pytest.mark.parametrize("bits,symmetric", [(2, False), (3, False), (3, True)])
def test_scaled_mm_w4a8_narrow_codes(bits, symmetric):
    """Codes of 2/3 bits (several bit planes) take the fp16-magic unpack (the prmt table is 4-bit only)."""
    n, k, dtype = 40, 200, torch.float16
    qw = IntxFormat(bits, 64, symmetric, "int", dtype).quantize(torch.randn(n, k, generator=_gen(20)) * 0.05)
    xq, sx = quantize_rows(torch.randn(5, k, generator=_gen(21)), "fp8")
    qw = qw.to(DEVICE)
    cfg = ScaledMMConfig(16, 32, 64, 1, 8, 4, 2, True)
    y = scaled_mm_intx(xq.to(DEVICE), sx.to(DEVICE), qw.qweight, qw.scales, qw.zeros, None, bits, 64,
                       int(symmetric_zero(bits)), n, dtype, cfg)
    _check_gemm(y.cpu(), _ref_y(dequantize_rows(xq, sx), qw.dequantize().cpu()), k, dtype)


def test_e4m3_table_words():
    """Host side of the prmt unpack: byte c of table z is e4m3(c - z) for every code and zero point."""
    for z in range(16):
        words = table_words(z)
        got = torch.tensor([(words[c // 4] >> (8 * (c % 4))) & 0xFF for c in range(16)], dtype=torch.uint8)
        want = (torch.arange(16) - z).float().to(torch.float8_e4m3fn)
        assert torch.equal(got.view(torch.float8_e4m3fn).float(), want.float()), z
        assert torch.equal(got, want.view(torch.uint8)), z


def _prmt(a, b, c):
    """PTX prmt.b32 (default mode): byte i of the result is byte (c >> 4i) & 7 of {b, a}; bit 3 of the
    selector nibble would replicate that byte's sign (the unpack keeps it clear)."""
    pool = a | b << 32
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        assert sel < 8, "sign-replicate selector"
        out |= ((pool >> (8 * sel)) & 0xFF) << (8 * i)
    return out


def test_prmt_sequence_emulated():
    """The instruction sequence of ``prmt_e4m3``'s asm, emulated with PTX semantics, gives e4m3(c - z) for
    every code in every nibble position and every zero point (the GPU test runs the real thing)."""
    for z in range(16):
        t0, t1, t2, t3 = table_words(z)
        for word in (0x76543210, 0xFEDCBA98, 0x8F7E6D5C, 0x193A2B4C):
            i = word & 0x77777777
            s = ((word >> 1) & 0x44444444) | 0x32103210
            lo_word = _prmt(_prmt(t0, t1, i & 0xFFFF), _prmt(t2, t3, i & 0xFFFF), s & 0xFFFF)
            hi_word = _prmt(_prmt(t0, t1, i >> 16), _prmt(t2, t3, i >> 16), s >> 16)
            got = torch.tensor([(lo_word | hi_word << 32) >> (8 * j) & 0xFF for j in range(8)], dtype=torch.uint8)
            codes = torch.tensor([(word >> (4 * j)) & 0xF for j in range(8)])
            assert torch.equal(got, e4m3_bytes(codes - z)), (z, hex(word))


@triton.jit
def _tables_probe(t_ptr, z_ptr, out_ptr, BLOCK_N: tl.constexpr):
    offs = tl.arange(0, BLOCK_N)
    t0, t1, t2, t3 = load_tables(t_ptr, tl.load(z_ptr + offs))
    tl.store(out_ptr + offs * 4, t0)
    tl.store(out_ptr + offs * 4 + 1, t1)
    tl.store(out_ptr + offs * 4 + 2, t2)
    tl.store(out_ptr + offs * 4 + 3, t3)


def test_load_tables_order():
    """``load_tables`` returns T0..T3 of each channel's zero point in order (what the asm indexes)."""
    z = (torch.arange(32, dtype=torch.int32) * 7) % 16
    out = torch.empty(32, 4, dtype=torch.int32, device=DEVICE)
    _tables_probe[(1,)](e4m3_tables(torch.device(DEVICE)), z.to(DEVICE), out, BLOCK_N=32)
    assert torch.equal(out.cpu(), torch.tensor([signed_words(int(v)) for v in z], dtype=torch.int32))


@triton.jit
def _unpack_probe(w_ptr, z_ptr, t_ptr, out_ptr, UNPACK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    words = tl.load(w_ptr + offs_n[:, None] * (BLOCK_K // 8) + tl.arange(0, BLOCK_K // 8)[None, :])
    z = tl.load(z_ptr + offs_n)
    w = intx_operand(words, words, words, z, t_ptr, 4, 0, 0, UNPACK, BLOCK_N, BLOCK_K, tl.float8e4nv)
    tl.store(out_ptr + offs_n[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :], w.to(tl.uint8, bitcast=True))


@fp8_dev
@pytest.mark.parametrize("unpack", UNPACKS)
def test_unpack_all_codes_exact(unpack):
    """Every 4-bit code under every zero point (row n has zero n % 16) -> the exact e4m3 byte of c - z,
    with the codes in every nibble position of the word (k = 8r + j is nibble j of word r)."""
    bn, bk = 32, 64
    codes = (torch.arange(bn)[:, None] * 3 + torch.arange(bk)[None, :] * 5) % 16  # each row: all 16 codes
    nib = codes.reshape(bn, bk // 8, 8).to(torch.int64)
    words = (nib << (4 * torch.arange(8))).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    z = torch.arange(bn, dtype=torch.int32) % 16
    out = torch.empty(bn, bk, dtype=torch.uint8, device=DEVICE)
    _unpack_probe[(1,)](words.to(DEVICE), z.to(DEVICE), e4m3_tables(torch.device(DEVICE)), out, UNPACK=unpack,
                        BLOCK_N=bn, BLOCK_K=bk)
    want = (codes - z[:, None]).float().to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(out.cpu(), want)


# ---- ops, dispatch, modules, configs ----------------------------------------------------------------

def _weights(kind, n=72, k=300, seed=14):
    w = torch.randn(n, k, generator=_gen(seed)) * 0.05
    if kind == "fp8":
        return w, Fp8Format("row").quantize(w), 0
    if kind == "fp8-block":
        return w, Fp8Format("block").quantize(w), 128
    return w, Int8Format().quantize(w), 0


@pytest.mark.parametrize("kind", ["int8", pytest.param("fp8", marks=[gpu_only, fp8_dev]),
                                  pytest.param("fp8-block", marks=[gpu_only, fp8_dev])])
@pytest.mark.parametrize("m", [1, 40])
def test_linear_w8a8_op_matches_reference(kind, m):
    """The op (act quant + GEMM) against the fp32 math of the same quantized operands, and its error vs
    the unquantized product bounded (relative Frobenius)."""
    dtype = torch.float16
    w, qw, block = _weights(kind)
    x = torch.randn(2, m, 300, generator=_gen(m)).to(DEVICE, dtype)
    b = torch.randn(72, generator=_gen(15)).to(DEVICE, dtype)
    qw = qw.to(DEVICE)
    y = ops.linear_w8a8(x, qw.qweight, qw.scales, None, b, block)
    ref = reference_w8a8(x.reshape(-1, 300), qw.qweight, qw.scales, None, b, block).reshape(2, m, 72)
    assert y.shape == (2, m, 72) and y.dtype == dtype
    assert _rel(y.float(), ref.float()) <= 2 * torch.finfo(dtype).eps
    exact = x.float().cpu() @ w.t() + b.float().cpu()
    assert _rel(y.float().cpu(), exact) < (0.01 if kind == "int8" else 0.05)


@pytest.mark.parametrize("group_size", [64, 0])
def test_linear_w4a8_op(group_size):
    """On the CPU the fp8 activation quantization runs in the interpreter (see the module docstring):
    bound the error vs the fp32 product only; on an fp8 GPU also against the reference to output rounding."""
    dtype = torch.float16
    w = torch.randn(72, 300, generator=_gen(16)) * 0.05
    qw = IntxFormat(4, group_size or None, False, "int", dtype).quantize(w).to(DEVICE)
    x = torch.randn(5, 300, generator=_gen(17)).to(DEVICE, dtype)
    y = ops.linear_w4a8_fp8(x, qw.qweight, qw.scales, qw.zeros, None, 4, group_size, 300)
    exact = x.float().cpu() @ qw.dequantize().cpu().t()
    assert _rel(y.float().cpu(), exact) < 0.06
    if HAS_FP8_MMA:
        ref = reference_w4a8(x, qw.qweight, qw.scales, qw.zeros, None, 4, group_size, 300)
        assert _rel(y.float(), ref.float()) <= 2 * torch.finfo(dtype).eps


def test_op_errors():
    w, qw, _ = _weights("int8")
    x = torch.randn(2, 300)
    with pytest.raises(InputError):
        ops.linear_w8a8(torch.randn(2, 299), qw.qweight, qw.scales, None, None, 0)
    with pytest.raises(FormatError, match="fp8 only"):
        ops.linear_w8a8(x, qw.qweight, qw.scales, None, None, 128)
    with pytest.raises(FormatError, match="scales"):
        ops.linear_w8a8(x, qw.qweight, qw.scales[:-1], None, None, 0)
    with pytest.raises(FormatError):
        ops.linear_w8a8(x, qw.qweight.float(), qw.scales, None, None, 0)
    iw = IntxFormat(8, 64).quantize(w)
    with pytest.raises(UnsupportedError, match="bits <= 4"):
        ops.linear_w4a8_fp8(x, iw.qweight, iw.scales, iw.zeros, None, 8, 64, 300)
    fw = IntxFormat(4, 64, False, "float").quantize(w)
    with pytest.raises(UnsupportedError, match="float"):
        ops.linear_w4a8_fp8(x, fw.qweight, fw.scales, fw.zeros, None, 4, 64, 300)
    b1 = IntxFormat(1, 64, True).quantize(w)  # z = 0.5: was silently run with z = 0
    with pytest.raises(UnsupportedError, match="integer zero point"):
        ops.linear_w4a8_fp8(x, b1.qweight, b1.scales, None, None, 1, 64, 300)


def test_dispatch_capability_reasons(monkeypatch):
    from lowbit import dispatch

    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    p = dispatch.A8Problem("fp8", 16, 64, 64, torch.bfloat16, "cuda", (8, 0))
    with pytest.raises(UnsupportedError, match="capability >= 8.9"):
        dispatch.select_a8(p)
    assert dispatch.select_a8(dispatch.A8Problem("int8", 16, 64, 64, torch.bfloat16, "cuda", (8, 0))) == \
        "triton_scaled_mm"
    monkeypatch.delenv("LOWBIT_BACKEND")
    assert dispatch.select_a8(p) == "reference"  # documented fallback (logged once)


def test_reference_backend_on_cpu(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    w, qw, _ = _weights("fp8")
    x = torch.randn(3, 300, generator=_gen(18)).to(DEVICE)
    y = ops.linear_w8a8(x, qw.qweight.to(DEVICE), qw.scales.to(DEVICE), None, None, 0)
    assert _rel(y.cpu(), x.cpu() @ w.t()) < 0.05


def test_opcheck_and_compile():
    _, qw, _ = _weights("int8", n=32, k=64)
    x = torch.randn(3, 64, generator=_gen(19)).to(DEVICE, torch.float16)
    args = (x, qw.qweight.to(DEVICE), qw.scales.to(DEVICE), None, None, 0)
    torch.library.opcheck(torch.ops.lowbit.linear_w8a8.default, args)
    torch.library.opcheck(torch.ops.lowbit.quantize_act.default, (x, "int8", 0, None))
    f = torch.compile(lambda t: ops.linear_w8a8(t, *args[1:]), fullgraph=True, backend="eager")
    torch.testing.assert_close(f(x), ops.linear_w8a8(*args))


@pytest.mark.parametrize("config", [
    lowbit.Int8DynamicActivationInt8WeightConfig(),
    pytest.param(lowbit.Float8DynamicActivationFloat8WeightConfig("row"), marks=fp8_dev),
    pytest.param(lowbit.Float8DynamicActivationFloat8WeightConfig("block"), marks=fp8_dev),
    pytest.param(lowbit.Int4WeightFloat8ActivationConfig(32), marks=fp8_dev),
])
def test_quantize_and_config_roundtrip(config, tmp_path):
    assert lowbit.config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.ReLU(), torch.nn.Linear(48, 32)).to(DEVICE).half()
    x = torch.randn(4, 64, device=DEVICE, dtype=torch.float16)
    dense = model(x).float()
    lowbit.quantize_(model, config)
    assert type(model[0]).__name__ in ("Float8Linear", "Int8Linear", "W4A8Linear")
    assert _rel(model(x).float().cpu(), dense.cpu()) < 0.1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    with pytest.raises(lowbit.CheckpointError, match="does not support"):
        lowbit.save_quantized(model, str(tmp_path / "ckpt"))


def test_quantize_smooth():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    x = torch.randn(16, 64)
    x[:, 3] *= 40
    with pytest.raises(FormatError, match="quantize_smooth_"):
        lowbit.quantize_(torch.nn.Sequential(torch.nn.Linear(64, 32)), lowbit.Int8DynamicActivationInt8WeightConfig(0.5))
    dense = model(x)
    lowbit.quantize_smooth_(model, lowbit.Int8DynamicActivationInt8WeightConfig(0.5), {"0": x.abs().amax(0)})
    assert model[0].inv_smooth is not None
    assert _rel(model.to(DEVICE)(x.to(DEVICE)).cpu(), dense.detach()) < 0.02
