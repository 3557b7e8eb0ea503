"""grouped_wxa16: every expert's Y = X_e @ dequant(W_e)^T in one launch, tokens grouped by expert.

Weights: ``lowbit.formats.intx_experts`` (qweight (E, Kp*bits/32, N), scales/zeros (E, G, N)).
Rows: expert e owns the sorted rows [offsets[e], offsets[e+1]) (``offsets`` (E+1,) on the device,
never read on the host). Optionally a sorted row p stands for the pair ``ids[p]`` of a (T, topk)
routing (token ``ids[p] // TOPK``): X may be read at that token row (GATHER), Y written at row
``ids[p]`` (SCATTER), and a routing weight ``rw[ids[p]]`` scales the row in the epilogue.

Grid, sized on the host for the worst case without knowing the per-expert counts: axis 0 covers
``max_tiles(rows, E, BLOCK_M) * cdiv(N, BLOCK_N)`` programs (sum_e ceil(c_e / BLOCK_M) is at most
(rows + E*(BLOCK_M-1)) // BLOCK_M, and at most rows), axis 1 the split-K slices. Each program
finds its (expert, first row) from the offsets in registers (a cumulative sum over the E tile
counts) and exits at once when its tile index is past the real tile count, so the launch is
CUDA-graph safe for a fixed maximum row count. The K loop is the dense kernels' own:
``gemm.gemm_accumulate`` (tensor cores, swap-AB, MMA=True) or ``gemv.gemv_accumulate``
(CUDA cores, bit-plane sums, for 1..8 rows per expert: decode).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .dequant import dequantize_intx, int_zero
from .epilogue import grouped_tile_ids, split_k_tiles, write_output
from .gemm import (
    GemmConfig, folded_scale_ok, gemm_accumulate, k_unroll_ok, packed_applies, packed_tile_meta, scale_after_applies,
)
from .gemv import FLOAT_2_23_BITS, gemv_accumulate
from .launch import MAX_SPLIT_K_TILES, even_k, output_buffers
from .unpack import fragment_channels, plane_constexprs, stored_k_extent


@dataclass(frozen=True)
class GroupedConfig:
    mma: bool = True  # tensor-core K loop (False: the GEMV loop, BLOCK_M in 1..8)
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    # packed path: scale each K tile's product by its group scale (exact 16-bit operands, a second
    # accumulator) instead of folding it into the weights (``gemm.GemmConfig.scale_after``)
    scale_after: bool = True
    # packed path: K tiles per loop iteration (``gemm.GemmConfig.k_unroll``; 1 where ``k_unroll_ok`` fails)
    k_unroll: int = 1


def max_tiles(rows: int, experts: int, block_m: int) -> int:
    """Upper bound of sum_e ceil(c_e / block_m) over any split of ``rows`` rows into ``experts``."""
    return max(1, min(rows, (rows + experts * (block_m - 1)) // block_m))


@triton.jit
def expert_tile(off_ptr, tile, E, E_POW2: tl.constexpr, BLOCK_M: tl.constexpr):
    """(real tile count, expert, first row, end row) of grouped tile ``tile``; experts in order,
    each cut into ceil(rows_e / BLOCK_M) tiles; empty experts own none."""
    e = tl.arange(0, E_POW2)
    lo = tl.load(off_ptr + e, mask=e < E, other=0)
    hi = tl.load(off_ptr + e + 1, mask=e < E, other=0)
    tiles = (tl.maximum(hi - lo, 0) + BLOCK_M - 1) // BLOCK_M
    ends = tl.cumsum(tiles, 0)
    expert = tl.sum((ends <= tile).to(tl.int32))
    mine = e == expert
    row0 = tl.sum(tl.where(mine, lo + (tile - (ends - tiles)) * BLOCK_M, 0))
    row_end = tl.sum(tl.where(mine, hi, 0))
    return tl.sum(tiles), expert, row0, row_end


@triton.jit
def grouped_wxa16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, off_ptr, ids_ptr, rw_ptr,
    N, K, Kp, E,
    stride_xm, stride_xk, stride_qe, stride_qk, stride_se, stride_sg, stride_be, stride_ws, stride_ym, magic,
    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, INT_ZERO: tl.constexpr,
    HAS_IDS: tl.constexpr, TOPK: tl.constexpr, GATHER: tl.constexpr, SCATTER: tl.constexpr,
    HAS_ROW_WEIGHTS: tl.constexpr,
    E_POW2: tl.constexpr, NUM_TILES: tl.constexpr, MMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, NUM_STAGES: tl.constexpr, EVEN_K: tl.constexpr,
    PACKED: tl.constexpr = False, INLINE_ASM: tl.constexpr = False, ROW_REPS: tl.constexpr = 0,
    MMA_WORDS: tl.constexpr = False, SCALE_AFTER: tl.constexpr = False, K_UNROLL: tl.constexpr = 1,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    # GROUP_M consecutive row tiles (mostly one expert's) share the weight tiles they read (L2 reuse)
    tile, pid_n = grouped_tile_ids(pid, NUM_TILES, tl.cdiv(N, BLOCK_N), GROUP_M)
    total, expert, row0, row_end = expert_tile(off_ptr, tile, E, E_POW2, BLOCK_M)
    if tile >= total:
        return

    rows = row0 + tl.arange(0, BLOCK_M)
    mask_m = rows < row_end
    pair = rows  # row of the routing weights
    src = rows  # row of X
    dst = rows  # row of Y
    if HAS_IDS:
        pair = tl.load(ids_ptr + rows, mask=mask_m, other=0)
        if GATHER:
            src = pair // TOPK
        if SCATTER:
            dst = pair
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    ex = expert.to(tl.int64)
    qw_e = qw_ptr + ex * stride_qe
    s_e = s_ptr + ex * stride_se
    z_e = z_ptr + ex * stride_se
    t0, t1 = split_k_tiles(stored_k_extent(K, MMA_WORDS, P0), pid_k, BLOCK_K, SPLIT_K)
    # affine codes only: LUT=False, so the table pointer (s_e stands in) and its strides are never read
    if MMA:
        acc = gemm_accumulate(x_ptr, qw_e, s_e, z_e, s_e, src, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                              stride_xm, stride_xk, stride_qk, stride_sg, 0, 0, GROUP_LEN, P0, P1, P2, HAS_ZEROS,
                              SYM_ZERO, False, INT_ZERO, BLOCK_M, BLOCK_N, BLOCK_K, False, PACKED, INLINE_ASM, EVEN_K,
                              ROW_REPS, SCALE_AFTER=SCALE_AFTER, MMA_WORDS=MMA_WORDS, K_UNROLL=K_UNROLL)
        if ROW_REPS > 0:  # the packed path's accumulator rows are in MMA fragment order
            offs_n = fragment_channels(offs_n, ROW_REPS)
            mask_n = fragment_channels(mask_n, ROW_REPS)
    else:
        acc = tl.trans(gemv_accumulate(x_ptr, qw_e, s_e, z_e, s_e, src, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                                       stride_xm, stride_xk, stride_qk, stride_sg, 0, 0, magic, GROUP_LEN,
                                       P0, P1, P2, HAS_ZEROS, SYM_ZERO, False, BLOCK_M, BLOCK_N, BLOCK_K,
                                       NUM_STAGES, False, EVEN_K, MMA_WORDS))
    # acc: Y^T tile [BLOCK_N, BLOCK_M]
    bias = tl.zeros((BLOCK_N, 1), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + ex * stride_be + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    if HAS_ROW_WEIGHTS:  # w * (x W^T + b), linear in the split-K partials
        rw = tl.load(rw_ptr + pair, mask=mask_m, other=0.0).to(tl.float32)[None, :]
        acc = acc * rw
        bias = bias * rw
    y_offs = dst[None, :] * stride_ym + offs_n[:, None]
    mask = mask_n[:, None] & mask_m[None, :]
    write_output(acc, bias, y_ptr, y_offs, mask, ws_ptr, y_offs, stride_ws, cnt_ptr, pid, pid_k, SPLIT_K)


GEMV_MAX_ROWS = 4  # average rows per active expert up to which the CUDA-core loop is chosen


def expected_active(rows: int, experts: int, topk: int = 1) -> float:
    """Expected number of experts hit by ``rows`` = T * topk uniformly routed rows (a token's topk
    experts are distinct)."""
    hit = min(1.0, topk / experts)
    return experts * (1.0 - (1.0 - hit) ** (rows / topk))


def heuristic_config(rows: int, experts: int, n: int, k: int, group_len: int, num_sms: int = 132,
                     topk: int = 1, packed: bool = False) -> GroupedConfig:
    """Tiles from the expected rows per active expert (no host sync: routing is not looked at).
    packed: codes for the packed dequant (``gemm.packed_applies`` with 32-k tiles), tiles for it."""
    active = max(1.0, expected_active(rows, experts, topk))
    per_expert = round(rows / active, 3)
    block_k = 128
    while group_len % block_k:
        block_k //= 2
    packed_mma = packed and group_len % 128 == 0
    if per_expert <= GEMV_MAX_ROWS and not packed_mma:
        # room above the mean: an expert with more rows than BLOCK_M streams its weights once per tile
        bm = 1 if per_expert <= 1.05 else min(8, triton.next_power_of_2(math.ceil(1.5 * per_expert)))
        cfg = dict(mma=False, block_m=bm, block_n=64)
    else:
        bm = 16 if per_expert <= 16 else 32 if per_expert <= 32 else 64 if per_expert <= 64 else 128
        if packed_mma and bm == 128 and not folded_scale_ok(GemmConfig(block_m=128, block_k=128), group_len):
            # the 128-row packed tile folds the group scale into the weights (below); with groups longer than
            # its 128-k tile that is the case ``gemm.folded_scale_ok`` keeps out of the dense GEMM (a wrong
            # result seen on the H200, cause not found): 64-row tiles with the post-MMA scale instead
            bm = 64
        cfg = dict(mma=True, block_m=bm, block_n=64)
        # sm_90 compile check (scripts/compile_check.py grouped): with the gather/scatter epilogue,
        # BLOCK_M 16 x BLOCK_K 128 x 4 warps spills a little (BLOCK_K 64 does not), 4 warps spill from
        # BLOCK_M 32 on (8 do not), and BLOCK_M 128 needs BLOCK_K 64 as well
        if bm >= 32:
            cfg.update(num_warps=8)
        # packed 4-bit: 16-row MMA tiles also for a few rows per expert (the dense path's M = 1..8 winner,
        # H200: the CUDA-core loop ran Mixtral T = 8 at 2x the time of a loop of dense W4A16 calls)
        if packed_mma and bm == 128:
            # sm_90 compile check (gather + scatter + row weights, mma word order): 128x64x128 x 4 warps
            # 195 registers, no spills (8 warps split the rows and dequantize every weight twice); the
            # folded scale (one accumulator) keeps it there
            cfg.update(num_warps=4, scale_after=False)
            block_k = 128
        elif packed_mma and bm <= 64:
            # packed dequant (sm_90 compile check, gather + scatter + row weights): 16x64x128 x 4 warps
            # 128 registers, 32x128x128 x 8 warps 145, 64x64x128 x 8 warps 171, no spills; with the
            # post-MMA group scale 128 / 178 / 201, no spills, 3.80 SASS per weight at 16x64x128 (folded:
            # 4.59, an HMUL2 per pair; the dense GEMM measured the post-MMA scale 3-16 % faster at M <= 64,
            # benchmarks/results/h200/folded_small/)
            block_k = 128
            if bm == 32:
                cfg.update(block_n=128)
        elif bm in (16, 128):
            block_k = min(block_k, 64)
    programs = active * triton.cdiv(per_expert, cfg["block_m"]) * triton.cdiv(n, cfg["block_n"])
    k_tiles = triton.cdiv(k, block_k)
    # split-K up to ~6 programs per SM for long K loops (>= 32 K tiles), ~3 for short ones: the H200 probe
    # (scripts/grouped_probe.py, benchmarks/results/h200/grouped_probe/: every config timed) found 6 per SM
    # 1.2-1.4x slower than 3 on Qwen1.5-MoE (11-16 K tiles) at T = 1 / 8, and 3 per SM 1.05-1.17x slower
    # than 6 on Mixtral (32 / 112 K tiles) at T = 1 / 8 / 64
    per_sm = 6 if k_tiles >= 32 else 3
    split = max(1, min(16, k_tiles, int(-(-per_sm * num_sms // programs))))
    if split > 1 and split * rows * n * 4 > (256 << 20):  # fp32 workspace stays small
        split = 1
    if packed_mma and cfg["block_m"] == 16 and k_tiles >= 32:
        # 2 K tiles per loop iteration (applied where ``gemm.k_unroll_ok``): H200 grouped_probe --unroll
        # (benchmarks/results/h200/grouped_unroll/): Mixtral w1 / w2 1.09x at T = 1, 1.03 / 1.07x at T = 8;
        # Qwen1.5-MoE's 11-16 K tiles rarely split evenly and gained nothing
        cfg.update(k_unroll=2)
    return GroupedConfig(block_k=block_k, split_k=split, **cfg)


def grouped_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_len: int, sym_zero: float, expert_offsets: torch.Tensor,
    sorted_ids: Optional[torch.Tensor] = None, topk: int = 1, gather: bool = False, scatter: bool = False,
    row_weights: Optional[torch.Tensor] = None, config: Optional[GroupedConfig] = None, k_order: int = 0,
) -> torch.Tensor:
    """-> Y (rows, N), rows = len(sorted_ids) or x's rows. Inputs already validated by ``lowbit.ops``;
    ``k_order`` 1: expert words in the mma word order (``formats.intx.to_mma_words``)."""
    e, _, n = qweight.shape
    k = x.shape[1]
    rows = sorted_ids.numel() if sorted_ids is not None else x.shape[0]
    num_sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 132
    cfg = config or heuristic_config(rows, e, n, k, group_len, num_sms, topk,
                                     packed_applies(bits, zeros, sym_zero, None, group_len, 32, k_order)
                                     or packed_applies(bits, zeros, sym_zero, None, group_len, 128, k_order))
    tiles = max_tiles(rows, e, cfg.block_m)
    grid = (tiles * triton.cdiv(n, cfg.block_n), cfg.split_k)
    if cfg.split_k > 1 and grid[0] > MAX_SPLIT_K_TILES:
        cfg = GroupedConfig(**{**cfg.__dict__, "split_k": 1})
        grid = (grid[0], 1)
    y, ws, counters, stride_ws = output_buffers(rows, n, cfg.split_k, grid[0], x)
    offsets = expert_offsets if expert_offsets.dtype == torch.int32 else expert_offsets.to(torch.int32)
    ids = offsets if sorted_ids is None else sorted_ids
    bias = None if bias is None else bias.contiguous()
    grouped_wxa16_kernel[grid](
        x, qweight, scales, zeros if zeros is not None else scales, bias if bias is not None else scales,
        y, ws, counters, offsets, ids, row_weights if row_weights is not None else scales,
        n, k, qweight.shape[1] * 32 // bits, e,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
        bias.stride(0) if bias is not None else 0, stride_ws, y.stride(0), FLOAT_2_23_BITS,
        GROUP_LEN=group_len, **plane_constexprs(bits), HAS_ZEROS=zeros is not None, SYM_ZERO=sym_zero,
        HAS_BIAS=bias is not None, INT_ZERO=int_zero(zeros, sym_zero), HAS_IDS=sorted_ids is not None,
        TOPK=topk, GATHER=gather, SCATTER=scatter, HAS_ROW_WEIGHTS=row_weights is not None,
        E_POW2=triton.next_power_of_2(e), NUM_TILES=tiles, MMA=cfg.mma,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, GROUP_M=cfg.group_m,
        NUM_STAGES=cfg.num_stages, EVEN_K=even_k(k, cfg.block_k, bits, k_order), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **grouped_packed_meta(cfg, bits, zeros, sym_zero, group_len, x.is_cuda, k_order, k), MMA_WORDS=bool(k_order),
    )
    return y


def grouped_packed_meta(cfg: GroupedConfig, bits: int, zeros: Optional[torch.Tensor], sym_zero: float,
                        group_len: int, on_gpu: bool, k_order: int = 0, k: int = 0) -> dict:
    """The packed dequantization of the GEMM (``gemm.packed_meta``) for the tensor-core loop."""
    if not (cfg.mma and packed_applies(bits, zeros, sym_zero, None, group_len, cfg.block_k, k_order)):
        return {}
    unroll = cfg.k_unroll if k_unroll_ok(k, cfg, bits, k_order, group_len) else 1
    return {**packed_tile_meta(cfg.block_n, cfg.num_warps, on_gpu), "SCALE_AFTER": scale_after_applies(cfg, group_len),
            "K_UNROLL": unroll}


def dequant_grouped_mm(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_len: int, sym_zero: float, expert_offsets: torch.Tensor,
    sorted_ids: Optional[torch.Tensor] = None, topk: int = 1, gather: bool = False, scatter: bool = False,
    row_weights: Optional[torch.Tensor] = None, config: Optional[GroupedConfig] = None, k_order: int = 0,
) -> torch.Tensor:
    """Large rows per expert: every expert dequantized to a dense (E, N, K) bf16 buffer (the Triton
    dequant kernel) + ``torch._grouped_mm`` (cuBLAS-class grouped GEMM, device offsets, no sync).
    Same contract as ``grouped_wxa16``; needs expert_offsets[0] == 0."""
    e = qweight.shape[0]
    k = x.shape[1]
    w = dequantize_intx(qweight, scales, zeros, bits, group_len, sym_zero, k, x.dtype, None, k_order)  # (E, N, K)
    xs = x.index_select(0, (sorted_ids // topk).long()) if gather else x.contiguous()
    offs = expert_offsets[1:].to(torch.int32)
    y = torch._grouped_mm(xs, w.transpose(1, 2), offs=offs)
    if bias is not None or row_weights is not None:
        rows = torch.arange(xs.shape[0], device=x.device, dtype=torch.int32)
        expert_of_row = torch.searchsorted(offs, rows, right=True).clamp_max(e - 1)
        yf = y.float()
        if bias is not None:
            yf += bias.float()[expert_of_row]
        if row_weights is not None:
            pair = rows if sorted_ids is None else sorted_ids
            yf *= row_weights.float()[pair.long()][:, None]
        y = yf.to(x.dtype)
    if scatter:
        out = torch.empty_like(y)
        out.index_copy_(0, sorted_ids.long(), y)
        y = out
    return y


def grouped_mm_available() -> bool:
    return hasattr(torch, "_grouped_mm")
