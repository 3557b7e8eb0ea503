"""2:4-sparse int4 matmuls: Y[M, N] = X[M, K] @ dequant(W)[N, K]^T (+ bias), W in ``sparse24_intx``.

Layout: ``lowbit.formats.sparse24`` (kept 4-bit codes (Kp/16, N), 2-bit kept positions (Kp/32, N),
N contiguous). Every kernel reads only the kept codes and the positions (3 bits per dense weight
instead of 4) and walks K in *meta-rows* of 32 dense k: one meta word + two value words per channel.

* ``gemv_sparse24`` (M <= ~16, CUDA cores, split-K): per kept value j of group c the activation
  x[4c + i_j] is chosen among the group's four with two bit tests *on the packed meta word* and two
  selects (no per-value gather), then one FFMA. The zero point is folded into the float subtraction
  that turns a code into a float (OR into the mantissa of 2**23, subtract 2**23 + z * 2**SH: exact for
  integer z), so (q - z) costs the same single FADD as q alone; the sum-x trick of the dense GEMV does
  not apply because the chosen x differ per channel. 2**SH (a field's bit offset) is removed once per
  tile: one accumulator per distinct offset (5).
* ``gemm_sparse24`` (tensor cores, swap-AB like ``gemm.py``): the dense [BLOCK_N, BLOCK_K] weight tile
  is rebuilt in registers (dequantized kept values placed by selects, exact zeros elsewhere) and fed
  to ``tl.dot``.
* ``dequantize_sparse24`` (same rebuild, stored) and, for large M, ``dequant_matmul_sparse24`` (dense
  cuBLAS) or ``dequant_semi_structured_sparse24`` (torch's 2:4 sparse tensor cores).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .dequant import int_zero
from .epilogue import grouped_tile_ids, split_k_tiles, write_linear_output
from .gemv import FLOAT_2_23_BITS, _pow2_divisor, _row_params, _x_slice
from .launch import output_buffers
from .unpack import dequant_tile, expand_words_nk, group_params, load_words_nk

META_K = tl.constexpr(32)  # dense k per meta word (and per two value words)


@dataclass(frozen=True)
class Sparse24GemvConfig:
    block_n: int = 128
    block_k: int = 128  # multiple of 32
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2


@dataclass(frozen=True)
class Sparse24GemmConfig:
    block_m: int = 16
    block_n: int = 128
    block_k: int = 64  # multiple of 32
    split_k: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


# ---- shared: words of one K tile, and the dense tile rebuilt from them ---------------------------------

@triton.jit
def _load_value_rows(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, HALF: tl.constexpr, BLOCK_K: tl.constexpr):
    """Value words of value-row 2r + HALF of every meta-row r of the tile -> [BLOCK_N, BLOCK_K // 32]."""
    r = tl.arange(0, BLOCK_K // META_K)
    rows = k0 // 16 + 2 * r + HALF
    mask = mask_n[:, None] & ((k0 + r * META_K) < Kp)[None, :]
    return tl.load(qw_ptr + offs_n[:, None] + rows[None, :] * stride_qk, mask=mask, other=0)


@triton.jit
def dense_tile(qw_ptr, m_ptr, s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_qk, stride_mk, stride_sg,
               GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
               INT_ZERO: tl.constexpr, OUT_DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dense weight tile W[offs_n, k0:k0+BLOCK_K] in OUT_DTYPE: kept values (q - z) * s at their
    positions, exact zeros elsewhere (k >= Kp and masked N read as code 0 / position 0)."""
    G4: tl.constexpr = BLOCK_K // 4
    words = load_words_nk(qw_ptr, 0, k0, offs_n, mask_n, stride_qk, Kp, 2, BLOCK_K)  # 16 dense k per word
    q = tl.reshape(expand_words_nk(words, 4, BLOCK_N, BLOCK_K // 2), (BLOCK_N, G4, 2))
    q0, q1 = tl.split(q)  # [BLOCK_N, G4]: codes of the first / second kept value of each group
    mw = load_words_nk(m_ptr, 0, k0, offs_n, mask_n, stride_mk, Kp, 1, BLOCK_K)  # 32 dense k per word
    nib = expand_words_nk(mw, 4, BLOCK_N, G4)
    i0 = nib & 3
    i1 = nib >> 2
    if GROUP_LEN % BLOCK_K == 0:
        s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)
        s = s[:, None]
        z = z[:, None]
    else:
        offs_c = k0 + tl.arange(0, G4) * 4
        s, z = group_params(s_ptr, z_ptr, (offs_c // GROUP_LEN)[None, :], offs_n[:, None],
                            mask_n[:, None] & (offs_c < Kp)[None, :], stride_sg, HAS_ZEROS, SYM_ZERO)
    v0 = dequant_tile(q0, s, z, INT_ZERO, OUT_DTYPE)
    v1 = dequant_tile(q1, s, z, INT_ZERO, OUT_DTYPE)
    return place_kept(v0, v1, i0, i1, tl.zeros_like(v0), BLOCK_N, BLOCK_K)


@triton.jit
def place_kept(v0, v1, i0, i1, fill, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K // 4] kept pairs (v0 at position i0, v1 at i1 of each group of four) -> the dense
    [BLOCK_N, BLOCK_K] tile in k order, ``fill`` at the two pruned positions."""
    w0 = tl.where(i0 == 0, v0, fill)  # i1 >= 1 and i0 <= 2 always
    w1 = tl.where(i0 == 1, v0, tl.where(i1 == 1, v1, fill))
    w2 = tl.where(i0 == 2, v0, tl.where(i1 == 2, v1, fill))
    w3 = tl.where(i1 == 3, v1, fill)
    # join(join(w0, w2), join(w1, w3))[n, c, a, b] = w_{2a + b}: row-major order is k = 4c + p
    return tl.reshape(tl.join(tl.join(w0, w2), tl.join(w1, w3)), (BLOCK_N, BLOCK_K))


# ---- GEMV (small M) -----------------------------------------------------------------------------------

@triton.jit
def _pick(meta, BIT: tl.constexpr, if_clear, if_set):
    """where(bit BIT of meta, if_set, if_clear), broadcast to [BLOCK_M, BLOCK_N, R]."""
    if BIT == 31:
        on = meta < 0
    else:
        on = (meta & (1 << BIT)) != 0
    return tl.where(on[None, :, :], if_set, if_clear)


@triton.jit
def _code_float(word, shifted, magic, SH_RAW: tl.constexpr):
    """(2**23 + q * 2**SH as fp32, SH) for the 4-bit field at bit SH_RAW of ``word`` (fields ending
    above bit 23 come from ``shifted`` = word >> 12)."""
    if SH_RAW + 4 <= 23:
        f = (word & (15 << SH_RAW)) | magic
    else:
        f = (shifted & (15 << (SH_RAW - 12))) | magic
    return f.to(tl.float32, bitcast=True)


@triton.jit
def gemv_sparse24_accumulate(x_ptr, qw_ptr, m_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp, t0, t1,
                             stride_xm, stride_xk, stride_qk, stride_mk, stride_sg, magic,
                             GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
                             INT_ZERO: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr, EVEN_K: tl.constexpr):
    """Y tile [BLOCK_M, BLOCK_N] (fp32) over the K tiles [t0, t1)."""
    R: tl.constexpr = BLOCK_K // META_K
    r = tl.arange(0, R)
    acc = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
    for t in tl.range(t0, t1, num_stages=NUM_STAGES):
        k0 = t * BLOCK_K
        meta = load_words_nk(m_ptr, 0, k0, offs_n, mask_n, stride_mk, Kp, 1, BLOCK_K)  # [BLOCK_N, R]
        lo = _load_value_rows(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, 0, BLOCK_K)
        hi = _load_value_rows(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, 1, BLOCK_K)
        s, z = _row_params(s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_sg, GROUP_LEN, HAS_ZEROS, SYM_ZERO,
                           1, BLOCK_K)  # [1, BLOCK_N, R or 1]
        lo_sh = lo >> 12
        hi_sh = hi >> 12
        # one partial sum per field offset SH in {0, 4, 8, 12, 16}: 2**-SH is applied once per tile
        a0 = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
        a4 = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
        a8 = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
        a12 = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
        a16 = tl.zeros((BLOCK_M, BLOCK_N, R), dtype=tl.float32)
        for gi in tl.static_range(8):  # group of four within the meta-row
            kk = k0 + r * META_K + 4 * gi
            x0 = _x_slice(x_ptr, kk, offs_m, mask_m, K, stride_xm, stride_xk, EVEN_K)[:, None, :]
            x1 = _x_slice(x_ptr, kk + 1, offs_m, mask_m, K, stride_xm, stride_xk, EVEN_K)[:, None, :]
            x2 = _x_slice(x_ptr, kk + 2, offs_m, mask_m, K, stride_xm, stride_xk, EVEN_K)[:, None, :]
            x3 = _x_slice(x_ptr, kk + 3, offs_m, mask_m, K, stride_xm, stride_xk, EVEN_K)[:, None, :]
            # i0 in {0, 1, 2} at meta bits 4gi, 4gi+1; i1 in {1, 2, 3} at bits 4gi+2, 4gi+3
            xa = _pick(meta, 4 * gi + 1, _pick(meta, 4 * gi, x0, x1), x2)
            xb = _pick(meta, 4 * gi + 3, x1, _pick(meta, 4 * gi + 2, x2, x3))
            for j in tl.static_range(2):
                sh_raw = 8 * (gi % 4) + 4 * j
                SH = sh_raw if sh_raw + 4 <= 23 else sh_raw - 12
                if gi < 4:
                    f = _code_float(lo, lo_sh, magic, sh_raw)
                else:
                    f = _code_float(hi, hi_sh, magic, sh_raw)
                if INT_ZERO:  # 2**23 + z * 2**SH is exact: (q - z) * 2**SH in one FADD
                    v = f - (8388608.0 + z * (1 << SH))
                else:
                    v = (f - 8388608.0) - z * (1 << SH)
                xv = xa if j == 0 else xb
                if SH == 0:
                    a0 += xv * v
                elif SH == 4:
                    a4 += xv * v
                elif SH == 8:
                    a8 += xv * v
                elif SH == 12:
                    a12 += xv * v
                else:
                    a16 += xv * v
        part = a0 + a4 * (1.0 / 16) + a8 * (1.0 / 256) + a12 * (1.0 / 4096) + a16 * (1.0 / 65536)
        acc += part * s
    return tl.sum(acc, axis=2)


@triton.jit
def gemv_sparse24_kernel(
    x_ptr, qw_ptr, m_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp,
    stride_xm, stride_xk, stride_qk, stride_mk, stride_sg, stride_ws, stride_ym, magic,
    GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    INT_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, EVEN_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    t0, t1 = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)
    acc = gemv_sparse24_accumulate(x_ptr, qw_ptr, m_ptr, s_ptr, z_ptr, offs_m, mask_m, offs_n, mask_n, K, Kp,
                                   t0, t1, stride_xm, stride_xk, stride_qk, stride_mk, stride_sg, magic,
                                   GROUP_LEN, HAS_ZEROS, SYM_ZERO, INT_ZERO, BLOCK_M, BLOCK_N, BLOCK_K,
                                   NUM_STAGES, EVEN_K)
    write_linear_output(acc, b_ptr, y_ptr, offs_m, mask_m, offs_n, mask_n, stride_ym, ws_ptr, stride_ws, cnt_ptr,
                        pid_n, pid_k, HAS_BIAS, SPLIT_K, False)


# ---- GEMM (tensor cores) ------------------------------------------------------------------------------

@triton.jit
def gemm_sparse24_kernel(
    x_ptr, qw_ptr, m_ptr, s_ptr, z_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
    M, N, K, Kp,
    stride_xm, stride_xk, stride_qk, stride_mk, stride_sg, stride_ws, stride_ym,
    GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, HAS_BIAS: tl.constexpr,
    INT_ZERO: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Y^T[BLOCK_N, BLOCK_M] = W_tile @ X_tile^T (the rebuilt weight is the A operand: wgmma from BLOCK_M 16)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = grouped_tile_ids(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    t0, t1 = split_k_tiles(K, pid_k, BLOCK_K, SPLIT_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + offs_k[:, None] * stride_xk,
                     mask=mask_m[None, :] & (offs_k[:, None] < K), other=0.0)  # [BLOCK_K, BLOCK_M]
        w = dense_tile(qw_ptr, m_ptr, s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_qk, stride_mk, stride_sg,
                       GROUP_LEN, HAS_ZEROS, SYM_ZERO, INT_ZERO, x_ptr.dtype.element_ty, BLOCK_N, BLOCK_K)
        acc += tl.dot(w, xt)
    write_linear_output(acc, b_ptr, y_ptr, offs_m, mask_m, offs_n, mask_n, stride_ym, ws_ptr, stride_ws, cnt_ptr,
                        pid, pid_k, HAS_BIAS, SPLIT_K, True)


# ---- dequantize (large M) -----------------------------------------------------------------------------

@triton.jit
def dequantize_sparse24_kernel(
    qw_ptr, m_ptr, s_ptr, z_ptr, w_ptr, N, K, Kp, stride_qk, stride_mk, stride_sg, stride_wn,
    GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, INT_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = tl.program_id(1) * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w = dense_tile(qw_ptr, m_ptr, s_ptr, z_ptr, k0, offs_n, mask_n, Kp, stride_qk, stride_mk, stride_sg,
                   GROUP_LEN, HAS_ZEROS, SYM_ZERO, INT_ZERO, w_ptr.dtype.element_ty, BLOCK_N, BLOCK_K)
    tl.store(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], w, mask=mask_n[:, None] & (offs_k < K)[None, :])


# ---- expand to dense int4 words (small / medium M: the dense packed GEMM runs them) -------------------

@triton.jit
def expand_codes_sparse24_kernel(
    qw_ptr, m_ptr, z_ptr, out_ptr, N, Kp, stride_qk, stride_mk, stride_zg, stride_ok,
    GROUP_LEN: tl.constexpr, HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Dense 4-bit words (Kp/8, N) in the natural order (``formats.intx.pack``: code of k = 8r + j at bits
    4j of word row r) for dense k in [k0, k0 + BLOCK_K): kept codes at their positions, the group's zero
    point z at pruned ones, so that (q - z) * s = 0 there exactly (integer zero points only)."""
    G4: tl.constexpr = BLOCK_K // 4
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = tl.program_id(1) * BLOCK_K
    words = load_words_nk(qw_ptr, 0, k0, offs_n, mask_n, stride_qk, Kp, 2, BLOCK_K)  # 16 dense k per word
    q = tl.reshape(expand_words_nk(words, 4, BLOCK_N, BLOCK_K // 2), (BLOCK_N, G4, 2))
    q0, q1 = tl.split(q)  # [BLOCK_N, G4]: codes of the first / second kept value of each group of four
    nib = expand_words_nk(load_words_nk(m_ptr, 0, k0, offs_n, mask_n, stride_mk, Kp, 1, BLOCK_K), 4, BLOCK_N, G4)
    i0 = nib & 3
    i1 = nib >> 2
    offs_c = k0 + tl.arange(0, G4) * 4
    _, z = group_params(z_ptr, z_ptr, (offs_c // GROUP_LEN)[None, :], offs_n[:, None],
                        mask_n[:, None] & (offs_c < Kp)[None, :], stride_zg, HAS_ZEROS, SYM_ZERO)
    codes = tl.reshape(place_kept(q0, q1, i0, i1, z.to(tl.int32), BLOCK_N, BLOCK_K), (BLOCK_N, BLOCK_K // 8, 8))
    out = tl.sum(codes << (tl.arange(0, 8) * 4)[None, None, :], 2)  # k = 8r + j; disjoint fields: sum = OR
    rows = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    tl.store(out_ptr + rows[None, :] * stride_ok + offs_n[:, None], out,
             mask=mask_n[:, None] & (rows < Kp // 8)[None, :])


def expand_sparse24(qweight: torch.Tensor, meta: torch.Tensor, zeros: Optional[torch.Tensor], group_len: int,
                    sym_zero: float) -> torch.Tensor:
    """Dense intx qweight (Kp/8, N) int32, 4-bit natural order (``lowbit.formats.intx``), of the 2:4-sparse
    weight: pruned positions hold the zero point. Needs integer zero points (``int_zero``)."""
    n, kp = qweight.shape[1], _kp(qweight)
    out = torch.empty((kp // 8, n), device=qweight.device, dtype=torch.int32)
    block_k = 128
    grid = (triton.cdiv(n, 64), triton.cdiv(kp, block_k))
    expand_codes_sparse24_kernel[grid](
        qweight, meta, zeros if zeros is not None else qweight, out, n, kp, qweight.stride(0), meta.stride(0),
        zeros.stride(0) if zeros is not None else 0, out.stride(0), GROUP_LEN=group_len,
        HAS_ZEROS=zeros is not None, SYM_ZERO=int(sym_zero), BLOCK_N=64, BLOCK_K=block_k, num_warps=4,
    )
    return out


def expand_matmul_sparse24(x, qweight, meta, scales, zeros, bias, group_len, sym_zero, config=None):
    """x (M, K) -> (M, N): the weight expanded to dense int4 words (``expand_sparse24``, N * Kp / 2 bytes of
    scratch) and run by the dense W4A16 op's dispatch (the packed tensor-core GEMM at small M). Float zero
    points cannot make a pruned position exactly zero: those take dequantize + cuBLAS."""
    from ..ops import PER_CHANNEL_GROUP_LEN, _run_wxa16

    if not int_zero(zeros, sym_zero):
        return dequant_matmul_sparse24(x, qweight, meta, scales, zeros, bias, group_len, sym_zero)
    dense = expand_sparse24(qweight, meta, zeros, group_len, sym_zero)
    group_size = 0 if group_len >= PER_CHANNEL_GROUP_LEN else group_len
    return _run_wxa16(x, dense, scales, zeros, bias, 4, group_size, x.shape[1])


# ---- host side ----------------------------------------------------------------------------------------

def _format_meta(zeros: Optional[torch.Tensor], group_len: int, sym_zero: float, bias) -> dict:
    return dict(GROUP_LEN=group_len, HAS_ZEROS=zeros is not None, SYM_ZERO=sym_zero, HAS_BIAS=bias is not None,
                INT_ZERO=int_zero(zeros, sym_zero))


def gemv_heuristic(m: int, n: int, k: int, group_len: int, num_sms: int = 132) -> Sparse24GemvConfig:
    block_n = 128 if n >= 2048 else 64
    block_k = _pow2_divisor(group_len, 128)  # multiple of 32: group lengths are
    split = max(1, min(triton.cdiv(k, block_k), (4 * num_sms) // triton.cdiv(n, block_n)))
    return Sparse24GemvConfig(block_n, block_k, split, 4, 2)


def gemm_heuristic(m: int, n: int, k: int, group_len: int) -> Sparse24GemmConfig:
    bk = 64 if group_len >= 64 else 32
    if m <= 64:
        return Sparse24GemmConfig(16 if m <= 16 else 32 if m <= 32 else 64, 128, bk, 1, 8, 4, 4)
    return Sparse24GemmConfig(128, 128, bk, 1, 8, 8, 3)


def _kp(qweight: torch.Tensor) -> int:
    return qweight.shape[0] * 16


def gemv_sparse24(x: torch.Tensor, qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
                  zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_len: int, sym_zero: float,
                  config: Optional[Sparse24GemvConfig] = None) -> torch.Tensor:
    """x (M, K) fp16/bf16 -> (M, N); inputs validated by ``lowbit.ops_sparse24``."""
    m, k = x.shape
    n = qweight.shape[1]
    cfg = config or gemv_heuristic(m, n, k, group_len)
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k)
    y, ws, counters, stride_ws = output_buffers(m, n, cfg.split_k, grid[0], x)
    gemv_sparse24_kernel[grid](
        x, qweight, meta, scales, zeros if zeros is not None else scales, bias if bias is not None else scales,
        y, ws, counters, m, n, k, _kp(qweight),
        x.stride(0), x.stride(1), qweight.stride(0), meta.stride(0), scales.stride(0), stride_ws, y.stride(0),
        FLOAT_2_23_BITS, **_format_meta(zeros, group_len, sym_zero, bias),
        BLOCK_M=max(1, triton.next_power_of_2(m)), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k,
        NUM_STAGES=cfg.num_stages, EVEN_K=k % cfg.block_k == 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y


def gemm_sparse24(x: torch.Tensor, qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
                  zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], group_len: int, sym_zero: float,
                  config: Optional[Sparse24GemmConfig] = None) -> torch.Tensor:
    """x (M, K) fp16/bf16 -> (M, N) on tensor cores (dense tile rebuilt in registers)."""
    m, k = x.shape
    n = qweight.shape[1]
    cfg = config or gemm_heuristic(m, n, k, group_len)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), cfg.split_k)
    y, ws, counters, stride_ws = output_buffers(m, n, cfg.split_k, grid[0], x)
    gemm_sparse24_kernel[grid](
        x, qweight, meta, scales, zeros if zeros is not None else scales, bias if bias is not None else scales,
        y, ws, counters, m, n, k, _kp(qweight),
        x.stride(0), x.stride(1), qweight.stride(0), meta.stride(0), scales.stride(0), stride_ws, y.stride(0),
        **_format_meta(zeros, group_len, sym_zero, bias),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=cfg.split_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return y


def dequantize_sparse24(qweight: torch.Tensor, meta: torch.Tensor, scales: torch.Tensor,
                        zeros: Optional[torch.Tensor], group_len: int, sym_zero: float, in_features: int,
                        dtype: torch.dtype) -> torch.Tensor:
    """Dense (N, K) weight in ``dtype`` (fp16/bf16), zeros at pruned positions; equals
    ``Sparse24Weight.dequantize(dtype)`` up to one rounding of (q - z) * s."""
    n = qweight.shape[1]
    block_k = _pow2_divisor(group_len, 128)
    w = torch.empty((n, in_features), device=qweight.device, dtype=dtype)
    grid = (triton.cdiv(n, 64), triton.cdiv(in_features, block_k))
    meta_args = _format_meta(zeros, group_len, sym_zero, None)
    del meta_args["HAS_BIAS"]
    dequantize_sparse24_kernel[grid](
        qweight, meta, scales, zeros if zeros is not None else scales, w, n, in_features, _kp(qweight),
        qweight.stride(0), meta.stride(0), scales.stride(0), w.stride(0), **meta_args,
        BLOCK_N=64, BLOCK_K=block_k, num_warps=4,
    )
    return w


def dequant_matmul_sparse24(x, qweight, meta, scales, zeros, bias, group_len, sym_zero, config=None):
    """x (M, K) -> (M, N): dense dequantized weight + cuBLAS (large M)."""
    w = dequantize_sparse24(qweight, meta, scales, zeros, group_len, sym_zero, x.shape[1], x.dtype)
    return torch.nn.functional.linear(x, w, bias)


SEMI_STRUCTURED_MIN_CAPABILITY = (8, 0)


def semi_structured_ok(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device):
    """(ok, reason) for torch's 2:4 sparse tensor-core path (CUTLASS / cuSPARSELt)."""
    if device.type != "cuda":
        return False, f"semi-structured sparse matmul needs a CUDA device, got {device.type!r}"
    if torch.cuda.get_device_capability(device) < SEMI_STRUCTURED_MIN_CAPABILITY:
        return False, "semi-structured sparse matmul needs CUDA capability >= 8.0"
    if dtype not in (torch.float16, torch.bfloat16):
        return False, f"semi-structured sparse matmul takes fp16/bf16, got {dtype}"
    if n % 64 or k % 128 or m % 8:
        return False, f"semi-structured sparse matmul needs N % 64 == 0, K % 128 == 0, M % 8 == 0; got {m}x{n}x{k}"
    return True, ""


def dequant_semi_structured_sparse24(x, qweight, meta, scales, zeros, bias, group_len, sym_zero, config=None):
    """x (M, K) -> (M, N): dequantize, compress to torch's semi-structured 2:4 tensor (per call: the
    weight stays 3 bits per value at rest) and run the sparse tensor-core matmul."""
    from torch.sparse import to_sparse_semi_structured

    w = dequantize_sparse24(qweight, meta, scales, zeros, group_len, sym_zero, x.shape[1], x.dtype)
    return torch.nn.functional.linear(x, to_sparse_semi_structured(w), bias)
