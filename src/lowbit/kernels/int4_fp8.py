"""4-bit codes -> exact e4m3 weights in registers (the W4A8 unpack of ``scaled_mm``).

A 4-bit code c (0..15) with integer zero z (0..15, or the symmetric 8) gives v = c - z in [-15, 15];
every such integer is exact in e4m3 (3 mantissa bits), so the fp8 MMA sees exact integer weights.

Input: the ``intx`` int32 words of one K tile, [BLOCK_N, BLOCK_K // 8]; word bits 4j..4j+3 hold k = 8r + j
(layout: ``lowbit.formats.intx``). Output: [BLOCK_N, BLOCK_K] float8e4nv, each word's 8 values contiguous
in one thread (the nibble axis is built with ``tl.join``, which keeps new axes inside a thread), so the
tile reaches shared memory / the MMA operand layout with vector stores, not byte stores.

Two constructions (``UNPACK`` constexpr of ``scaled_mm_kernel``):

* ``UNPACK_PRMT`` (GPU): a 16-entry byte table T[c] = e4m3(c - z) held in four 32-bit registers;
  ``prmt.b32`` picks bytes by 3-bit selectors, so per 4 codes: two table permutes (entries 0..7 and
  8..15, index c & 7) and one permute choosing between them by bit 3 of c -> one word of 4 e4m3 bytes
  (``tl.inline_asm_elementwise``, pack=4). The table depends on z only: constants for symmetric
  codes, else four words per (group, channel) read from a 256-byte table indexed by z (``e4m3_tables``).
  The interpreter cannot run PTX, so this mode is GPU-only.
* ``UNPACK_MAGIC`` (pure Triton, any device, any bits <= 4): 1024 + c is built in fp16 by OR-ing c
  into the mantissa of 1024.0, (1024 + c) - (1024 + z) is exact in fp16, then the fp16 -> e4m3 cast
  (packed ``cvt.rn.satfinite.e4m3x2.f16x2`` on sm_89+) is exact for |v| <= 16.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch
import triton
import triton.language as tl

from .unpack import codes_from_words_nk

UNPACK_INT = tl.constexpr(0)    # integer operand (int8 MMA): q - z cast to int8
UNPACK_MAGIC = tl.constexpr(1)  # pure Triton fp16 magic -> e4m3
UNPACK_PRMT = tl.constexpr(2)   # prmt byte table -> e4m3 (4-bit codes, PTX)

_TABLES: Dict[Tuple[str, int], torch.Tensor] = {}


def default_unpack(op_dtype: torch.dtype, bits: int, device: torch.device) -> int:
    """int8 operand: UNPACK_INT; fp8: the prmt table for 4-bit codes on a GPU, else the fp16 magic."""
    if op_dtype == torch.int8:
        return UNPACK_INT.value
    if bits == 4 and device.type == "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return UNPACK_PRMT.value
    return UNPACK_MAGIC.value


def e4m3_bytes(values: torch.Tensor) -> torch.Tensor:
    """e4m3fn bit patterns (uint8) of exactly representable values."""
    return values.float().to(torch.float8_e4m3fn).view(torch.uint8)


def table_words(z: int) -> Tuple[int, int, int, int]:
    """The four little-endian words T0..T3 of the byte table T[c] = e4m3(c - z), c = 0..15."""
    b = e4m3_bytes(torch.arange(16) - z).tolist()
    return tuple(b[4 * j] | b[4 * j + 1] << 8 | b[4 * j + 2] << 16 | b[4 * j + 3] << 24 for j in range(4))


def signed_words(z: int) -> Tuple[int, int, int, int]:
    """``table_words`` as int32 values (what a Triton int32 constant takes)."""
    return tuple(w - (1 << 32) if w >= 1 << 31 else w for w in table_words(z))


def e4m3_tables(device: torch.device) -> torch.Tensor:
    """int32 (16, 4): row z holds ``table_words(z)`` (256 bytes, read through L1 by the kernel)."""
    key = (device.type, device.index or 0)
    t = _TABLES.get(key)
    if t is None:
        t = _TABLES[key] = torch.tensor([signed_words(z) for z in range(16)], dtype=torch.int32, device=device)
    return t


@triton.jit
def _join4(w):
    """w -> [*w.shape, 2, 2]: 4 copies of each element on new in-thread axes (join keeps them in-thread)."""
    a = tl.join(w, w)
    return tl.join(a, a)


@triton.jit
def nibbles_nk(words, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K // 8] words -> int32 codes [BLOCK_N, BLOCK_K] (nibble j of word r is k = 8r + j;
    a word's 8 codes stay in one thread)."""
    h = tl.join(words, words >> 16)  # [.., 2]: bits 16h
    b = tl.join(h, h >> 8)           # [.., 2, 2]: + 8b
    n = tl.join(b, b >> 4)           # [.., 2, 2, 2]: + 4c, so k % 8 = 4h + 2b + c (row-major)
    return tl.reshape(n & 15, (BLOCK_N, BLOCK_K))


@triton.jit
def magic_e4m3(q, z, OUT: tl.constexpr):
    """Exact (q - z) -> OUT for integer codes q (int32) and zeros z (int, broadcastable), |q - z| <= 16."""
    v = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)  # 1024 + q
    return (v - (z + 1024).to(tl.float16)).to(OUT)


@triton.jit
def load_tables(t_ptr, z):
    """The table words of zero points z ([BLOCK_N] int32) from ``e4m3_tables``: one 16-byte load per
    channel, split in-thread into four [BLOCK_N] int32 tensors."""
    t = tl.load(t_ptr + z[:, None] * 4 + tl.arange(0, 4)[None, :])
    even, odd = tl.split(tl.reshape(t, (z.shape[0], 2, 2)))  # split takes the last axis: words (0, 2), (1, 3)
    t0, t2 = tl.split(even)
    t1, t3 = tl.split(odd)
    return t0, t1, t2, t3


@triton.jit
def prmt_e4m3(words, t0, t1, t2, t3, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K // 8] words and per-channel table words t0..t3 ([BLOCK_N] int32) -> e4m3
    [BLOCK_N, BLOCK_K]. Each asm call sees the 8 consecutive k of one word in one thread (8 copies of the
    word and of each table word; only the first copy is read) and writes two 32-bit words of 4 e4m3
    bytes: index i = w & 0x7777.., selector s = 0x3210 | bit 3 of each code moved to bit 2; the high
    half uses i >> 16 and s >> 16 (prmt reads selector bits 0..15 only)."""
    w8 = tl.reshape(_join4(tl.join(words, words)), (BLOCK_N, BLOCK_K // 8, 8))
    b = tl.inline_asm_elementwise(
        """{
        .reg .b32 i, s, lo, hi;
        and.b32 i, $2, 0x77777777;
        shr.u32 s, $2, 1;
        and.b32 s, s, 0x44444444;
        or.b32 s, s, 0x32103210;
        prmt.b32 lo, $10, $18, i;
        prmt.b32 hi, $26, $34, i;
        prmt.b32 $0, lo, hi, s;
        shr.u32 i, i, 16;
        shr.u32 s, s, 16;
        prmt.b32 lo, $10, $18, i;
        prmt.b32 hi, $26, $34, i;
        prmt.b32 $1, lo, hi, s;
        }""",
        "=r,=r" + ",r" * 40, [w8, t0[:, None, None], t1[:, None, None], t2[:, None, None], t3[:, None, None]],
        dtype=tl.uint8, is_pure=True, pack=8)
    return tl.reshape(b, (BLOCK_N, BLOCK_K)).to(tl.float8e4nv, bitcast=True)


@triton.jit
def intx_operand(w0, w1, w2, z, t_ptr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                 UNPACK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, OP_TY: tl.constexpr):
    """Plane words of one K tile (``unpack.load_codes_nk``) and zeros z ([BLOCK_N] int32) -> the MMA
    operand q - z, [BLOCK_N, BLOCK_K] in OP_TY (e4m3 or int8), built as ``UNPACK`` says."""
    if UNPACK == UNPACK_PRMT:
        tl.static_assert(P0 == 4 and P1 == 0, "the prmt unpack takes 4-bit codes")
        t0, t1, t2, t3 = load_tables(t_ptr, z)
        w = prmt_e4m3(w0, t0, t1, t2, t3, BLOCK_N, BLOCK_K)
    else:
        if P0 == 4 and P1 == 0:
            q = nibbles_nk(w0, BLOCK_N, BLOCK_K)
        else:
            q = codes_from_words_nk(w0, w1, w2, P0, P1, P2, BLOCK_N, BLOCK_K)
        if UNPACK == UNPACK_MAGIC:
            w = magic_e4m3(q, z[:, None], OP_TY)
        else:
            w = (q - z[:, None]).to(OP_TY)  # integer operand: |q - z| <= 127
    return w
