"""Shared @triton.jit helpers that read intx codes (layout: ``lowbit.formats.intx``).

Bit-width specific code lives only here. A code of BITS bits is split into up to three
power-of-two planes (P0, P1, P2; 0 = absent) computed on the host by ``plane_constexprs``.
"""
import triton
import triton.language as tl

from ..formats.intx import bit_planes


def plane_constexprs(bits: int) -> dict:
    """{'P0':, 'P1':, 'P2':} plane widths for the kernels (0 where the plane is absent)."""
    planes = bit_planes(bits) + [0, 0]
    return {"P0": planes[0], "P1": planes[1], "P2": planes[2]}


@triton.jit
def group_params(s_ptr, z_ptr, g, offs_n, mask, stride_sg,
                 HAS_ZEROS: tl.constexpr, SYM_ZERO: tl.constexpr):
    """Scale and zero point (fp32 [BLOCK_N]) of group g (a scalar or a [BLOCK_K, 1] tensor)."""
    s = tl.load(s_ptr + g * stride_sg + offs_n, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZEROS:
        z = tl.load(z_ptr + g * stride_sg + offs_n, mask=mask, other=0).to(tl.float32)
    else:
        z = tl.zeros_like(s) + SYM_ZERO
    return s, z


@triton.jit
def load_words_nk(qw_ptr, row0, k0, offs_n, mask_n, stride_qk, k_end,
                  P: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 words of one plane for k in [k0, k0 + BLOCK_K) -> [BLOCK_N, BLOCK_K * P // 32]; words of
    k >= k_end (Kp, or 0 to skip a tile) and masked N read as 0."""
    PER: tl.constexpr = 32 // P
    r = tl.arange(0, BLOCK_K // PER)
    mask = mask_n[:, None] & ((k0 + r * PER) < k_end)[None, :]
    return tl.load(qw_ptr + offs_n[:, None] + (row0 + k0 // PER + r)[None, :] * stride_qk, mask=mask, other=0)


@triton.jit
def expand_words_nk(words, P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K // PER] words -> [BLOCK_N, BLOCK_K] P-bit fields (split with constant
    shifts into [BLOCK_N, ROWS, PER], whose row-major order is k)."""
    PER: tl.constexpr = 32 // P
    shifts = tl.arange(0, PER) * P
    fields = (words[:, :, None] >> shifts[None, None, :]) & ((1 << P) - 1)
    return tl.reshape(fields, (BLOCK_N, BLOCK_K))


@triton.jit
def load_codes_nk(qw_ptr, k0, offs_n, mask_n, stride_qk, Kp, k_end,
                  P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, BLOCK_K: tl.constexpr):
    """The words of every plane for one K tile (w1/w2 are dummies when the plane is absent)."""
    w0 = load_words_nk(qw_ptr, 0, k0, offs_n, mask_n, stride_qk, k_end, P0, BLOCK_K)
    w1 = w0
    w2 = w0
    if P1 > 0:
        w1 = load_words_nk(qw_ptr, (Kp // 32) * P0, k0, offs_n, mask_n, stride_qk, k_end, P1, BLOCK_K)
    if P2 > 0:
        w2 = load_words_nk(qw_ptr, (Kp // 32) * (P0 + P1), k0, offs_n, mask_n, stride_qk, k_end,
                           P2, BLOCK_K)
    return w0, w1, w2


@triton.jit
def codes_from_words_nk(w0, w1, w2, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Full codes q -> int32 [BLOCK_N, BLOCK_K] from the planes' words (``load_codes_nk``)."""
    q = expand_words_nk(w0, P0, BLOCK_N, BLOCK_K)
    if P1 > 0:
        q |= expand_words_nk(w1, P1, BLOCK_N, BLOCK_K) << P0
    if P2 > 0:
        q |= expand_words_nk(w2, P2, BLOCK_N, BLOCK_K) << (P0 + P1)
    return q


@triton.jit
def dequant_tile(q, s, z, INT_ZERO: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """(q - z) * s -> OUT_DTYPE, q int32 codes, s/z fp32 broadcastable to q.

    INT_ZERO (integer zero points): 1024 + q is built in fp16 by OR-ing q into the mantissa of
    1024.0 (no int->float conversion), and (1024 + q) - (1024 + z) is exact in fp16.
    """
    if INT_ZERO:
        v = (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)
        w = (v - (z + 1024.0).to(tl.float16)).to(OUT_DTYPE) * s.to(OUT_DTYPE)
    else:
        w = ((q.to(tl.float32) - z) * s).to(OUT_DTYPE)
    return w


# --- lookup-table (non-uniform) codes: w = table[tg, tn, q] * s (layout: ``lowbit.formats.lut``) ---

@triton.jit
def table_base(g, offs_n, stride_tg, stride_tn):
    """Element offset of the table row of group g (scalar or tensor) and channels offs_n; the strides
    are 0 along an axis the table broadcasts (one global table: base 0)."""
    return g * stride_tg + offs_n * stride_tn


@triton.jit
def lut_lookup(t_ptr, base, q, mask):
    """table[base + q] -> fp32, gathered through L1 (a 16-entry fp32 table is one 64-byte line)."""
    return tl.load(t_ptr + base + q, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def lut_dequant_tile(q, t_ptr, base, s, mask, OUT_DTYPE: tl.constexpr):
    """table[base + q] * s in fp32 -> OUT_DTYPE (the LUT counterpart of ``dequant_tile``)."""
    return (lut_lookup(t_ptr, base, q, mask) * s).to(OUT_DTYPE)


@triton.jit
def align_plane_rows(words, RATIO: tl.constexpr):
    """Words of a narrower plane [BLOCK_N, ROWS // RATIO] -> [BLOCK_N, ROWS] aligned with plane 0's
    word-rows: entry r holds word r // RATIO shifted right by (r % RATIO) * 32 // RATIO, so a field j
    of plane-0 row r sits at the same j in both (RATIO in {1, 2}: LUT codes of <= 4 bits)."""
    if RATIO == 1:
        return words
    else:
        tl.static_assert(RATIO == 2, "LUT kernels take codes of at most 4 bits")
        both = tl.join(words, words >> 16)  # [BLOCK_N, ROWS // 2, 2]: row-major order is r
        return tl.reshape(both, (words.shape[0], words.shape[1] * 2))
