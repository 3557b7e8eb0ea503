"""scaled_mm: 8-bit tensor-core GEMM with scales, Y = (Xq Wq^T) * sx * sw (+ bias), fp16/bf16 out.

One kernel family (constexprs, no copies) covers:

* W8A8 fp8 e4m3 (fp32 accumulate) and W8A8 int8 (exact int32 accumulate), per-token act scales
  sx (M,) and per-channel weight scales sw (N,), both applied once in the epilogue;
* fp8 block scales (DeepSeek-V3): sx (M, ceil(K/128)) per 1 x 128 act block and sw
  (ceil(N/128), ceil(K/128)) per 128 x 128 weight block; each BLOCK_K step's partial product
  (fresh fp32 accumulator) is multiplied by sx[m, kb] * sw[n // 128, kb] and added to the running
  accumulator (BLOCK_K divides 128);
* W4A8 (``P0 > 0``): intx codes (``lowbit.formats.intx`` layout) unpacked in registers with the
  shared helpers of ``kernels/unpack.py``; q - z is an integer in [-(2^bits - 1), 2^bits - 1],
  exact in e4m3 for bits <= 4 (and in int8 up to 7 bits), so the MMA sees exact integer weights.
  The group scale s[g, n] is applied per K step to the partial product (BLOCK_K divides the group;
  per-channel: in the epilogue); sx (per token) in the epilogue. So
  y[m, n] = sx[m] * sum_g s[g, n] * sum_{k in g} qx[m, k] * (q[n, k] - z[g, n]).

Memory layout: Xq (M, K) and dense Wq (N, K) are K-contiguous, so both MMA operands are K-major
(what Hopper's fp8/int8 wgmma needs). ``SWAP_AB`` computes the tile transposed,
Y^T[BLOCK_N, BLOCK_M] = W X^T, so tokens are the MMA's N side and wgmma runs at BLOCK_M = 16
(an A operand of fewer than 64 rows would not). Split-K is reduced in the same launch
(``epilogue.write_output``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..formats.act8 import AMAX_FLOOR, qmax
from .epilogue import grouped_tile_ids, split_k_tiles, write_output
from .launch import split_k_counters
from .int4_fp8 import default_unpack, e4m3_tables, intx_operand
from .quant_act import cast_8bit, row_scale
from .scaled_mm_tma import TmaConfig, scaled_mm_tma, tma_applies, tma_problem_ok
from .scaled_mm_wgmma import WgmmaConfig, scaled_mm_wgmma, wgmma_applies, wgmma_preferred
from .unpack import load_codes_nk, plane_constexprs


@dataclass(frozen=True)
class ScaledMMConfig:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 128
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    swap_ab: bool = False


@triton.jit
def _outer(vn, vm, SWAP_AB: tl.constexpr):
    """[BLOCK_N] x [BLOCK_M] -> the accumulator's orientation ([N, M] when swapped, else [M, N])."""
    if SWAP_AB:
        r = vn[:, None] * vm[None, :]
    else:
        r = vm[:, None] * vn[None, :]
    return r


@triton.jit
def _weight_tile(w_ptr, z_ptr, t_ptr, k0, offs_n, mask_n, offs_k, K, Kp, stride_wn, stride_wk, z_offs,
                 P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, HAS_ZEROS: tl.constexpr,
                 SYM_ZERO: tl.constexpr, UNPACK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 OP_TY: tl.constexpr):
    """[BLOCK_N, BLOCK_K] weight operand in OP_TY: loaded as is (P0 == 0) or intx codes -> q - z
    (``UNPACK``: int8 cast, fp16-magic or prmt-table e4m3, see ``kernels/int4_fp8.py``)."""
    if P0 == 0:
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                    mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
    else:
        w0, w1, w2 = load_codes_nk(w_ptr, k0, offs_n, mask_n, stride_wk, Kp, Kp, P0, P1, P2, BLOCK_K)
        if HAS_ZEROS:
            z = tl.load(z_ptr + z_offs, mask=mask_n, other=0).to(tl.int32)
        else:
            z = tl.full((BLOCK_N,), SYM_ZERO, tl.int32)
        w = intx_operand(w0, w1, w2, z, t_ptr, P0, P1, P2, UNPACK, BLOCK_N, BLOCK_K, OP_TY)
    return w


@triton.jit
def scaled_mm_kernel(
    x_ptr, w_ptr, sx_ptr, sw_ptr, z_ptr, t_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp,
    stride_xm, stride_wn, stride_wk, stride_sxm, stride_sxk, stride_swn, stride_swk, stride_ws, stride_ym,
    X_SCALE_K: tl.constexpr, W_SCALE_N: tl.constexpr, W_SCALE_K: tl.constexpr,
    P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    UNPACK: tl.constexpr, HAS_BIAS: tl.constexpr, ACC_INT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, SWAP_AB: tl.constexpr,
    QUANT_X: tl.constexpr = False, QMAX: tl.constexpr = 448.0, FLOOR: tl.constexpr = 1e-12,
    QUANT_CHUNK: tl.constexpr = 1024, QUANT_ROWS: tl.constexpr = 1,
):
    """Scale indexing: sx[m * stride_sxm + (k // X_SCALE_K) * stride_sxk] (X_SCALE_K == 0: per row, in
    the epilogue); sw[(n // W_SCALE_N) * stride_swn + (k // W_SCALE_K) * stride_swk] (W_SCALE_K == 0:
    per row of W, in the epilogue). Zeros (intx) share the weight scales' indexing.

    ``QUANT_X`` (row-wise only): x_ptr is the fp16/bf16/fp32 activation and the per-token quantization
    is fused into the prologue -- every program reads its first QUANT_ROWS (>= the tile's real rows, a
    power of two <= BLOCK_M) rows whole, QUANT_CHUNK values per step, for the amax; then each K tile is
    scaled and cast in registers (``quant_act.row_scale`` /
    ``cast_8bit``: bit-identical to ``quantize_act``); ACC_INT picks int8, else fp8 e4m3. sx_ptr unused."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile_ids(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    PER_K: tl.constexpr = X_SCALE_K > 0 or W_SCALE_K > 0
    ACC_TY: tl.constexpr = tl.int32 if ACC_INT else tl.float32
    if QUANT_X:  # per-token scales of this tile's rows, from its first QUANT_ROWS rows (the rest: padding)
        OP_TY: tl.constexpr = tl.int8 if ACC_INT else tl.float8e4nv
        rows_q = pid_m * BLOCK_M + tl.arange(0, QUANT_ROWS)
        amax = tl.zeros((QUANT_ROWS,), dtype=tl.float32)
        nan = tl.zeros((QUANT_ROWS,), dtype=tl.int32)
        for q0 in range(0, K, QUANT_CHUNK):
            offs_q = q0 + tl.arange(0, QUANT_CHUNK)
            xr = tl.load(x_ptr + rows_q[:, None] * stride_xm + offs_q[None, :],
                         mask=(rows_q < M)[:, None] & (offs_q < K)[None, :], other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xr), axis=1))
            nan = tl.maximum(nan, tl.max((xr != xr).to(tl.int32), axis=1))
        s_q, inv_q = row_scale(amax, nan > 0, QMAX, FLOOR)
        pick = tl.arange(0, BLOCK_M)[:, None] == tl.arange(0, QUANT_ROWS)[None, :]  # [BLOCK_M, QUANT_ROWS]
        x_scale = tl.sum(tl.where(pick, s_q[None, :], 0.0), axis=1)
        x_inv = tl.sum(tl.where(pick, inv_q[None, :], 0.0), axis=1)
    else:
        OP_TY: tl.constexpr = x_ptr.dtype.element_ty
    if SWAP_AB:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32 if PER_K else ACC_TY)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if PER_K else ACC_TY)
    sw_rows = (offs_n // W_SCALE_N) * stride_swn

    t0, t1 = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        if QUANT_X:
            x = cast_8bit(x.to(tl.float32), x_inv[:, None], QMAX, ACC_INT, OP_TY)
        wk = 0
        if W_SCALE_K > 0:
            wk = (k0 // W_SCALE_K) * stride_swk
        w = _weight_tile(w_ptr, z_ptr, t_ptr, k0, offs_n, mask_n, offs_k, K, Kp, stride_wn, stride_wk,
                         sw_rows + wk, P0, P1, P2, HAS_ZEROS, SYM_ZERO, UNPACK, BLOCK_N, BLOCK_K, OP_TY)
        if PER_K:
            if SWAP_AB:
                part = tl.dot(w, tl.trans(x), out_dtype=ACC_TY)
            else:
                part = tl.dot(x, tl.trans(w), out_dtype=ACC_TY)
            fx = tl.full((BLOCK_M,), 1.0, tl.float32)
            fw = tl.full((BLOCK_N,), 1.0, tl.float32)
            if X_SCALE_K > 0:
                fx = tl.load(sx_ptr + offs_m * stride_sxm + (k0 // X_SCALE_K) * stride_sxk, mask=mask_m, other=0.0)
            if W_SCALE_K > 0:
                fw = tl.load(sw_ptr + sw_rows + wk, mask=mask_n, other=0.0).to(tl.float32)
            acc += part.to(tl.float32) * _outer(fw, fx, SWAP_AB)
        else:
            if SWAP_AB:
                acc = tl.dot(w, tl.trans(x), acc, out_dtype=ACC_TY)
            else:
                acc = tl.dot(x, tl.trans(w), acc, out_dtype=ACC_TY)

    ex = tl.full((BLOCK_M,), 1.0, tl.float32)
    ew = tl.full((BLOCK_N,), 1.0, tl.float32)
    if QUANT_X:
        ex = x_scale
    elif X_SCALE_K == 0:
        ex = tl.load(sx_ptr + offs_m * stride_sxm, mask=mask_m, other=0.0)
    if W_SCALE_K == 0:
        ew = tl.load(sw_ptr + sw_rows, mask=mask_n, other=0.0).to(tl.float32)
    out = acc.to(tl.float32) * _outer(ew, ex, SWAP_AB)
    bn = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if HAS_BIAS:
        bn = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    bias = _outer(bn, tl.full((BLOCK_M,), 1.0, tl.float32), SWAP_AB)
    if SWAP_AB:
        y_offs = offs_m[None, :] * stride_ym + offs_n[:, None]
        mask = mask_n[:, None] & mask_m[None, :]
    else:
        y_offs = offs_m[:, None] * stride_ym + offs_n[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
    write_output(out, bias, y_ptr, y_offs, mask, ws_ptr, y_offs, stride_ws, cnt_ptr, pid, pid_k, SPLIT_K)


NUM_SMS_GUESS = 132

# Large-M (non-swapped) Hopper tiles for the GPU sweep (scripts/a8_sweep.py, scripts/gpu_w4a8.sh); all compile
# to QGMMA / IGMMA without spills on sm_90 (compile_check_a8: 128x256x128 8 warps 193 registers, 144 KiB
# shared memory at 3 stages, 192 KiB at 4). Not used on the call path until a GPU run picks one.
LARGE_M_CANDIDATES = (
    ScaledMMConfig(128, 128, 128, 1, 8, 8, 4, False),
    ScaledMMConfig(128, 128, 128, 1, 16, 8, 5, False),
    ScaledMMConfig(128, 256, 128, 1, 8, 8, 3, False),
    ScaledMMConfig(128, 256, 128, 1, 8, 8, 4, False),
    ScaledMMConfig(128, 256, 128, 1, 16, 8, 3, False),
    ScaledMMConfig(256, 128, 128, 1, 8, 8, 3, False),
    ScaledMMConfig(128, 256, 64, 1, 8, 8, 4, False),
    ScaledMMConfig(128, 128, 128, 1, 8, 4, 4, False),
)


def heuristic_config(m: int, n: int, k: int, k_step: int = 128) -> ScaledMMConfig:
    """Hand-chosen tiles per M bucket (no tuning on the call path). ``k_step``: the largest BLOCK_K
    the scales allow (the K length of a scale block / group, <= 128)."""
    bk = min(128, k_step & -k_step)  # a power of two dividing the scale block / group
    if m <= 64:  # swap-AB: tokens on the MMA's N side; weights stream, split K to fill the GPU
        bm = 16 if m <= 16 else 32 if m <= 32 else 64
        bn = 64 if m <= 16 else 128
        tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
        k_tiles = triton.cdiv(k, bk)
        split = 1
        while tiles * split * 2 <= 2 * NUM_SMS_GUESS and k_tiles // (split * 2) >= 4 and split < 16:
            split *= 2
        # M <= 16: 6 stages when the programs fit ~2 per SM (each streams longer, deeper is better: H200
        # `a8_sweep.py --small`, fp8, benchmarks/results/h200/a8_small_7fe552a/: +2.5-15 % on 6 of the 8 Llama-3
        # shapes), 4 when more programs share the SMs (8B gate_up, 448 programs: 6 stages lost 8 %)
        stages = 6 if m <= 16 and tiles * split <= 2 * NUM_SMS_GUESS else 4
        return ScaledMMConfig(bm, bn, bk, split, 8, 4 if m <= 32 else 8, stages, True)
    # 8 warps: with 4, a 64 x 128 x 128 tile spills (compile_check_a8)
    return ScaledMMConfig(64 if m <= 256 else 128, 128, bk, 1, 8, 8, 4, False)


def _launch(xq, sx, w, sw, z, bias, out_dtype, n, kp, strides_w, strides_sx, strides_sw, cfg: ScaledMMConfig,
            tables=None, **meta) -> torch.Tensor:
    m, k = xq.shape
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    y = torch.empty((m, n), device=xq.device, dtype=out_dtype)
    if cfg.split_k > 1:
        ws = torch.empty((cfg.split_k, m, n), device=xq.device, dtype=torch.float32)
        cnt, stride_ws = split_k_counters(xq.device), ws.stride(0)
        if tiles > cnt.numel():
            raise ValueError(f"split-K over {tiles} output tiles exceeds {cnt.numel()}")
    else:
        ws, cnt, stride_ws = y, y, 0
    scaled_mm_kernel[(tiles, cfg.split_k)](
        xq, w, sx, sw, z if z is not None else sw, tables if tables is not None else sw,
        bias if bias is not None else sw, y, ws, cnt,
        m, n, k, kp,
        xq.stride(0), *strides_w, *strides_sx, *strides_sw, stride_ws, y.stride(0),
        HAS_BIAS=bias is not None, ACC_INT=meta.pop("ACC_INT", xq.dtype == torch.int8),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        GROUP_M=cfg.group_m, SWAP_AB=cfg.swap_ab, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **meta,
    )
    return y


# Fused activation quantization (QUANT_X) is off by default: on the H200 (benchmarks/results/h200/a8_fused/,
# cold CUDA-graph kernel time, Llama-3 8B + 70B) it lost at every M in 1..16 (fp8 geomean x cuBLAS at M = 1:
# 1.42 fused vs 1.49 two launches; int8 1.35 vs 1.47; won only on gate_up, lost most on the long-K down
# projections): each program re-reads its rows whole for the amax (every split-K slice too), and the K loop
# casts a [BLOCK_M, BLOCK_K] activation tile per step (93 -> 174 SASS instructions per step at M = 1).
# It saves one launch, which helps eager calls; LOWBIT_FUSED_QUANT_MAX_M=N turns it on for M <= N.
FUSED_QUANT_MAX_M = 0


def _quant_x_meta(kind: str, m: int, k: int, cfg: ScaledMMConfig) -> dict:
    """Constexprs of the QUANT_X prologue for activations quantized to ``kind`` (fp8 / int8)."""
    rows = min(cfg.block_m, triton.next_power_of_2(m))
    return dict(QUANT_X=True, ACC_INT=kind == "int8", QMAX=qmax(kind), FLOOR=AMAX_FLOOR, QUANT_ROWS=rows,
                QUANT_CHUNK=max(128, min(2048 // rows, triton.next_power_of_2(k))))


def scaled_mm_fused_quant(x: torch.Tensor, kind: str, wq: torch.Tensor, sw: torch.Tensor,
                          bias: Optional[torch.Tensor], out_dtype: torch.dtype,
                          config: Optional[ScaledMMConfig] = None) -> torch.Tensor:
    """Row-wise W8A8 with the per-token quantization of x (M, K) fp16/bf16/fp32 (K contiguous) fused into
    the GEMM prologue (``QUANT_X``): same result as ``quantize_act`` then ``scaled_mm``, one launch.
    Meant for M <= ``FUSED_QUANT_MAX_M`` (each program reads its rows whole); wq fp8 e4m3 or int8 (N, K)."""
    m, k = x.shape
    n = wq.shape[0]
    cfg = config or heuristic_config(m, n, k, 128)
    return _launch(x, sw, wq, sw, None, bias, out_dtype, n, k, (wq.stride(0), wq.stride(1)), (0, 0),
                   (sw.stride(0), 0), cfg, X_SCALE_K=0, W_SCALE_N=1, W_SCALE_K=0,
                   P0=0, P1=0, P2=0, HAS_ZEROS=False, SYM_ZERO=0, UNPACK=0, **_quant_x_meta(kind, m, k, cfg))


def _sx_strides(sx: torch.Tensor):
    return (sx.stride(0), sx.stride(1) if sx.dim() == 2 else 0)


def scaled_mm(xq: torch.Tensor, sx: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor, bias: Optional[torch.Tensor],
              out_dtype: torch.dtype, block: Optional[int] = None,
              config: Optional[ScaledMMConfig | TmaConfig | WgmmaConfig] = None) -> torch.Tensor:
    """W8A8: xq (M, K) and wq (N, K) both fp8 e4m3 or both int8. ``block`` None: sx (M,), sw (N,);
    ``block`` B (fp8): sx (M, ceil(K/B)), sw (ceil(N/B), ceil(K/B)). Validated by ``lowbit.ops``.
    Row-wise problems with M > 64 go, for int8 on sm_90 where ``wgmma_preferred``, to the Gluon kernel with
    explicitly pipelined wgmma (``kernels/scaled_mm_wgmma.py``), otherwise to the persistent TMA kernel
    (``kernels/scaled_mm_tma.py``) when ``tma_applies``; a ``WgmmaConfig`` / ``TmaConfig`` forces one."""
    m, k = xq.shape
    n = wq.shape[0]
    if isinstance(config, WgmmaConfig):  # forced: any M, but the kernel's other requirements hold
        if not wgmma_applies(max(m, 65), k, xq, wq, block, config):
            raise ValueError("the Gluon wgmma kernel needs an sm_90 GPU, row-wise scales, K % 16 == 0 with at "
                             "least STAGES - 1 K tiles and K-contiguous 16-byte aligned operands")
        return scaled_mm_wgmma(xq, sx, wq, sw, bias, out_dtype, config)
    if isinstance(config, TmaConfig):
        if not tma_applies(max(m, 65), k, xq, wq, block, allow_block=True):
            raise ValueError("the TMA kernel needs K % 16 == 0, K-contiguous 16-byte aligned operands and an "
                             "sm_90+ GPU")
        return scaled_mm_tma(xq, sx, wq, sw, bias, out_dtype, config, block)
    if config is None and xq.dtype == torch.int8 and wgmma_preferred(m, k) and wgmma_applies(m, k, xq, wq, block):
        return scaled_mm_wgmma(xq, sx, wq, sw, bias, out_dtype)
    if config is None and tma_applies(m, k, xq, wq, block):
        return scaled_mm_tma(xq, sx, wq, sw, bias, out_dtype)
    cfg = config or heuristic_config(m, n, k, block or 128)
    if block is not None and block % cfg.block_k:
        raise ValueError(f"BLOCK_K={cfg.block_k} must divide the scale block {block}")
    return _launch(xq, sx, wq, sw, None, bias, out_dtype, n, k, (wq.stride(0), wq.stride(1)), _sx_strides(sx),
                   (sw.stride(0), sw.stride(1) if block else 0), cfg,
                   X_SCALE_K=block or 0, W_SCALE_N=block or 1, W_SCALE_K=block or 0,
                   P0=0, P1=0, P2=0, HAS_ZEROS=False, SYM_ZERO=0, UNPACK=0)


def scaled_mm_intx(xq: torch.Tensor, sx: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                   zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int, group_len: int,
                   sym_zero: int, out_features: int, out_dtype: torch.dtype,
                   config: Optional[ScaledMMConfig] = None, unpack: Optional[int] = None,
                   x_kind: Optional[str] = None) -> torch.Tensor:
    """W4A8 (any bits <= 4 for fp8, <= 7 for int8): xq (M, K) fp8/int8 per-token, sx (M,); intx weight
    (``lowbit.formats.intx``, integer zeros or symmetric). ``group_len`` >= Kp means per-channel.
    ``unpack``: ``int4_fp8.UNPACK_*`` (None: ``default_unpack``; the prmt table needs bits == 4 and a GPU).
    ``x_kind`` 'fp8' / 'int8': xq is the unquantized activation, quantized per token in the prologue
    (``QUANT_X``; sx unused)."""
    m, k = xq.shape
    kp = qweight.shape[0] * 32 // bits
    if x_kind is not None:
        sx = scales  # unused: the prologue computes the token scales
    per_channel = group_len >= kp
    cfg = config or heuristic_config(m, out_features, k, 128 if per_channel else group_len)
    if not per_channel and group_len % cfg.block_k:
        raise ValueError(f"BLOCK_K={cfg.block_k} must divide the group size {group_len}")
    op_dtype = xq.dtype if x_kind is None else (torch.int8 if x_kind == "int8" else torch.float8_e4m3fn)
    fused = {} if x_kind is None else _quant_x_meta(x_kind, m, k, cfg)
    return _launch(xq, sx, qweight, scales, zeros, bias, out_dtype, out_features, kp, (1, qweight.stride(0)),
                   _sx_strides(sx), (scales.stride(1), scales.stride(0)), cfg, e4m3_tables(xq.device),
                   UNPACK=default_unpack(op_dtype, bits, xq.device) if unpack is None else int(unpack), **fused,
                   X_SCALE_K=0, W_SCALE_N=1, W_SCALE_K=0 if per_channel else group_len,
                   **plane_constexprs(bits), HAS_ZEROS=zeros is not None, SYM_ZERO=int(sym_zero))


def codes_mm_applies(m: int, k: int, group_len: int, device: torch.device) -> bool:
    """``scaled_mm_codes`` runs here: per-channel scales (``group_len`` >= K) and the TMA kernel's shape / device
    rule (``tma_problem_ok``: sm_90+ or the interpreter, M > 64, K % 16 == 0). Group scales are not taken: a
    fresh fp32 partial per K step scaled by s[g, n] measured 2.1x slower than the row-wise fp8 GEMM on the H200,
    in Triton and in a Gluon two-partial loop alike (docs/fp8_int8.md), behind dequantize + cuBLAS."""
    return group_len >= k and tma_problem_ok(m, k, device)


def scaled_mm_codes(xq: torch.Tensor, sx: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                    zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int, group_len: int,
                    sym_zero: int, out_features: int, out_dtype: torch.dtype,
                    config: Optional[TmaConfig] = None) -> torch.Tensor:
    """Per-channel W4A8 at large M on fp8 tensor cores without converting inside the MMA loop: the codes q - z
    (exact in e4m3 for bits <= 4 and integer zeros) are expanded once into an (N, K) fp8 copy
    (``dequantize_intx(..., codes=True)``, N * K bytes of scratch), then the row-wise W8A8 GEMM (persistent TMA
    kernel) multiplies it with xq (M, K) fp8: y = sx[m] s[n] sum_k qx[m, k] (q[n, k] - z[n]) + bias, the same
    products as the other W4A8 kernels, exact in fp32. The caller checks ``codes_mm_applies``."""
    from .dequant import dequantize_intx

    k = xq.shape[1]
    wq = dequantize_intx(qweight, scales, zeros, bits, group_len, sym_zero, k, torch.float8_e4m3fn, codes=True)
    return scaled_mm_tma(xq, sx, wq, scales.reshape(-1).float(), bias, out_dtype, config)
