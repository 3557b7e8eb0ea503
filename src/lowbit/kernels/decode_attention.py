"""Split-KV decode attention (one new token per sequence against a static KV cache), for ``lowbit.models``.

Layout: q (BH, G, D) -- the G query heads that share KV head h of sequence b, BH = B * Hkv; k / v caches
(BH, S, D) with D contiguous (the model's (B, Hkv, S, D) buffers viewed flat); ``pos`` (1,) int64 on the
device: every sequence attends to cache positions 0..pos[0] (a device tensor, so a CUDA graph replays it
with new positions). Output (BH, G, D) in q's dtype.

Two launches: ``decode_attention_kernel`` (grid (BH, NSPLIT)) splits S into NSPLIT chunks of CHUNK positions
per (b, h) and writes each chunk's unnormalized softmax(q k^T) v, acc (BH, NSPLIT, G, D) fp32, with its running
max and sum, ml (BH, NSPLIT, 2, G) fp32 (online softmax, base 2); ``combine_kernel`` (grid (BH, G): one query
head per program, so a (NSPLIT, D) tile in registers) merges the chunks:
m = max_i m_i, out = sum_i 2^(m_i - m) acc_i / sum_i 2^(m_i - m) l_i. Only the chunks that hold a position
<= pos[0] are written and read (the others stay out of the merge). The G heads are padded to G_PAD rows inside
the attention kernel (>= 16 rows for ``tl.dot``); only the G real rows are stored.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def decode_attention_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, acc_ptr, ml_ptr, S, qk_scale,
                            G: tl.constexpr, G_PAD: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
                            CHUNK: tl.constexpr, NSPLIT: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    offs_g = tl.arange(0, G_PAD)
    offs_d = tl.arange(0, D)
    length = tl.minimum(tl.load(pos_ptr).to(tl.int32) + 1, S)  # positions 0..pos attended
    q = tl.load(q_ptr + bh * G * D + offs_g[:, None] * D + offs_d[None, :], mask=(offs_g < G)[:, None], other=0.0)
    m = tl.full((G_PAD,), float("-inf"), tl.float32)
    l = tl.zeros((G_PAD,), tl.float32)
    acc = tl.zeros((G_PAD, D), tl.float32)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, length)
    for s0 in range(start, end, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        valid = offs_s < end
        kv_off = bh * S * D + offs_s[:, None] * D + offs_d[None, :]
        k = tl.load(k_ptr + kv_off, mask=valid[:, None], other=0.0)
        scores = tl.dot(q, tl.trans(k)) * qk_scale  # [G_PAD, BLOCK_S], log2 units
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m, tl.max(scores, 1))  # finite: every block holds a valid position
        p = tl.exp2(scores - m_new[:, None])
        alpha = tl.exp2(m - m_new)
        v = tl.load(v_ptr + kv_off, mask=valid[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        l = l * alpha + tl.sum(p, 1)
        m = m_new
    if start < length:  # later chunks hold no attended position: the combine never reads them
        part = bh * NSPLIT + split
        row = offs_g < G
        tl.store(acc_ptr + (part * G + offs_g[:, None]) * D + offs_d[None, :], acc, mask=row[:, None])
        tl.store(ml_ptr + (part * 2) * G + offs_g, m, mask=row)
        tl.store(ml_ptr + (part * 2 + 1) * G + offs_g, l, mask=row)


@triton.jit
def combine_kernel(acc_ptr, ml_ptr, o_ptr, pos_ptr, S, G: tl.constexpr, D: tl.constexpr, CHUNK: tl.constexpr,
                   NSPLIT: tl.constexpr):
    bh = tl.program_id(0)
    g = tl.program_id(1)
    offs_p = tl.arange(0, NSPLIT)
    offs_d = tl.arange(0, D)
    length = tl.minimum(tl.load(pos_ptr).to(tl.int32) + 1, S)
    used = offs_p * CHUNK < length  # chunk 0 always holds position 0
    part = bh * NSPLIT + offs_p  # [NSPLIT]
    m = tl.load(ml_ptr + (part * 2) * G + g, mask=used, other=float("-inf"))
    l = tl.load(ml_ptr + (part * 2 + 1) * G + g, mask=used, other=0.0)
    w = tl.exp2(m - tl.max(m, 0))  # 0 for unused chunks (m = -inf)
    acc = tl.load(acc_ptr + (part[:, None] * G + g) * D + offs_d[None, :], mask=used[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.sum(w * l, 0)
    tl.store(o_ptr + (bh * G + g) * D + offs_d, out.to(o_ptr.dtype.element_ty))


def split_plan(bh: int, s: int, block_s: int = 64, min_programs: int = 256, max_split: int = 32):
    """(CHUNK, NSPLIT): chunks of whole BLOCK_S blocks, enough of them that BH * NSPLIT reaches ~min_programs
    (NSPLIT a power of two, at most max_split; chunks past the cache are empty)."""
    blocks = triton.cdiv(s, block_s)
    want = min(max_split, max(1, triton.cdiv(min_programs, bh)), blocks)
    per = triton.cdiv(blocks, want)
    nsplit = triton.next_power_of_2(triton.cdiv(blocks, per))
    return per * block_s, nsplit


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor,
                     scale: float = None) -> torch.Tensor:
    """q (B, Hkv, G, D), caches (B, Hkv, S, D), pos (1,) int64 -> (B, Hkv, G, D): softmax(q k^T * scale) v over
    cache positions 0..pos[0] (scale default 1/sqrt(D), as ``scaled_dot_product_attention``)."""
    b, hkv, g, d = q.shape
    s = k_cache.shape[2]
    bh = b * hkv
    qf = q.reshape(bh, g, d).contiguous()
    kf, vf = k_cache.reshape(bh, s, d), v_cache.reshape(bh, s, d)
    chunk, nsplit = split_plan(bh, s)
    g_pad = max(16, triton.next_power_of_2(g))
    acc = torch.empty((bh, nsplit, g, d), device=q.device, dtype=torch.float32)
    ml = torch.empty((bh, nsplit, 2, g), device=q.device, dtype=torch.float32)
    out = torch.empty_like(qf)
    qk_scale = (scale if scale is not None else 1.0 / math.sqrt(d)) * LOG2E
    decode_attention_kernel[(bh, nsplit)](qf, kf, vf, pos, acc, ml, s, qk_scale, G=g, G_PAD=g_pad, D=d,
                                          BLOCK_S=64, CHUNK=chunk, NSPLIT=nsplit, num_warps=4)
    combine_kernel[(bh, g)](acc, ml, out, pos, s, G=g, D=d, CHUNK=chunk, NSPLIT=nsplit, num_warps=1 if d <= 64 else 2)
    return out.view(b, hkv, g, d)
