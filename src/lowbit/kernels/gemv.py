"""gemv_wxa16: Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias) for small M (1..8), any bits 1..8.

Bandwidth-bound, no tensor cores. Each program owns BLOCK_N output channels and a slice of K
(split-K, reduced in the same launch: ``epilogue.write_output``). Because dequantization is
affine per group, a code q = sum_p plane_p << off_p gives

    sum_k x_k w_k = s * (sum_p 2**off_p * sum_k x_k plane_p[k] - z * sum_k x_k)

so each bit-plane is read once as whole int32 words ([BLOCK_N, BLOCK_K // per_word], coalesced
along N), every word is split with constant shifts, and the scale/zero are applied once per
word-row (a tile may span several groups: BLOCK_K is free of the group size).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .epilogue import split_k_tiles, write_output
from .launch import launch_intx, resolve_config
from .unpack import group_params, load_codes_nk


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 128
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    prefetch: bool = False  # hand register prefetch instead of Triton's pipeliner


@triton.jit
def _plane_tile(words, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk,
                P: tl.constexpr, OFF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(2**OFF * sum_j x[m, k0 + r*PER + j] * field_j(words[n, r]) -> fp32 [BLOCK_M, BLOCK_N, ROWS],
        sum_j x[m, k0 + r*PER + j] -> fp32 [BLOCK_M, ROWS]).

    No int->float conversion (I2F runs at 1/4 rate): a field of P bits at bit SH <= 15 of a word,
    OR-ed into the mantissa of 2**23, is exactly 2**23 + v * 2**SH; subtracting 2**23 leaves
    v * 2**SH, and 2**-SH is folded into x. Fields at bit >= 16 come from the word shifted by 16.
    """
    PER: tl.constexpr = 32 // P
    ROWS: tl.constexpr = BLOCK_K // PER
    MASK: tl.constexpr = (1 << P) - 1
    r = tl.arange(0, ROWS)
    high = (words >> 16) & 0xFFFF
    tile = tl.zeros((BLOCK_M, words.shape[0], ROWS), dtype=tl.float32)
    xsum = tl.zeros((BLOCK_M, ROWS), dtype=tl.float32)
    for j in tl.static_range(PER):
        POS = j * P
        SH = POS % 16
        if POS < 16:
            field = words & (MASK << SH)
        else:
            field = high & (MASK << SH)
        v = (field | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        kk = k0 + r * PER + j
        xj = tl.load(x_ptr + offs_m[:, None] * stride_xm + kk[None, :] * stride_xk,
                     mask=mask_m[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
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
def gemv_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                    stride_xm, stride_xk, stride_qk, stride_sg,
                    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr):
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
        part, xsum = _plane_tile(w0, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P0, 0, BLOCK_M, BLOCK_K)
        acc0 += (part - xsum[:, None, :] * z0) * s0  # the zero-point term rides on plane 0's rows
        if P1 > 0:
            s1, _ = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS,
                                SYM_ZERO, P1, BLOCK_K)
            part, _ = _plane_tile(w1, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P1, P0, BLOCK_M, BLOCK_K)
            acc1 += part * s1
        if P2 > 0:
            s2, _ = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS,
                                SYM_ZERO, P2, BLOCK_K)
            part, _ = _plane_tile(w2, x_ptr, k0, offs_m, mask_m, K, stride_xm, stride_xk, P2, P0 + P1,
                               BLOCK_M, BLOCK_K)
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
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp,
    stride_xm, stride_xk, stride_qk, stride_sg, stride_ws, stride_ym,
    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, PREFETCH: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    t0, t1 = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)
    acc = gemv_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                          stride_xm, stride_xk, stride_qk, stride_sg, GROUP_LEN, P0, P1, P2, HAS_ZEROS, SYM_ZERO,
                          BLOCK_M, BLOCK_N, BLOCK_K, NUM_STAGES, PREFETCH)
    mask = mask_m[:, None] & mask_n[None, :]
    bias = tl.zeros((1, BLOCK_N), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    y_offs = offs_m[:, None] * stride_ym + offs_n[None, :]
    write_output(acc, bias, y_ptr, y_offs, mask, ws_ptr, y_offs, stride_ws, cnt_ptr, pid_n, pid_k, SPLIT_K)


MAX_M = 8


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
    config: Optional[GemvConfig] = None,
) -> torch.Tensor:
    """x (M <= 8, K) fp16/bf16 -> (M, N). Inputs already validated by ``lowbit.ops``."""
    m, k = x.shape
    cfg = config or resolve_config("gemv", GemvConfig, heuristic_config, m, out_features, k, bits, group_len, x)
    grid = (triton.cdiv(out_features, cfg.block_n), cfg.split_k)
    return launch_intx(gemv_wxa16_kernel, grid, x, qweight, scales, zeros, bias, bits, group_len, sym_zero,
                       out_features, cfg.split_k, BLOCK_M=max(1, triton.next_power_of_2(m)),
                       BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                       NUM_STAGES=1 if cfg.prefetch else cfg.num_stages, PREFETCH=cfg.prefetch,
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages)
