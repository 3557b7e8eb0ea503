"""gemm_wxa16: Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias), W in intx (any bits 1..8).

Tensor-core tiles: each program owns a BLOCK_M x BLOCK_N tile of Y, walks K in BLOCK_K steps,
unpacks the codes of a [BLOCK_K, BLOCK_N] weight tile in registers (``unpack.code_tile``),
dequantizes (q - z) * s in fp32, casts to the activation dtype and feeds ``tl.dot`` (fp32 acc).
Optional split-K (SPLIT_K > 1) is reduced deterministically inside the same launch
(``epilogue.write_output``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .dequant import int_zero
from .epilogue import grouped_tile_ids, split_k_tiles, write_linear_output
from ..formats.intx import mma_chunk
from .launch import TensorDescriptor, launch_intx, resolve_config, tma_rows_ok
from .unpack import (
    codes_from_words_nk, dequant_packed, dequant_tile, fragment_channels, fragment_rows, group_params, load_codes_nk,
    lut4_packed, lut4_table_words, lut_dequant_tile, mma_k_order, natural_k, plane_constexprs, register_anchor,
    stored_k_extent, table_base,
)


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = False  # load the next K tile's words before using this one (more registers)
    # packed path: each group scale multiplies a K tile's fp32 product (exact 16-bit operands, a second
    # accumulator) instead of being folded into the dequantized weights (one rounding to the 16-bit
    # operand, half the accumulator registers: 128 x 256 tiles compile without spills)
    scale_after: bool = True
    # packed path: weight words and X tiles through TMA descriptors (``tma_applies``) instead of per-thread
    # cp.async pointers (no per-thread address / mask arithmetic in the K loop)
    tma: bool = False
    # packed path: K tiles per loop iteration (``k_unroll_ok``; otherwise 1)
    k_unroll: int = 1


@triton.jit
def gemm_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                    stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn,
                    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, LUT: tl.constexpr, INT_ZERO: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PREFETCH: tl.constexpr,
                    PACKED: tl.constexpr = False, INLINE_ASM: tl.constexpr = False,
                    EVEN_K: tl.constexpr = False, ROW_REPS: tl.constexpr = 0, SCALE_AFTER: tl.constexpr = False,
                    MMA_WORDS: tl.constexpr = False, OP_DTYPE: tl.constexpr = None,
                    w_desc=None, x_desc=None, tile_n0=0, tile_m0=0, TMA: tl.constexpr = False,
                    K_UNROLL: tl.constexpr = 1):
    """Y^T tile [BLOCK_N, BLOCK_M] (fp32) over the K tiles [t0, t1): rows ``offs_m`` of X (any row
    indices: the grouped kernel passes gathered token rows) times output channels ``offs_n`` of W.
    PACKED (``packed_applies``: codes of one P0-bit plane, integer zeros or a 4-bit table): the packed
    dequantization of ``unpack.dequant_packed`` / ``lut4_packed`` (PTX when INLINE_ASM).
    MMA_WORDS: words in the mma word order (``formats.intx.to_mma_words``): the packed path takes X in
    natural order (4-bit natural words: X permuted by ``mma_k_order``), the generic one gathers X rows
    through ``unpack.natural_k``.
    OP_DTYPE: the MMA operand dtype (default X's); X tiles are cast to it after the load (fp8 X, W4A8).
    TMA (packed path, the dense kernel): the words come through ``w_desc`` (block [BLOCK_K * P0 / 32, BLOCK_N]
    at word-row k0 * P0 / 32, column tile_n0) and X through ``x_desc`` (block [BLOCK_M, BLOCK_K] at row tile_m0);
    the descriptors zero-fill past the tensor edges, so no masks.
    K_UNROLL (packed path): K tiles per loop iteration ((t1 - t0) % K_UNROLL == 0, ``k_unroll_ok``): the
    loop's per-iteration work (pipeline stage bookkeeping, barriers, address increments) is shared."""
    if OP_DTYPE is None:
        CDT: tl.constexpr = x_ptr.dtype.element_ty
    else:
        CDT: tl.constexpr = OP_DTYPE
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if PACKED:
        tl.static_assert(MMA_WORDS or (P0 == 4 and P1 == 0), "the packed path reads other widths in the mma word order only")
        tw = 0  # placeholders: the table words / rows exist for lookup-table codes only
        t_rows = 0
        if LUT:  # one global table or one per channel (stride_tn 0 or 16), constant along K
            t_rows = tl.where(mask_n, offs_n * stride_tn, 0)
            tw = lut4_table_words(t_ptr, t_rows, mask_n, CDT, ROW_REPS)
            t_rows = t_rows[None, :]
            if ROW_REPS > 0:
                t_rows = fragment_rows(t_rows, ROW_REPS)
        for t in range(t0, t1, K_UNROLL):  # K_UNROLL tiles per iteration: the loop's own work amortized
            for u in tl.static_range(K_UNROLL):
                acc = packed_tile_step(acc, x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp,
                                       t + u, stride_xm, stride_xk, stride_qk, stride_sg, GROUP_LEN, P0, P1, P2,
                                       HAS_ZEROS, SYM_ZERO, LUT, BLOCK_K, INLINE_ASM, EVEN_K, ROW_REPS, SCALE_AFTER,
                                       MMA_WORDS, CDT, w_desc, x_desc, tile_n0, tile_m0, TMA, tw, t_rows)
        return acc
    tl.static_assert(PACKED or not (MMA_WORDS and P1 > 0), "several bit-planes in the mma word order take the packed path")
    # software pipelining by hand: the next tile's words are in flight while this one is used
    w0, w1, w2 = load_codes_nk(qw_ptr, t0 * BLOCK_K, offs_n, mask_n, stride_qk, Kp, tl.where(t0 < t1, Kp, 0),
                               P0, P1, P2, BLOCK_K)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        if PREFETCH:
            n0, n1, n2 = load_codes_nk(qw_ptr, k0 + BLOCK_K, offs_n, mask_n, stride_qk, Kp,
                                       tl.where(t + 1 < t1, Kp, 0), P0, P1, P2, BLOCK_K)
        else:
            w0, w1, w2 = load_codes_nk(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, Kp, P0, P1, P2, BLOCK_K)
            n0, n1, n2 = w0, w1, w2
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xk = natural_k(offs_k, MMA_WORDS, P0)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + xk[:, None] * stride_xk,
                     mask=mask_m[None, :] & (xk[:, None] < K), other=0.0)  # [BLOCK_K, BLOCK_M]
        q = codes_from_words_nk(w0, w1, w2, P0, P1, P2, BLOCK_N, BLOCK_K)
        w0, w1, w2 = n0, n1, n2
        if GROUP_LEN % BLOCK_K == 0:
            s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)
            if LUT:
                tb = table_base(k0 // GROUP_LEN, offs_n, stride_tg, stride_tn)[:, None]
                w = lut_dequant_tile(q, t_ptr, tb, s[:, None], mask_n[:, None], CDT)
            else:
                w = dequant_tile(q, s[:, None], z[:, None], INT_ZERO, CDT)
        else:
            s, z = group_params(s_ptr, z_ptr, (offs_k // GROUP_LEN)[None, :], offs_n[:, None],
                                mask_n[:, None] & (offs_k < Kp)[None, :], stride_sg, HAS_ZEROS, SYM_ZERO)
            if LUT:
                tb = table_base((offs_k // GROUP_LEN)[None, :], offs_n[:, None], stride_tg, stride_tn)
                w = lut_dequant_tile(q, t_ptr, tb, s, mask_n[:, None] & (offs_k < Kp)[None, :],
                                     CDT)
            else:
                w = dequant_tile(q, s, z, INT_ZERO, CDT)
        acc += tl.dot(w, xt.to(CDT))
    return acc


@triton.jit
def add_plane(w, qw_ptr, row0, k0, offs_n, mask_n, stride_qk, Kp, s, z, EVEN_K: tl.constexpr, ROW_REPS: tl.constexpr,
              P: tl.constexpr, SHIFT: tl.constexpr, OUT_DTYPE: tl.constexpr, INLINE_ASM: tl.constexpr,
              BLOCK_K: tl.constexpr):
    """w + 2**SHIFT * q of the P-bit plane starting at word-row ``row0`` (mma word order), for the K tile at
    k0: the plane's codes come out of ``dequant_packed`` with zero point 0 (exact small integers)."""
    VPW: tl.constexpr = 32 // P
    r = k0 // VPW + tl.arange(0, BLOCK_K // VPW)
    ptrs = qw_ptr + offs_n[None, :] + (row0 + r)[:, None] * stride_qk
    if EVEN_K:
        words = tl.load(ptrs, mask=mask_n[None, :], other=0)
    else:
        words = tl.load(ptrs, mask=mask_n[None, :] & ((r * VPW) < Kp)[:, None], other=0)
    if ROW_REPS > 0:
        words = fragment_rows(words, ROW_REPS)
    q = dequant_packed(words, s, z * 0.0, OUT_DTYPE, INLINE_ASM, False, P)
    return w + q * (1 << SHIFT)


@triton.jit
def packed_tile_step(acc, x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t,
                     stride_xm, stride_xk, stride_qk, stride_sg, GROUP_LEN: tl.constexpr, P0: tl.constexpr,
                     P1: tl.constexpr, P2: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                     LUT: tl.constexpr, BLOCK_K: tl.constexpr, INLINE_ASM: tl.constexpr, EVEN_K: tl.constexpr,
                     ROW_REPS: tl.constexpr, SCALE_AFTER: tl.constexpr, MMA_WORDS: tl.constexpr, CDT: tl.constexpr,
                     w_desc, x_desc, tile_n0, tile_m0, TMA: tl.constexpr, tw, t_rows):
    """acc [BLOCK_N, BLOCK_M] + the product of K tile ``t`` on the packed path (see ``gemm_accumulate``)."""
    BLOCK_N: tl.constexpr = acc.shape[0]
    GPT: tl.constexpr = BLOCK_K // GROUP_LEN if GROUP_LEN < BLOCK_K else 1
    VPW: tl.constexpr = 32 // P0  # codes per word
    R: tl.constexpr = BLOCK_K // VPW
    POST_SCALE: tl.constexpr = SCALE_AFTER and GPT == 1
    k0 = t * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    r = tl.arange(0, R)
    w_ptrs = qw_ptr + offs_n[None, :] + (k0 // VPW + r)[:, None] * stride_qk  # [R, BLOCK_N]
    x_ptrs = x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None] * stride_xk  # [BLOCK_K, BLOCK_M]
    if TMA:
        words = w_desc.load([k0 // VPW, tile_n0])
        xt = tl.trans(x_desc.load([tile_m0, k0]))
    elif EVEN_K:
        words = tl.load(w_ptrs, mask=mask_n[None, :], other=0)
        xt = tl.load(x_ptrs, mask=mask_m[None, :], other=0.0)
    else:  # a tile past K reads no words past Kp (only possible when GPT > 1) and zero x
        words = tl.load(w_ptrs, mask=mask_n[None, :] & ((k0 + VPW * r) < Kp)[:, None], other=0)
        xt = tl.load(x_ptrs, mask=mask_m[None, :] & (offs_k[:, None] < K), other=0.0)
    if GPT == 1:  # the tile's group: s, z [1, BLOCK_N]
        g = k0 // GROUP_LEN
        g_mask = mask_n[None, :]
    else:  # its GPT groups: s, z [GPT, BLOCK_N]
        g = k0 // GROUP_LEN + tl.arange(0, GPT)[:, None]
        g_mask = mask_n[None, :] & (g * GROUP_LEN < Kp)
    s, z = group_params(s_ptr, z_ptr, g, offs_n[None, :], g_mask, stride_sg, HAS_ZEROS, SYM_ZERO)
    if not HAS_ZEROS and not LUT:  # keeps the dequantized tile in registers (``register_anchor``)
        z = register_anchor(s_ptr, g, offs_n[None, :], g_mask, stride_sg) + SYM_ZERO
    if ROW_REPS > 0:  # contiguous loads above, then the MMA fragment's row order in registers
        words = fragment_rows(words, ROW_REPS)
        s = fragment_rows(s, ROW_REPS)
        z = fragment_rows(z, ROW_REPS)
    if GPT > 1:  # word-row r lies in group r // (GROUP_LEN // VPW) of the tile
        s = tl.reshape(tl.broadcast_to(s[:, None, :], (GPT, R // GPT, BLOCK_N)), (R, BLOCK_N))
        z = tl.reshape(tl.broadcast_to(z[:, None, :], (GPT, R // GPT, BLOCK_N)), (R, BLOCK_N))
    if LUT:
        w = lut4_packed(words, t_ptr, t_rows, tw, s, CDT, INLINE_ASM, not POST_SCALE, MMA_WORDS)
    elif P1 == 0:
        w = dequant_packed(words, s, z, CDT, INLINE_ASM, not POST_SCALE, P0, MMA_WORDS)
    else:  # several planes (one group per tile): (q0 - z) + 2**P0 q1 (+ 2**(P0+P1) q2), exact in 16 bits
        w = dequant_packed(words, s, z, CDT, INLINE_ASM, False, P0)
        w = add_plane(w, qw_ptr, (Kp // 32) * P0, k0, offs_n, mask_n, stride_qk, Kp, s, z, EVEN_K, ROW_REPS,
                      P1, P0, CDT, INLINE_ASM, BLOCK_K)
        if P2 > 0:
            w = add_plane(w, qw_ptr, (Kp // 32) * (P0 + P1), k0, offs_n, mask_n, stride_qk, Kp, s, z, EVEN_K,
                          ROW_REPS, P2, P0 + P1, CDT, INLINE_ASM, BLOCK_K)
        if not POST_SCALE:
            w = (w.to(tl.float32) * tl.reshape(s, (BLOCK_N,))[:, None]).to(CDT)
    xt = xt.to(CDT)
    if not MMA_WORDS:  # natural-order words: permute X to the fragment's k order every tile
        xt = mma_k_order(xt, BLOCK_K)
    if POST_SCALE:  # one scale per row and K tile: scale the tile's product, not each weight
        acc += tl.reshape(s, (BLOCK_N,))[:, None] * tl.dot(w, xt)
    else:
        acc += tl.dot(w, xt)
    return acc


@triton.jit
def gemm_wxa16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, xs_ptr,
    M, N, K, Kp,
    stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn, stride_ws, stride_ym,
    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr, LUT: tl.constexpr,
    INT_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, PREFETCH: tl.constexpr,
    PACKED: tl.constexpr = False, INLINE_ASM: tl.constexpr = False,
    EVEN_N: tl.constexpr = False, EVEN_K: tl.constexpr = False, ROW_REPS: tl.constexpr = 0,
    SCALE_AFTER: tl.constexpr = False, MMA_WORDS: tl.constexpr = False, X_SCALE: tl.constexpr = False,
    w_desc=None, x_desc=None, TMA: tl.constexpr = False, K_UNROLL: tl.constexpr = 1,
):
    """Computes the tile transposed, Y^T[BLOCK_N, BLOCK_M] = W[BLOCK_N, :] @ X[BLOCK_M, :]^T: the
    dequantized weights are the register A operand and the tokens the MMA's N side, so Hopper's
    wgmma applies from BLOCK_M = 16 on (a [BLOCK_M < 64, ...] A operand would not).
    X_SCALE (W4A8 at small M): X holds per-token quantized values (fp8) with fp32 scales xs (M,); the
    MMAs run in fp16 (every e4m3 value and every q - z is exact there, products exact in fp32; the
    launcher keeps one group per K tile so the group scale multiplies the tile's fp32 product, never
    a 16-bit operand) and row m of the tile is multiplied by xs[m] before the bias."""
    OPT: tl.constexpr = tl.float16 if X_SCALE else x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile_ids(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    if EVEN_N:  # N % BLOCK_N == 0: a constant mask, folded away by the compiler
        mask_n = tl.full((BLOCK_N,), 1, tl.int1)
    else:
        mask_n = offs_n < N
    t0, t1 = split_k_tiles(stored_k_extent(K, MMA_WORDS, P0), pid_k, BLOCK_K, SPLIT_K)
    acc = gemm_accumulate(x_ptr, qw_ptr, s_ptr, z_ptr, t_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                          stride_xm, stride_xk, stride_qk, stride_sg, stride_tg, stride_tn,
                          GROUP_LEN, P0, P1, P2, HAS_ZEROS, SYM_ZERO, LUT, INT_ZERO,
                          BLOCK_M, BLOCK_N, BLOCK_K, PREFETCH, PACKED, INLINE_ASM, EVEN_K, ROW_REPS, SCALE_AFTER,
                          MMA_WORDS, OPT, w_desc, x_desc, pid_n * BLOCK_N, pid_m * BLOCK_M, TMA, K_UNROLL)
    if X_SCALE:
        acc = acc * tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)[None, :]
    if ROW_REPS > 0:
        offs_n = fragment_channels(offs_n, ROW_REPS)
        mask_n = fragment_channels(mask_n, ROW_REPS)
    write_linear_output(acc, b_ptr, y_ptr, offs_m, mask_m, offs_n, mask_n, stride_ym, ws_ptr, stride_ws, cnt_ptr,
                        pid, pid_k, HAS_BIAS, SPLIT_K, True)


def heuristic_config(m: int, n: int, k: int, group_len: int) -> GemmConfig:
    """Reasonable tiles for any GPU when no tuned config is shipped."""
    bk = 64 if group_len >= 64 else 32
    if m <= 64:
        return GemmConfig(16 if m <= 16 else 32 if m <= 32 else 64, 128, bk, 1, 8, 4, 4)
    if m <= 128:  # the H200 winner on most Llama-3 shapes at M = 128 (benchmarks/results/h200/pipeline_probe/)
        return GemmConfig(64, 64, 2 * bk if group_len >= 128 else bk, 1, 8, 4, 3)
    return GemmConfig(128, 128, bk, 1, 8, 8, 3)


def gemm_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_len: int, sym_zero: float, out_features: int,
    config: Optional[GemmConfig] = None, table: Optional[torch.Tensor] = None, k_order: int = 0,
    x_scale: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """x (M, K) fp16/bf16 -> (M, N). Inputs already validated by ``lowbit.ops``; ``table``: LUT mode;
    ``k_order`` 1: words in the mma word order (``formats.intx.to_mma_words``; other widths than 4 bits read only it).
    ``x_scale`` fp32 (M,): x is per-token quantized (fp8, W4A8), Y = x_scale[m] * (x @ W^T) + bias in
    ``out_dtype`` (fp16/bf16, also the MMA operand dtype; X_SCALE in the kernel)."""
    m, k = x.shape
    if config is None:
        cfg = resolve_config("gemm", GemmConfig, heuristic_config, m, out_features, k, bits, group_len, x)
        cfg = one_group_per_tile(cfg, bits, zeros, sym_zero, table, group_len)
    else:
        cfg = config
    if k_order and bits not in (1, 2, 4, 8):
        cfg = several_planes_config(cfg, bits, group_len)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(out_features, cfg.block_n), cfg.split_k)
    packed = use_packed(bits, zeros, sym_zero, table, group_len, cfg, k_order)
    # TMA only where the H200 tests ran it: affine W4A16-style codes with 16-bit X (a table entry with tma=True
    # reached by a lookup-table weight or by fp8 X keeps the pointer loads), one group per K tile (the tuned
    # tables' group 128; with per-word-row scales, g64 under a 128-k tile, the TMA loop compiles to 641 instead
    # of 339 SASS per tile and ran 107 vs 64 us on 28672x4096 at M = 64, benchmarks/results/h200/k_unroll_g64/)
    use_tma = (cfg.tma and packed and table is None and x_scale is None and group_len % cfg.block_k == 0
               and tma_applies(x, qweight, bits, cfg))
    descs = tma_descriptors(x, qweight, bits, cfg) if use_tma else {}
    return launch_intx(gemm_wxa16_kernel, grid, x, qweight, scales, zeros, bias, bits, group_len, sym_zero,
                       out_features, cfg.split_k, INT_ZERO=int_zero(zeros, sym_zero), BLOCK_M=cfg.block_m,
                       BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, PREFETCH=cfg.prefetch,
                       **packed_meta(packed, cfg, out_features, k, x.is_cuda, group_len), MMA_WORDS=bool(k_order),
                       num_warps=cfg.num_warps, num_stages=cfg.num_stages, table=table,
                       extra_ptrs=(scales if x_scale is None else x_scale,), out_dtype=out_dtype,
                       X_SCALE=x_scale is not None, **descs,
                       K_UNROLL=cfg.k_unroll if packed and k_unroll_ok(k, cfg, bits, k_order, group_len) else 1)


def k_unroll_ok(k: int, cfg: GemmConfig, bits: int, k_order: int, group_len: int) -> bool:
    """K_UNROLL > 1 needs every split-K chunk to hold a whole number of unrolled steps (the K tiles of
    the stored extent divide by split_k * k_unroll: all chunks equal, no tail); applied with one group per
    K tile only, as measured (tables tuned at group 128; several groups per tile: 168 instead of 127
    registers at 64x64x128)."""
    if cfg.k_unroll <= 1 or group_len % cfg.block_k:
        return False
    chunk = 128 // plane_constexprs(bits)["P0"]
    extent = triton.cdiv(k, chunk) * chunk if k_order else k  # ``unpack.stored_k_extent``
    tiles = triton.cdiv(extent, cfg.block_k)
    return tiles % (cfg.split_k * cfg.k_unroll) == 0


def tma_applies(x: torch.Tensor, qweight: torch.Tensor, bits: int, cfg: GemmConfig) -> bool:
    """TMA descriptors need CUDA tensors with a contiguous last dim, 16-byte aligned bases and row strides,
    and boxes of at most 256 elements per dim (16-byte multiples along the contiguous one)."""
    if TensorDescriptor is None or not x.is_cuda or not tma_rows_ok(x, qweight):
        return False
    if torch.cuda.get_device_capability(x.device)[0] < 9:
        return False
    return cfg.block_k * x.element_size() % 16 == 0 and cfg.block_n <= 256 and cfg.block_k <= 256


def tma_descriptors(x: torch.Tensor, qweight: torch.Tensor, bits: int, cfg: GemmConfig) -> dict:
    """Kernel arguments of the TMA path: the words of the first bit-plane and X, in tiles of one K step."""
    rows = cfg.block_k * plane_constexprs(bits)["P0"] // 32
    return {"w_desc": TensorDescriptor(qweight, list(qweight.shape), [qweight.stride(0), 1], [rows, cfg.block_n]),
            "x_desc": TensorDescriptor(x, list(x.shape), [x.stride(0), 1], [cfg.block_m, cfg.block_k]),
            "TMA": True}


def scaled_x_config(m: int, n: int, k: int, bits: int, group_len: int, zeros: Optional[torch.Tensor],
                    sym_zero: float, x: torch.Tensor, k_order: int = 0) -> Optional[GemmConfig]:
    """Tiles for ``gemm_wxa16(..., x_scale=)`` (fp8 X, W4A8): the shipped (else heuristic) W4A16 tiles of
    the same problem with BLOCK_K cut to at most one group, so each group scale multiplies a K tile's
    fp32 product (the 16-bit operands stay exact). None where the packed dequantization does not apply
    (the caller keeps the fp8 tensor-core kernel)."""
    cfg = resolve_config("gemm", GemmConfig, heuristic_config, m, n, k, bits, group_len, x)
    if not cfg.scale_after:  # a tile chosen for the folded scale: its second accumulator may not fit
        cfg = heuristic_config(m, n, k, group_len)
    bk = cfg.block_k
    while bk > group_len:
        bk //= 2
    cfg = dataclasses.replace(cfg, block_k=bk, prefetch=False, scale_after=True)
    if (group_len % bk or not PACKED_OPTIONS["scale_after"]
            or not use_packed(bits, zeros, sym_zero, None, group_len, cfg, k_order)):
        return None
    return cfg


def several_planes_config(cfg: GemmConfig, bits: int, group_len: int) -> GemmConfig:
    """Codes of several bit-planes in the mma word order run only on the packed path (the generic loop
    combines planes slot by slot, which the per-plane word orders do not allow): K tiles of whole chunks
    inside one group, no hand prefetch."""
    bk = max(mma_chunk(bits), cfg.block_k)  # powers of two: halving reaches the chunk, which divides the group
    while group_len % bk:
        bk //= 2
    return dataclasses.replace(cfg, block_k=bk, prefetch=False)


def one_group_per_tile(cfg: GemmConfig, bits: int, zeros: Optional[torch.Tensor], sym_zero: float,
                       table: Optional[torch.Tensor], group_len: int) -> GemmConfig:
    """The shipped tables are tuned at group 128. For affine 4-bit codes at group 64 under a 128-k tile
    with BLOCK_M <= 16, cut BLOCK_K to 64 (one group per tile: the per-tile scale after the MMA instead
    of per-word-row scales / zeros). H200 (``scripts/group_probe.py``, benchmarks/results/h200/lut_packed/):
    1.03-1.5x faster at M = 1 and 16 on all 3 Llama-3-8B shapes probed, for asymmetric and symmetric
    codes; slower at M = 64, for group 32 (32-k tiles) and mixed for lookup tables (not applied there;
    re-measured with the mma word order: NF4 ratio to int4 better on 5 of 8 M = 1/16 points, worse on 3,
    benchmarks/results/h200/lut_mma_words/bk64_probe/)."""
    if (table is None and cfg.block_m <= 16 and group_len == 64 and cfg.block_k == 128
            and packed_applies(bits, zeros, sym_zero, table, group_len, 64) and not cfg.prefetch):
        return dataclasses.replace(cfg, block_k=64)
    return cfg


# Packed-path options (module level so a probe can switch one off and time the difference).
PACKED_OPTIONS = {"fragment_rows": True, "scale_after": True}


def folded_scale_ok(cfg: GemmConfig, group_len: int) -> bool:
    """Where ``scale_after=False`` (group scale folded into the 16-bit weights) is known to be right on the
    H200. 128x128x64 x 8 warps with groups of 128 (two K tiles per group, BLOCK_M 128) gave a relative
    error of 1.7e-2 instead of 2.2e-3 on 28672x4096 (not on 1024x512; 256x128x64 and 128x128x128 were
    right everywhere; ``scripts/folded_probe.py``), cause not found. Until it is, tiles shorter than the
    group fold the scale only with BLOCK_M >= 256; the others keep the post-MMA scale."""
    return cfg.block_k >= group_len or cfg.block_m >= 256


def scale_after_applies(cfg, group_len: int) -> bool:
    """SCALE_AFTER of a packed tile config (``GemmConfig`` / ``grouped.GroupedConfig``): its own choice, except
    that the folded scale is used only where ``folded_scale_ok``."""
    return cfg.scale_after or not folded_scale_ok(cfg, group_len)


def packed_meta(packed: bool, cfg: GemmConfig, n: int, k: int, on_gpu: bool, group_len: int) -> dict:
    """Constexprs of the packed 4-bit path: EVEN_N / EVEN_K drop masks on tile-aligned shapes,
    ROW_REPS orders the accumulator rows like the Hopper MMA fragment (``unpack.fragment_rows``) so
    word loads are 8/16-byte vectors, SCALE_AFTER scales each K tile's product instead of each weight."""
    if not packed:
        return {"PACKED": False}
    return {**packed_tile_meta(cfg.block_n, cfg.num_warps, on_gpu), "EVEN_N": n % cfg.block_n == 0,
            "EVEN_K": k % cfg.block_k == 0,
            "SCALE_AFTER": PACKED_OPTIONS["scale_after"] and scale_after_applies(cfg, group_len)}


def packed_tile_meta(block_n: int, num_warps: int, on_gpu: bool) -> dict:
    """PACKED / INLINE_ASM / ROW_REPS: the constexprs every kernel calling the packed path of
    ``gemm_accumulate`` takes (the GEMM and the grouped MoE kernel)."""
    rows = fragment_row_reps(block_n, num_warps) if PACKED_OPTIONS["fragment_rows"] else 0
    return {"PACKED": True, "INLINE_ASM": on_gpu, "ROW_REPS": rows}


def fragment_row_reps(block_n: int, num_warps: int) -> int:
    """16-row slices per warp of a [BLOCK_N, .] Hopper MMA accumulator (Triton puts warps along the
    rows first, doubling from 4 while BLOCK_N > 16 x warps); 0 when BLOCK_N is not a whole number of
    slices per warp (the natural row order is kept)."""
    if block_n < 64:
        return 0
    wm = 4
    while wm < num_warps and block_n > 16 * wm:
        wm *= 2
    return block_n // (16 * wm) if block_n % (16 * wm) == 0 else 0


def use_packed(bits: int, zeros: Optional[torch.Tensor], sym_zero: float, table: Optional[torch.Tensor],
               group_len: int, cfg: GemmConfig, k_order: int = 0) -> bool:
    """Whether the packed dequantization applies (``unpack.dequant_packed`` / ``lut4_packed``)."""
    return packed_applies(bits, zeros, sym_zero, table, group_len, cfg.block_k, k_order) and not cfg.prefetch


def packed_applies(bits: int, zeros: Optional[torch.Tensor], sym_zero: float, table: Optional[torch.Tensor],
                   group_len: int, block_k: int, k_order: int = 0) -> bool:
    """Codes of any width (other than 4 bits only in the mma word order, ``k_order`` 1), whole mma chunks
    (``formats.intx.mma_chunk``: 4 words of the narrowest plane) per K tile, groups that are whole
    multiples of the tile or (one bit-plane) whole chunks dividing it; affine codes need integer zeros,
    16-entry 4-bit lookup tables must not change along K (one global table, or one per channel)."""
    if not 1 <= bits <= 8 or (bits != 4 and (not k_order or table is not None)):
        return False
    ch = mma_chunk(bits)
    if block_k % ch or not (group_len % block_k == 0 or (block_k % group_len == 0 and group_len % ch == 0)):
        return False
    if bits not in (1, 2, 4, 8) and group_len % block_k:  # several planes: one group per K tile
        return False
    if table is None:
        return int_zero(zeros, sym_zero)
    return zeros is None and table.shape[0] == 1 and table.shape[2] == 16  # one table, or one per channel
