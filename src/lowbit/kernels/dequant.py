"""dequantize_intx: intx weight -> dense W[N, K] (fp16/bf16), and the large-M path built on it.

Bandwidth-bound: each program expands a [BLOCK_N, BLOCK_K] tile (the same unpack helpers as the
GEMM) and writes it row-major (K contiguous). ``dequant_matmul_wxa16`` = this + cuBLAS: at large M
the GEMM is compute-bound and cuBLAS's bf16 tensor-core schedule beats a fused Triton kernel, so
dispatch uses it where the shipped table measured it faster.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..errors import UnsupportedError
from .launch import table_strides
from .unpack import (
    codes_from_words_nk, dequant_tile, expand_words_nk, group_params, load_codes_nk, lut_dequant_tile, mma_slots_to_natural, plane_constexprs,
    table_base,
)


@triton.jit
def _natural_plane(words, P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """P-bit fields of one plane's words in the mma word order -> [BLOCK_N, BLOCK_K] in natural k order."""
    return tl.trans(mma_slots_to_natural(tl.trans(expand_words_nk(words, P, BLOCK_N, BLOCK_K)), BLOCK_K, P))


@triton.jit
def dequantize_intx_kernel(
    qw_ptr, s_ptr, z_ptr, t_ptr, w_ptr,
    N, K, Kp,
    stride_qk, stride_sg, stride_tg, stride_tn, stride_wn, stride_qe, stride_se, stride_we,
    GROUP_LEN: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
    HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr, INT_ZERO: tl.constexpr, LUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MMA_WORDS: tl.constexpr = False, CODES: tl.constexpr = False,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_e = tl.program_id(2).to(tl.int64)  # stacked experts (lowbit.formats.intx_experts); 0 otherwise
    qw_ptr += pid_e * stride_qe
    s_ptr += pid_e * stride_se
    z_ptr += pid_e * stride_se
    w_ptr += pid_e * stride_we
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k0 = pid_k * BLOCK_K
    offs_k = k0 + tl.arange(0, BLOCK_K)
    w0, w1, w2 = load_codes_nk(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, Kp, P0, P1, P2, BLOCK_K)
    if MMA_WORDS:  # each plane's storage slots -> natural columns, in registers (a scatter was 5x slower)
        q = _natural_plane(w0, P0, BLOCK_N, BLOCK_K)
        if P1 > 0:
            q |= _natural_plane(w1, P1, BLOCK_N, BLOCK_K) << P0
        if P2 > 0:
            q |= _natural_plane(w2, P2, BLOCK_N, BLOCK_K) << (P0 + P1)
    else:
        q = codes_from_words_nk(w0, w1, w2, P0, P1, P2, BLOCK_N, BLOCK_K)
    s, z = group_params(s_ptr, z_ptr, k0 // GROUP_LEN, offs_n, mask_n, stride_sg, HAS_ZEROS, SYM_ZERO)
    if CODES:  # q - z unscaled (W4A8: exact in e4m3 for |q - z| <= 15; the scales stay per group)
        w = (q.to(tl.float32) - z[:, None]).to(w_ptr.dtype.element_ty)
    elif LUT:
        tb = table_base(k0 // GROUP_LEN, offs_n, stride_tg, stride_tn)[:, None]
        w = lut_dequant_tile(q, t_ptr, tb, s[:, None], mask_n[:, None], w_ptr.dtype.element_ty)
    else:
        w = dequant_tile(q, s[:, None], z[:, None], INT_ZERO, w_ptr.dtype.element_ty)
    tl.store(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :], w,
             mask=mask_n[:, None] & (offs_k < K)[None, :])


# (BLOCK_N, BLOCK_K, num_warps); BLOCK_K is halved until it divides the group. H200 (scripts/dequant_probe.py,
# benchmarks/results/h200/dequant_probe_67a3b5b/): 16-bit outputs at 2.6-3.7 TB/s with this tile, no other within
# 2 % on every shape; 1-byte outputs (the W4A8 codes) 2-8 % faster with 128 x 128
DEQUANT_TILE = (64, 128, 4)
DEQUANT_TILE_1BYTE = (128, 128, 4)


def int_zero(zeros: Optional[torch.Tensor], sym_zero: float) -> bool:
    """Integer zero points (uint8, or a symmetric integer constant): the exact fp16 dequant path."""
    return (zeros is not None and zeros.dtype == torch.uint8) or (zeros is None and sym_zero == int(sym_zero))


def dequantize_intx(qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor], bits: int,
                    group_len: int, sym_zero: float, in_features: int, dtype: torch.dtype,
                    table: Optional[torch.Tensor] = None, k_order: int = 0, codes: bool = False,
                    tile: Optional[Tuple[int, int, int]] = None) -> torch.Tensor:
    """Dense (N, K) weight in ``dtype`` (fp16/bf16) on the weight's device; ``table``: LUT codes;
    ``k_order`` 1: words in the mma word order (``formats.intx.to_mma_words``); ``codes``: q - z without the
    scales (any ``dtype`` that holds them exactly, e.g. float8_e4m3fn for bits <= 4 and integer zeros);
    ``tile`` (BLOCK_N, BLOCK_K, num_warps) overrides the launch tile (``scripts/dequant_probe.py``);
    stacked experts (qweight (E, Kp*bits/32, N), scales/zeros (E, G, N)) give (E, N, K) in one launch."""
    experts = qweight.shape[0] if qweight.dim() == 3 else 0
    if experts and table is not None:
        raise UnsupportedError("dequantize_intx: lookup tables are not supported for stacked experts")
    n = qweight.shape[-1]
    kp = qweight.shape[-2] * 32 // bits
    block_n, block_k, warps = tile or (DEQUANT_TILE_1BYTE if dtype.itemsize == 1 else DEQUANT_TILE)
    while group_len % block_k:
        block_k //= 2
    w = torch.empty((experts, n, in_features) if experts else (n, in_features), device=qweight.device, dtype=dtype)
    grid = (triton.cdiv(n, block_n), triton.cdiv(in_features, block_k), max(1, experts))
    e_strides = (qweight.stride(0), scales.stride(0), w.stride(0)) if experts else (0, 0, 0)
    stride_tg, stride_tn = table_strides(table)
    dequantize_intx_kernel[grid](
        qweight, scales, zeros if zeros is not None else scales, table if table is not None else scales, w,
        n, in_features, kp, qweight.stride(-2), scales.stride(-2), stride_tg, stride_tn, w.stride(-2), *e_strides,
        GROUP_LEN=group_len, **plane_constexprs(bits), HAS_ZEROS=zeros is not None, SYM_ZERO=sym_zero,
        INT_ZERO=int_zero(zeros, sym_zero), LUT=table is not None, BLOCK_N=block_n, BLOCK_K=block_k,
        MMA_WORDS=bool(k_order), CODES=codes, num_warps=warps,
    )
    return w


def dequant_matmul_wxa16(x, qweight, scales, zeros, bias, bits, group_len, sym_zero, out_features, config=None,
                         table=None, k_order=0):
    """x (M, K) -> (M, N) via a dense dequantized weight and cuBLAS (same signature as the GEMM launcher)."""
    w = dequantize_intx(qweight, scales, zeros, bits, group_len, sym_zero, x.shape[1], x.dtype, table, k_order)
    return torch.nn.functional.linear(x, w, bias)
