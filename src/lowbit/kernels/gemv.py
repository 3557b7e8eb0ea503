"""gemv_wxa16: Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias) for small M (1..8), any bits 1..8.

Bandwidth-bound, no tensor cores. Each program owns BLOCK_N output channels and a slice of K
(split-K, reduced in the same launch: ``epilogue.write_output``). Because dequantization is
affine per group, a code q = sum_p plane_p << off_p gives

    sum_k x_k w_k = s * (sum_p 2**off_p * sum_k x_k plane_p[k] - z * sum_k x_k)

so each bit-plane is read once as whole int32 words ([BLOCK_N, BLOCK_K // per_word], coalesced
along N), every word is split with constant shifts, and the scale/zero are applied once per
word-row (a tile may span several groups: BLOCK_K is free of the group size).

At M = 1 the kernel is bound by instruction issue, not DRAM (H200: ~9 SASS instructions per weight
at BLOCK 64x128 before, ~5.5 at 128x128 now; ~3 is the floor of this formulation): per value one
LOP3 (mask + OR into a float's mantissa), one FADD, one FFMA, everything else amortised per word.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

from .epilogue import split_k_tiles, write_linear_output
from .launch import even_k, launch_intx, resolve_config
from .unpack import align_plane_rows, group_params, load_codes_nk, lut_lookup, natural_k, stored_k_extent, table_base


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 128
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch: bool = False  # hand register prefetch instead of Triton's pipeliner


@triton.jit
def _x_slice(x_ptr, kk, offs_m, mask_m, K, stride_xm, stride_xk, EVEN_K: tl.constexpr):
    """x[offs_m, kk] -> fp32 [BLOCK_M, len(kk)]; EVEN_K (K % BLOCK_K == 0): no mask on k."""
    if EVEN_K:
        mask = mask_m[:, None]
    else:
        mask = mask_m[:, None] & (kk < K)[None, :]
    return tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _plane_tile(words, magic, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk,
                P: tl.constexpr, OFF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                EVEN_K: tl.constexpr, MMA_WORDS: tl.constexpr = False):
    """(2**OFF * sum_j x[m, k0 + r*PER + j] * field_j(words[n, r]) -> fp32 [BLOCK_M, BLOCK_N, ROWS],
        sum_j x[m, k0 + r*PER + j] -> fp32 [BLOCK_M, ROWS]).

    No int->float conversion (I2F runs at 1/4 rate): a field of P bits at bit SH (SH + P <= 23),
    OR-ed into the mantissa of 2**23 (``magic`` = 0x4B000000, a runtime value so that AND and OR fuse
    into one LOP3), is exactly 2**23 + v * 2**SH; subtracting 2**23 leaves v * 2**SH, and 2**-SH
    is folded into x. Fields ending above bit 23 come from the word shifted right by 12.
    """
    PER: tl.constexpr = 32 // P
    ROWS: tl.constexpr = BLOCK_K // PER
    MASK: tl.constexpr = (1 << P) - 1
    r = tl.arange(0, ROWS)
    shifted = words >> 12
    tile = tl.zeros((BLOCK_M, words.shape[0], ROWS), dtype=tl.float32)
    xsum = tl.zeros((BLOCK_M, ROWS), dtype=tl.float32)
    for j in tl.static_range(PER):
        POS = j * P
        if POS + P <= 23:
            SH = POS
            field = (words & (MASK << SH)) | magic
        else:
            SH = POS - 12
            field = (shifted & (MASK << SH)) | magic
        v = field.to(tl.float32, bitcast=True) - 8388608.0
        xj = _x_slice(x_ptr, natural_k(k0 + r * PER + j, MMA_WORDS, P), offs_m, mask_m, K, stride_xm, stride_xk,
                      EVEN_K)
        tile += (xj * ((1 << OFF) / (1 << SH)))[:, None, :] * v[None, :, :]
        xsum += xj
    return tile, xsum


@triton.jit
def _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN: tl.constexpr,
                HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, P: tl.constexpr, BLOCK_K: tl.constexpr):
    """Scale and zero of every word-row of a plane -> fp32 [1, BLOCK_N, ROWS] (or [1, BLOCK_N, 1]
    when the whole tile lies in one group)."""
    if GROUP_LEN % BLOCK_K == 0:
        s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)
        return s[None, :, None], z[None, :, None]
    else:
        PER: tl.constexpr = 32 // P
        rows_k = k0 + tl.arange(0, BLOCK_K // PER) * PER
        s, z = group_params(s_ptr, z_ptr, (rows_k // GROUP_LEN)[None, :], offs_n[:, None],
                            mask_n[:, None] & (rows_k < Kp)[None, :], stride_sg, HAS_ZEROS, SYM_ZERO)
        return s[None, :, :], z[None, :, :]


@triton.jit
def _row_table(k0, offs_n, mask_n, Kp, stride_tg, stride_tn, GROUP_LEN: tl.constexpr, P: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Table base offset and gather mask of every word-row of plane 0 ([BLOCK_N, 1] when the tile
    lies in one group, else [BLOCK_N, ROWS]); the LUT counterpart of ``_row_params``."""
    if GROUP_LEN % BLOCK_K == 0:
        return table_base(k0 // GROUP_LEN, offs_n, stride_tg, stride_tn)[:, None], mask_n[:, None]
    else:
        PER: tl.constexpr = 32 // P
        rows_k = k0 + tl.arange(0, BLOCK_K // PER) * PER
        base = table_base((rows_k // GROUP_LEN)[None, :], offs_n[:, None], stride_tg, stride_tn)
        return base, mask_n[:, None] & (rows_k < Kp)[None, :]


@triton.jit
def _lut_tile(w0, w1, w2, t_ptr, tbase, tmask, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk,
              P0: tl.constexpr, P1: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
              MMA_WORDS: tl.constexpr = False):
    """sum_j x[m, k0 + r*PER + j] * table[tbase + q(n, r, j)] -> fp32 [BLOCK_M, BLOCK_N, ROWS], q the
    whole code (plane 0 field | plane 1 field << P0; codes of <= 4 bits have at most two planes)."""
    PER: tl.constexpr = 32 // P0
    ROWS: tl.constexpr = BLOCK_K // PER
    r = tl.arange(0, ROWS)
    if P1 > 0:
        hi = align_plane_rows(w1, P0 // P1)
    tile = tl.zeros((BLOCK_M, w0.shape[0], ROWS), dtype=tl.float32)
    for j in tl.static_range(PER):
        q = (w0 >> (j * P0)) & ((1 << P0) - 1)
        if P1 > 0:
            q |= ((hi >> (j * P1)) & ((1 << P1) - 1)) << P0
        v = lut_lookup(t_ptr, tbase, q, tmask)
        xj = _x_slice(x_ptr, natural_k(k0 + r * PER + j, MMA_WORDS, P0), offs_m, mask_m, K, stride_xm, stride_xk, False)
        tile += xj[:, None, :] * v[None, :, :]
    return tile


@triton.jit
def gemv_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                    stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn, magic,
                    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, LUT: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr, EVEN_K: tl.constexpr,
                    MMA_WORDS: tl.constexpr = False):
    """Y tile [BLOCK_M, BLOCK_N] (fp32) over the K tiles [t0, t1): rows ``offs_m`` of X (any row
    indices: the grouped kernel passes gathered token rows) times output channels ``offs_n`` of W."""
    # per-plane accumulators keep the word-row axis: the cross-thread sum over it happens once
    acc0 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K * P0 // 32), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N, max(BLOCK_K * P1 // 32, 1)), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N, max(BLOCK_K * P2 // 32, 1)), dtype=tl.float32)

    # Default: Triton's pipeliner streams the words through shared memory with cp.async, NUM_STAGES
    # deep (tuned): more bytes in flight and half the registers of a register prefetch.
    # PREFETCH (older variant, still best for W8 at M=1): load the next tile's words into registers
    # by hand before unpacking this one, no pipeliner (NUM_STAGES = 1).
    if PREFETCH:
        w0, w1, w2 = load_codes_nk(qw_ptr, t0 * BLOCK_K, offs_n, mask_n, stride_qk, Kp,
                                   tl.where(t0 < t1, Kp, 0), P0, P1, P2, BLOCK_K)
    for t in tl.range(t0, t1, num_stages=NUM_STAGES):
        k0 = t * BLOCK_K
        if PREFETCH:
            n0, n1, n2 = load_codes_nk(qw_ptr, k0 + BLOCK_K, offs_n, mask_n, stride_qk, Kp,
                                       tl.where(t + 1 < t1, Kp, 0), P0, P1, P2, BLOCK_K)
        else:
            w0, w1, w2 = load_codes_nk(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, Kp, P0, P1, P2, BLOCK_K)
        s0, z0 = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS, SYM_ZERO,
                             P0, BLOCK_K)
        if LUT:  # whole codes through the table: no per-plane linearity
            tb, tm = _row_table(k0, offs_n, mask_n, Kp, stride_tg, stride_tn, GROUP_LEN, P0, BLOCK_K)
            part = _lut_tile(w0, w1, w2, t_ptr, tb, tm, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk,
                             P0, P1, BLOCK_M, BLOCK_K, MMA_WORDS)
            acc0 += part * s0
        else:
            part, xsum = _plane_tile(w0, magic, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P0, 0,
                                     BLOCK_M, BLOCK_K, EVEN_K, MMA_WORDS)
            acc0 += (part - xsum[:, None, :] * z0) * s0  # the zero-point term rides on plane 0's rows
        if P1 > 0 and not LUT:
            s1, _ = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS,
                                SYM_ZERO, P1, BLOCK_K)
            part, _ = _plane_tile(w1, magic, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P1, P0,
                                  BLOCK_M, BLOCK_K, EVEN_K, MMA_WORDS)
            acc1 += part * s1
        if P2 > 0 and not LUT:
            s2, _ = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS,
                                SYM_ZERO, P2, BLOCK_K)
            part, _ = _plane_tile(w2, magic, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P2, P0 + P1,
                                  BLOCK_M, BLOCK_K, EVEN_K, MMA_WORDS)
            acc2 += part * s2
        if PREFETCH:
            w0, w1, w2 = n0, n1, n2

    acc = tl.sum(acc0, axis=2)
    if P1 > 0:
        acc += tl.sum(acc1, axis=2)
    if P2 > 0:
        acc += tl.sum(acc2, axis=2)
    return acc


@triton.jit
def gemv_wxa16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp,
    stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn, stride_ws, stride_ym, magic,
    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, LUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr, EVEN_K: tl.constexpr, MMA_WORDS: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    t0, t1 = split_k_tiles(stored_k_extent(K, MMA_WORDS, P0), pid_k, BLOCK_K, SPLIT_K)
    acc = gemv_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                          stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn, magic,
                          GROUP_LEN, P0, P1, P2, HAS_ZEROS, SYM_ZERO, LUT,
                          BLOCK_M, BLOCK_N, BLOCK_K, NUM_STAGES, PREFETCH, EVEN_K, MMA_WORDS)
    write_linear_output(acc, b_ptr, y_ptr, offs_m, mask_m, offs_n, mask_n, stride_ym, ws_ptr, stride_ws, cnt_ptr,
                        pid_n, pid_k, HAS_BIAS, SPLIT_K, False)


MAX_M = 8
FLOAT_2_23_BITS = 0x4B000000  # 2.0**23 as fp32 bits; passed at run time so AND + OR fuse into one LOP3


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap dividing n (n a multiple of 32)."""
    b = cap
    while n % b:
        b //= 2
    return b


def heuristic_config(m: int, n: int, k: int, group_len: int, num_sms: int = 132) -> GemvConfig:
    block_n = 128 if n >= 2048 else 64
    block_k = _pow2_divisor(group_len, 128)
    n_blocks = triton.cdiv(n, block_n)
    k_tiles = triton.cdiv(k, block_k)
    split = max(1, min(k_tiles, (4 * num_sms) // n_blocks))
    return GemvConfig(block_n, block_k, split, 4, 2)


def gemv_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_len: int, sym_zero: float, out_features: int,
    config: Optional[GemvConfig] = None, table: Optional[torch.Tensor] = None, k_order: int = 0,
) -> torch.Tensor:
    """x (M <= 8, K) fp16/bf16 -> (M, N). Inputs already validated by ``lowbit.ops``; ``table``
    (``lowbit.formats.lut``) switches to lookup-table dequantization (``zeros`` must be None)."""
    m, k = x.shape
    cfg = config or resolve_config("gemv", GemvConfig, heuristic_config, m, out_features, k, bits, group_len, x)
    grid = (triton.cdiv(out_features, cfg.block_n), cfg.split_k)
    if table is not None and not cfg.prefetch:
        # LUT: Triton's pipeliner would turn every table gather into a 4-byte cp.async + an LDS
        # (compile_check SASS: LDGSTS per element); the register-prefetch loop keeps them plain L1 LDGs.
        cfg = replace(cfg, prefetch=True)
    return launch_intx(gemv_wxa16_kernel, grid, x, qweight, scales, zeros, bias, bits, group_len, sym_zero,
                       out_features, cfg.split_k, BLOCK_M=max(1, triton.next_power_of_2(m)),
                       BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                       NUM_STAGES=1 if cfg.prefetch else cfg.num_stages, PREFETCH=cfg.prefetch,
                       EVEN_K=even_k(k, cfg.block_k, bits, k_order), magic=FLOAT_2_23_BITS, MMA_WORDS=bool(k_order),
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages, table=table)
