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
def natural_k(k, MMA_WORDS: tl.constexpr, P: tl.constexpr = 4):
    """Input channel multiplied by the code at storage slot k: k itself, or for P-bit words in the mma
    word order (``lowbit.formats.intx.mma_natural_k``) the permutation inside each chunk of 128 / P k."""
    if MMA_WORDS:
        VPW: tl.constexpr = 32 // P
        H: tl.constexpr = VPW // 2
        j = k % VPW
        e = j % H
        return (k // (4 * VPW)) * (4 * VPW) + 16 * (e // 2) + 8 * (e % 2) + 2 * ((k // VPW) % 4) + j // H
    else:
        return k


@triton.jit
def stored_k_extent(K, MMA_WORDS: tl.constexpr, P: tl.constexpr):
    """Storage slots a K loop must visit: K, or in the mma word order K rounded up to whole chunks of
    128 / P (a slot past K can hold an input channel below K when a tile is shorter than the chunk)."""
    if MMA_WORDS:
        return tl.cdiv(K, 128 // P) * (128 // P)
    else:
        return K


@triton.jit
def register_anchor(s_ptr, g, offs_n, mask, stride_sg):
    """fp32 zeros shaped like ``group_params``' scales, made from a 1-byte load of the scale row (never
    folded). The symmetric packed path builds its zero point from it: an in-loop load among the asm
    operands is what lets Triton keep the dequantized tile in the MMA register layout; with a constant
    zero it went through shared memory (sm_90 SASS:
    32 STS + 8 LDSM per 16x64x128 tile, 3.77 vs 3.34 instructions per weight for symmetric int4)."""
    b = tl.load(s_ptr.to(tl.pointer_type(tl.uint8)) + g * stride_sg + offs_n, mask=mask, other=0)
    return b.to(tl.float32) * 0.0


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




# --- packed 4-bit dequantization (PTX inline asm, GPU only; the interpreter runs ``dequant_tile``) ---
#
# One asm instance takes one int32 word (8 codes, code j of k = 8r + j at bits 4j..4j+3) and returns
# four 32-bit registers, register e holding the pair (code 2e, code 2e + 1) -- the two nibbles of byte
# e -- dequantized as 16-bit floats: ``prmt`` puts byte e of the word and of the word >> 4 at half-word
# positions 0 and 2, ``lop3`` masks them and ORs them into the mantissas of MAGIC (1024.0 in fp16,
# 128.0 in bf16: exact for codes < 16), and two packed fma's give ((MAGIC + q) - (MAGIC + z)) * s: the
# subtraction is exact, so the one rounding is that of (q - z) * s in the output dtype.
# Operands: $0..$3 out, $4 the word, $5 the scale pair (s, s), $6 the pair -(MAGIC + z).
_DEQUANT4_PAIR = """
prmt.b32 h, $4, w4, SEL;
lop3.b32 h, h, 0x000F000F, MAGIC, 0xea;
fma.rn.DT h, h, one, $6;
fma.rn.DT $OUT, h, $5, nz;"""


def _dequant4_asm(dtype: str, scaled: bool) -> tl.constexpr:
    """The asm for f16x2 / bf16x2; unscaled: (q - z) exactly (the last fma dropped, the first one
    writing the output), for kernels that apply the scale to the MMA result."""
    one, magic = {"f16x2": ("0x3C003C00", "0x64006400"), "bf16x2": ("0x3F803F80", "0x43004300")}[dtype]
    pair = _DEQUANT4_PAIR if scaled else _DEQUANT4_PAIR.rsplit("\n", 1)[0].replace("h, h, one", "$OUT, h, one")
    body = "".join(pair.replace("SEL", hex(((4 + e) << 8) | e)).replace("OUT", str(e)) for e in range(4))
    asm = "{\n.reg .b32 w4, h, one, nz;\nmov.b32 one, ONE;\nmov.b32 nz, 0x80008000;\nshr.u32 w4, $4, 4;" + body + "\n}\n"
    return tl.constexpr(asm.replace("DT", dtype).replace("ONE", one).replace("MAGIC", magic))


DEQUANT4_F16: tl.constexpr = _dequant4_asm("f16x2", True)
DEQUANT4_BF16: tl.constexpr = _dequant4_asm("bf16x2", True)
DEQUANT4_F16_Q: tl.constexpr = _dequant4_asm("f16x2", False)
DEQUANT4_BF16_Q: tl.constexpr = _dequant4_asm("bf16x2", False)


@triton.jit
def _pair16(v, DT: tl.constexpr):
    """fp32 tensor -> int32 holding (v, v) as two DT (fp16/bf16) halves."""
    b = v.to(DT).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return b | (b << 16)


@triton.jit
def _halves(pair, DT: tl.constexpr):
    """int32 holding two DT halves -> DT [..., 2] (low half first)."""
    lo = pair.to(tl.int16).to(DT, bitcast=True)
    hi = (pair >> 16).to(tl.int16).to(DT, bitcast=True)
    return tl.join(lo, hi)


@triton.jit
def _byte_pair(words, e: tl.constexpr, s, z, OUT_DTYPE: tl.constexpr, SCALED: tl.constexpr):
    """Plain-Triton twin of one asm output (the interpreter's path): codes 2e, 2e + 1 of every word,
    (q - z) * s (or q - z) in OUT_DTYPE [..., 2]. The fp32 product of a <= 5-bit integer and a 16-bit
    scale is exact, so its one rounding matches the asm's."""
    lo = ((words >> (8 * e)) & 0xF).to(tl.float32) - z
    hi = ((words >> (8 * e + 4)) & 0xF).to(tl.float32) - z
    if SCALED:
        lo = lo * s
        hi = hi * s
    return tl.join(lo.to(OUT_DTYPE), hi.to(OUT_DTYPE))


@triton.jit
def dequant4_packed(words, s, z, OUT_DTYPE: tl.constexpr, INLINE_ASM: tl.constexpr, SCALED: tl.constexpr = True):
    """4-bit words int32 [R, BLOCK_N] (``load_words_nk`` transposed), integer zero z and scale s
    (fp32 [1 or R, BLOCK_N]: per channel, or per word-row when a K tile spans several groups)
    -> (q - z) * s in OUT_DTYPE (fp16 / bf16) [BLOCK_N, 8 R], K columns in
    ``mma_k_order``: every thread of an MMA A-fragment (k-pairs 2c, 2c+1 and 2c+8, 2c+9 of each 16-k
    step, c = lane % 4) then takes whole words; column 32p + 16st + 8a + 2c + b holds code
    4st + 2a + b of word 4p + c. X must be permuted the same way (``mma_k_order``).
    SCALED=False: q - z only (exact), the caller scales the product. INLINE_ASM: the packed PTX above
    (GPU); otherwise the same values from plain Triton ops."""
    if INLINE_ASM:
        if OUT_DTYPE == tl.float16:
            asm: tl.constexpr = DEQUANT4_F16 if SCALED else DEQUANT4_F16_Q
            e0, e1, e2, e3 = tl.inline_asm_elementwise(
                asm, "=r,=r,=r,=r,r,r,r",
                [words, _pair16(s, tl.float16), _pair16(-(z + 1024.0), tl.float16)],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            asm: tl.constexpr = DEQUANT4_BF16 if SCALED else DEQUANT4_BF16_Q
            e0, e1, e2, e3 = tl.inline_asm_elementwise(
                asm, "=r,=r,=r,=r,r,r,r",
                [words, _pair16(s, tl.bfloat16), _pair16(-(z + 128.0), tl.bfloat16)],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        w = _asm_columns(e0, e1, e2, e3, OUT_DTYPE)
    else:
        w = _mma_columns(_byte_pair(words, 0, s, z, OUT_DTYPE, SCALED), _byte_pair(words, 1, s, z, OUT_DTYPE, SCALED),
                         _byte_pair(words, 2, s, z, OUT_DTYPE, SCALED), _byte_pair(words, 3, s, z, OUT_DTYPE, SCALED))
    return w


@triton.jit
def _asm_columns(e0, e1, e2, e3, OUT_DTYPE: tl.constexpr):
    """The four int32 outputs of a packed dequantization asm (two OUT_DTYPE halves each) -> ``_mma_columns``."""
    return _mma_columns(_halves(e0, OUT_DTYPE), _halves(e1, OUT_DTYPE), _halves(e2, OUT_DTYPE),
                        _halves(e3, OUT_DTYPE))


@triton.jit
def _mma_columns(p0, p1, p2, p3):
    """The four [R, BN, 2] pair outputs of a packed 4-bit dequantization -> [BN, 8 R]: column 32p + 16st + 8a
    + 2c + b holds half b of output 2st + a of word-row 4p + c -- ``mma_k_order`` for byte pairs of natural
    words, natural k order for the half pairs of the mma word order (``formats.intx.mma_natural_k``)."""
    w = tl.join(tl.join(p0, p1), tl.join(p2, p3))  # [R, BN, b, a, st]: code 4st + 2a + b
    R: tl.constexpr = p0.shape[0]
    BN: tl.constexpr = p0.shape[1]
    w = tl.reshape(w, (R // 4, 4, BN, 2, 2, 2))  # [p, c, n, b, a, st]
    return tl.reshape(tl.permute(w, (2, 0, 5, 4, 1, 3)), (BN, R * 8))


# --- packed 1/2/4/8-bit dequantization (words in the mma word order of ``lowbit.formats.intx``) ---
#
# One asm instance takes one word of 32 / P codes (field j at bits P*j) and returns H = 16 / P registers,
# register e holding the pair (field e, field H + e) -- the same field of both 16-bit halves -- as
# 16-bit floats (q - z) * s. 1, 2 and 4 bits: ``lop3`` ORs the word (shifted right so the field lies at
# bit o <= 5 of each half, o + P <= 7) masked to the field into the mantissa of M_o = MAGIC * 2**-o
# (MAGIC = 1024.0 fp16, 128.0 bf16; the ulp of M_o is 2**-o, so bit o weighs 1), giving M_o + q exactly;
# one fma adds -(M_o + z) (exact: q - z, a small integer; derived once per word from the operand
# -(MAGIC + z) by adding MAGIC - M_o, exact as well), a second fma scales it (the one rounding).
# 8 bits in fp16: ``prmt`` places the two bytes under the 0x64 byte of 1024.0. 8 bits in bf16 (7
# mantissa bits): ``prmt`` builds fp32 2**23 + q, sub / mul in fp32 (exact: a 9-bit integer times a bf16
# scale) and ``cvt.rn.bf16x2.f32`` rounds once. Operands: $0..$(H-1) out, $H the word, $(H+1) the scale
# pair (fp32 for 8-bit bf16), $(H+2) the pair -(MAGIC + z) (fp32 2**23 + z for 8-bit bf16).
_HALF_FLOAT = {"f16x2": (0x6400, 10), "bf16x2": (0x4300, 7)}  # (MAGIC bits, mantissa bits)


MAGIC_VALUE = {"f16x2": 1024.0, "bf16x2": 128.0}


def _half_bits(v: float, dtype: str) -> int:
    """Bits of v (exactly representable) in fp16 / bf16."""
    import struct

    if dtype == "f16x2":
        bits = struct.unpack("<H", struct.pack("<e", v))[0]
    else:
        f32 = struct.unpack("<I", struct.pack("<f", v))[0]
        assert f32 & 0xFFFF == 0, v
        bits = f32 >> 16
    assert struct.unpack("<e" if dtype == "f16x2" else "<f", struct.pack("<H", bits) if dtype == "f16x2"
                         else struct.pack("<I", bits << 16))[0] == v, v
    return bits


def field_offsets(P: int) -> list:
    """Bit offsets o at which the 1/2/8-bit asm reads fields (the word is shifted to bring them there)."""
    return [0] if P == 8 else [o for o in range(0, 6, P) if o + P <= 7]


def _pair_bits(v: int) -> str:
    return hex(v | (v << 16))


def _dequant_fields_asm(P: int, dtype: str, scaled: bool) -> list:
    H = 16 // P
    offsets = field_offsets(P)
    nw, ns = f"${H}", f"${H + 1}"
    magic, mant = _HALF_FLOAT[dtype]
    lines = [".reg .b32 t, h, nz, one;", "mov.b32 nz, 0x80008000;", f"mov.b32 one, {_pair_bits(0x3C00 if dtype == 'f16x2' else 0x3F80)};"]
    shift, src, consts = None, nw, set()
    for e in range(H):
        if shift is None or P * e - shift not in offsets:  # a new shift puts field e at bit 0
            shift = P * e
            src = nw
            if shift:
                lines.append(f"shr.u32 t, {nw}, {shift};")
                src = "t"
        o = P * e - shift
        c = f"${H + 2}" if o == 0 else f"c{o}"
        if o and f"c{o}" not in consts:  # -(M_o + z) = -(MAGIC + z) + (MAGIC - M_o), exact
            lines += [f".reg .b32 c{o};", f"mov.b32 c{o}, {_pair_bits(_half_bits(MAGIC_VALUE[dtype] * (1 - 2.0 ** -o), dtype))};",
                      f"fma.rn.{dtype} c{o}, ${H + 2}, one, c{o};"]
            consts.add(f"c{o}")
        lines.append(f"lop3.b32 h, {src}, {_pair_bits(((1 << P) - 1) << o)}, {_pair_bits(magic - (o << mant))}, 0xea;")
        if scaled:
            lines += [f"fma.rn.{dtype} h, h, one, {c};", f"fma.rn.{dtype} ${e}, h, {ns}, nz;"]
        else:
            lines.append(f"fma.rn.{dtype} ${e}, h, one, {c};")
    return lines


def _dequant8_asm(dtype: str, scaled: bool) -> list:
    if dtype == "f16x2":
        lines = [".reg .b32 h, nz, one, mg;", "mov.b32 nz, 0x80008000;", "mov.b32 one, 0x3C003C00;",
                 "mov.b32 mg, 0x64646464;"]
        for e in range(2):
            lines.append(f"prmt.b32 h, $2, mg, {hex(0x4040 | e | ((2 + e) << 8))};")
            lines += (["fma.rn.f16x2 h, h, one, $4;", f"fma.rn.f16x2 ${e}, h, $3, nz;"] if scaled
                      else [f"fma.rn.f16x2 ${e}, h, one, $4;"])
        return lines
    lines = [".reg .b32 lo, hi, base;", "mov.b32 base, 0x4B000000;"]
    for e in range(2):
        lines += [f"prmt.b32 lo, $2, base, {hex(0x7440 | e)};", f"prmt.b32 hi, $2, base, {hex(0x7440 | (2 + e))};",
                  "sub.f32 lo, lo, $4;", "sub.f32 hi, hi, $4;"]
        if scaled:
            lines += ["mul.f32 lo, lo, $3;", "mul.f32 hi, hi, $3;"]
        lines.append(f"cvt.rn.bf16x2.f32 ${e}, hi, lo;")
    return lines


def dequant_fields_asm(P: int, dtype: str, scaled: bool) -> tl.constexpr:
    """The packed dequantization asm of P-bit words in the mma word order (P in 1, 2, 4, 8) for f16x2 / bf16x2."""
    lines = _dequant8_asm(dtype, scaled) if P == 8 else _dequant_fields_asm(P, dtype, scaled)
    return tl.constexpr("{\n" + "\n".join(lines) + "\n}\n")


DEQUANT_FIELDS = {(p, dt, sc): dequant_fields_asm(p, dt, sc)
                  for p in (1, 2, 4, 8) for dt in ("f16x2", "bf16x2") for sc in (True, False)}
DEQUANT1_F16: tl.constexpr = DEQUANT_FIELDS[(1, "f16x2", True)]
DEQUANT1_F16_Q: tl.constexpr = DEQUANT_FIELDS[(1, "f16x2", False)]
DEQUANT1_BF16: tl.constexpr = DEQUANT_FIELDS[(1, "bf16x2", True)]
DEQUANT1_BF16_Q: tl.constexpr = DEQUANT_FIELDS[(1, "bf16x2", False)]
DEQUANT2_F16: tl.constexpr = DEQUANT_FIELDS[(2, "f16x2", True)]
DEQUANT2_F16_Q: tl.constexpr = DEQUANT_FIELDS[(2, "f16x2", False)]
DEQUANT2_BF16: tl.constexpr = DEQUANT_FIELDS[(2, "bf16x2", True)]
DEQUANT2_BF16_Q: tl.constexpr = DEQUANT_FIELDS[(2, "bf16x2", False)]
DEQUANT4H_F16: tl.constexpr = DEQUANT_FIELDS[(4, "f16x2", True)]  # H: fields paired by 16-bit half
DEQUANT4H_F16_Q: tl.constexpr = DEQUANT_FIELDS[(4, "f16x2", False)]
DEQUANT4H_BF16: tl.constexpr = DEQUANT_FIELDS[(4, "bf16x2", True)]
DEQUANT4H_BF16_Q: tl.constexpr = DEQUANT_FIELDS[(4, "bf16x2", False)]
DEQUANT8_F16: tl.constexpr = DEQUANT_FIELDS[(8, "f16x2", True)]
DEQUANT8_F16_Q: tl.constexpr = DEQUANT_FIELDS[(8, "f16x2", False)]
DEQUANT8_BF16: tl.constexpr = DEQUANT_FIELDS[(8, "bf16x2", True)]
DEQUANT8_BF16_Q: tl.constexpr = DEQUANT_FIELDS[(8, "bf16x2", False)]


@triton.jit
def _st_columns(w):
    """[R, BN, b, a, ST] pairs of a packed dequantization -> [BN, R * 4 * ST] in natural k order:
    word-row r = 4p + c, column p * 16ST + 16st + 8a + 2c + b (``lowbit.formats.intx.mma_natural_k``)."""
    R: tl.constexpr = w.shape[0]
    BN: tl.constexpr = w.shape[1]
    ST: tl.constexpr = w.shape[4]
    w = tl.reshape(w, (R // 4, 4, BN, 2, 2, ST))  # [p, c, n, b, a, st]
    return tl.reshape(tl.permute(w, (2, 0, 5, 4, 1, 3)), (BN, R * 4 * ST))


@triton.jit
def _columns2(p0, p1):
    w = tl.join(p0, p1)  # [R, BN, b, a]
    return _st_columns(tl.reshape(w, (w.shape[0], w.shape[1], 2, 2, 1)))


@triton.jit
def _columns8(p0, p1, p2, p3, p4, p5, p6, p7):
    q0, q1, q2, q3 = tl.join(p0, p1), tl.join(p2, p3), tl.join(p4, p5), tl.join(p6, p7)  # q_st: [R, BN, b, a]
    w = tl.join(tl.join(q0, q2), tl.join(q1, q3))  # [R, BN, b, a, i, j]: q_(2i + j)
    return _st_columns(tl.reshape(w, (w.shape[0], w.shape[1], 2, 2, 4)))


@triton.jit
def _columns16(p0, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13, p14, p15):
    q0, q1, q2, q3 = tl.join(p0, p1), tl.join(p2, p3), tl.join(p4, p5), tl.join(p6, p7)
    q4, q5, q6, q7 = tl.join(p8, p9), tl.join(p10, p11), tl.join(p12, p13), tl.join(p14, p15)
    w = tl.join(tl.join(tl.join(q0, q4), tl.join(q2, q6)), tl.join(tl.join(q1, q5), tl.join(q3, q7)))  # q_(4i+2j+l)
    return _st_columns(tl.reshape(w, (w.shape[0], w.shape[1], 2, 2, 8)))


@triton.jit
def _f32_bits(v):
    return v.to(tl.float32).to(tl.int32, bitcast=True)


@triton.jit
def _asm8(asm: tl.constexpr, words, s, c):
    return tl.inline_asm_elementwise(asm, "=r,=r,r,r,r", [words, s, c], dtype=(tl.int32,) * 2, is_pure=True, pack=1)


@triton.jit
def _asm4(asm: tl.constexpr, words, s, c):
    return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,r,r,r", [words, s, c], dtype=(tl.int32,) * 4, is_pure=True, pack=1)


@triton.jit
def _asm2(asm: tl.constexpr, words, s, c):
    return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,=r,=r,=r,=r,r,r,r", [words, s, c],
                                     dtype=(tl.int32,) * 8, is_pure=True, pack=1)


@triton.jit
def _asm1(asm: tl.constexpr, words, s, c):
    return tl.inline_asm_elementwise(asm, "=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,=r,r,r,r", [words, s, c],
                                     dtype=(tl.int32,) * 16, is_pure=True, pack=1)


@triton.jit
def _per_slot(t, SLOTS: tl.constexpr):
    """Per word-row values t [1 or R, BN] -> [BN, SLOTS], each row's value repeated over its slots."""
    BN: tl.constexpr = t.shape[1]
    return tl.reshape(tl.broadcast_to(tl.trans(t)[:, :, None], (BN, t.shape[0], SLOTS // t.shape[0])), (BN, SLOTS))


@triton.jit
def dequant_packed(words, s, z, OUT_DTYPE: tl.constexpr, INLINE_ASM: tl.constexpr, SCALED: tl.constexpr,
                   P: tl.constexpr, MMA_WORDS: tl.constexpr = True):
    """P-bit words int32 [R, BLOCK_N] in the mma word order (P in 1, 2, 4, 8; R a multiple of 4), integer
    zero z and scale s (fp32 [1 or R, BLOCK_N]) -> (q - z) * s (or q - z when not SCALED) in OUT_DTYPE
    [BLOCK_N, R * 32 / P], columns in natural k order of the tile. 4-bit words in the natural order
    (MMA_WORDS=False): ``dequant4_packed``, columns in ``mma_k_order``."""
    if P == 4 and not MMA_WORDS:
        w = dequant4_packed(words, s, z, OUT_DTYPE, INLINE_ASM, SCALED)
    elif INLINE_ASM:
        MAGIC: tl.constexpr = 1024.0 if OUT_DTYPE == tl.float16 else 128.0
        if P == 4:
            asm: tl.constexpr = ((DEQUANT4H_F16 if SCALED else DEQUANT4H_F16_Q) if OUT_DTYPE == tl.float16
                                 else (DEQUANT4H_BF16 if SCALED else DEQUANT4H_BF16_Q))
            e0, e1, e2, e3 = _asm4(asm, words, _pair16(s, OUT_DTYPE), _pair16(-(z + MAGIC), OUT_DTYPE))
            w = _asm_columns(e0, e1, e2, e3, OUT_DTYPE)  # register e: fields (e, 4 + e) = (2st + a, half b)
        elif P == 8:
            if OUT_DTYPE == tl.float16:
                asm: tl.constexpr = DEQUANT8_F16 if SCALED else DEQUANT8_F16_Q
                e0, e1 = _asm8(asm, words, _pair16(s, OUT_DTYPE), _pair16(-(z + MAGIC), OUT_DTYPE))
            else:
                asm: tl.constexpr = DEQUANT8_BF16 if SCALED else DEQUANT8_BF16_Q
                e0, e1 = _asm8(asm, words, _f32_bits(s.to(tl.bfloat16)), _f32_bits(z + 8388608.0))
            w = _columns2(_halves(e0, OUT_DTYPE), _halves(e1, OUT_DTYPE))
        elif P == 2:
            asm: tl.constexpr = ((DEQUANT2_F16 if SCALED else DEQUANT2_F16_Q) if OUT_DTYPE == tl.float16
                                 else (DEQUANT2_BF16 if SCALED else DEQUANT2_BF16_Q))
            e0, e1, e2, e3, e4, e5, e6, e7 = _asm2(asm, words, _pair16(s, OUT_DTYPE), _pair16(-(z + MAGIC), OUT_DTYPE))
            w = _columns8(_halves(e0, OUT_DTYPE), _halves(e1, OUT_DTYPE), _halves(e2, OUT_DTYPE), _halves(e3, OUT_DTYPE),
                          _halves(e4, OUT_DTYPE), _halves(e5, OUT_DTYPE), _halves(e6, OUT_DTYPE), _halves(e7, OUT_DTYPE))
        else:
            asm: tl.constexpr = ((DEQUANT1_F16 if SCALED else DEQUANT1_F16_Q) if OUT_DTYPE == tl.float16
                                 else (DEQUANT1_BF16 if SCALED else DEQUANT1_BF16_Q))
            sp, c0 = _pair16(s, OUT_DTYPE), _pair16(-(z + MAGIC), OUT_DTYPE)
            e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15 = _asm1(asm, words, sp, c0)
            w = _columns16(_halves(e0, OUT_DTYPE), _halves(e1, OUT_DTYPE), _halves(e2, OUT_DTYPE), _halves(e3, OUT_DTYPE),
                           _halves(e4, OUT_DTYPE), _halves(e5, OUT_DTYPE), _halves(e6, OUT_DTYPE), _halves(e7, OUT_DTYPE),
                           _halves(e8, OUT_DTYPE), _halves(e9, OUT_DTYPE), _halves(e10, OUT_DTYPE), _halves(e11, OUT_DTYPE),
                           _halves(e12, OUT_DTYPE), _halves(e13, OUT_DTYPE), _halves(e14, OUT_DTYPE), _halves(e15, OUT_DTYPE))
    else:  # the interpreter's twin: fields in storage-slot order, reordered to natural k like the dequant kernel
        VPW: tl.constexpr = 32 // P
        BN: tl.constexpr = words.shape[1]
        SLOTS: tl.constexpr = words.shape[0] * VPW
        q = expand_words_nk(tl.trans(words), P, BN, SLOTS)  # [BN, SLOTS]
        v = q.to(tl.float32) - _per_slot(z, SLOTS)
        if SCALED:
            v = v * _per_slot(s, SLOTS)
        w = tl.trans(mma_slots_to_natural(tl.trans(v.to(OUT_DTYPE)), SLOTS, P))
    return w


# --- packed 4-bit lookup-table dequantization (one global 16-entry table: NF4, FP4) ---
#
# Same word in, same four registers out as ``_DEQUANT4_PAIR`` (register e = table entries of the two
# nibbles of byte e), but table[q] instead of q - z, looked up with ``prmt``: the 16 entries (16-bit,
# already in the output dtype) are split into low bytes $5..$8 and high bytes $9..$12, 4 entries per
# register (``lut4_table_words``). A prmt selector nibble takes bits 0-2 as a byte index into 8 bytes and
# bit 3 as a sign-replicate flag, so each lookup uses idx = q & 7 on entries 0-7 and on entries 8-15, and
# a lop3 picks one by a byte mask built from bit 3 of each code (a sign-replicating prmt of the word and
# the word << 4: byte msbs are the codes' bit 3). Two prmt's interleave low and high bytes into pairs.
# 21 instructions per word (2.6 per value); SCALED multiplies each pair by the scale pair $13.
# Words in the mma word order (fields paired by 16-bit half: register e = codes e and 4 + e): the first
# lookup takes codes 0, 1, 4, 5 (bytes 0 and 2 of word & 0x77777777, one prmt), the second 2, 3, 6, 7
# (bytes 1 and 3), the bit-3 masks select bytes accordingly, and the interleave pairs slots 0 / 2 and
# 1 / 3 of each lookup: 22 instructions per word.
_LUT4_HALF = """
prmt.b32 la, $5, $6, IDX;
prmt.b32 lb, $7, $8, IDX;
prmt.b32 ha, $9, $10, IDX;
prmt.b32 hb, $11, $12, IDX;
prmt.b32 m, w4, $4, MSEL;
lop3.b32 la, la, lb, m, 0xd8;
lop3.b32 ha, ha, hb, m, 0xd8;
prmt.b32 $OUTA, la, ha, ILA;
prmt.b32 $OUTB, la, ha, ILB;"""
# (index prologue, (mask selector, interleave A, interleave B) of the two lookups)
_LUT4_ORDERS = {
    "byte": ("and.b32 i0, $4, 0x77777777;\nshr.u32 i1, i0, 16;",
             (("0xD9C8", "0x5140", "0x7362"), ("0xFBEA", "0x5140", "0x7362"))),
    "half": ("and.b32 i1, $4, 0x77777777;\nprmt.b32 i0, i1, 0, 0x20;\nprmt.b32 i1, i1, 0, 0x31;",
             (("0xEAC8", "0x6240", "0x7351"), ("0xFBD9", "0x6240", "0x7351"))),
}


def _lut4_asm(dtype: str, scaled: bool, order: str = "byte") -> tl.constexpr:
    """order "byte": register e = the two nibbles of byte e (natural words); "half": codes e and 4 + e
    (the mma word order)."""
    prologue, halves = _LUT4_ORDERS[order]
    body = ""
    for i, (msel, ila, ilb) in enumerate(halves):
        body += (_LUT4_HALF.replace("IDX", f"i{i}").replace("MSEL", msel).replace("ILA", ila).replace("ILB", ilb)
                 .replace("OUTA", str(2 * i)).replace("OUTB", str(2 * i + 1)))
    if scaled:  # fma with -0 (bf16x2 mul needs sm_90)
        body += "".join(f"\nfma.rn.{dtype} ${e}, ${e}, $13, nz;" for e in range(4))
    asm = ("{\n.reg .b32 i0, i1, w4, m, la, lb, ha, hb, nz;\nmov.b32 nz, 0x80008000;\n"
           + prologue + "\nshl.b32 w4, $4, 4;" + body + "\n}\n")
    return tl.constexpr(asm)


LUT4_F16: tl.constexpr = _lut4_asm("f16x2", True)
LUT4_BF16: tl.constexpr = _lut4_asm("bf16x2", True)
LUT4_Q: tl.constexpr = _lut4_asm("f16x2", False)  # unscaled: pure byte moves, dtype-free
LUT4H_F16: tl.constexpr = _lut4_asm("f16x2", True, "half")
LUT4H_BF16: tl.constexpr = _lut4_asm("bf16x2", True, "half")
LUT4H_Q: tl.constexpr = _lut4_asm("f16x2", False, "half")


@triton.jit
def _entry16(t_ptr, i, rows, mask, OUT_DTYPE: tl.constexpr):
    """Bits of entry i of the table rows at element offsets ``rows`` [1, BLOCK_N], rounded to OUT_DTYPE
    (int32 in [0, 65536))."""
    v = tl.load(t_ptr + rows + i, mask=mask, other=0.0)
    return v.to(OUT_DTYPE).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF


@triton.jit
def lut4_table_words(t_ptr, rows, mask, OUT_DTYPE: tl.constexpr, ROW_REPS: tl.constexpr):
    """The 16 entries of each channel's 4-bit table (element offsets ``rows`` [BLOCK_N]: one global
    table = all 0, or one row per channel) in OUT_DTYPE, split into the asm's eight byte registers
    (low bytes of entries 0-3, 4-7, 8-11, 12-15, then the high bytes), each [1, BLOCK_N]. Loaded
    per channel even for a global table: asm operands splatted from scalars made Triton route the
    dequantized tile through shared memory."""
    rows = rows[None, :]
    mask = mask[None, :]
    l0 = rows * 0
    l1, l2, l3, h0, h1, h2, h3 = l0, l0, l0, l0, l0, l0, l0
    for i in tl.static_range(4):
        e0 = _entry16(t_ptr, i, rows, mask, OUT_DTYPE)
        e1 = _entry16(t_ptr, 4 + i, rows, mask, OUT_DTYPE)
        e2 = _entry16(t_ptr, 8 + i, rows, mask, OUT_DTYPE)
        e3 = _entry16(t_ptr, 12 + i, rows, mask, OUT_DTYPE)
        l0 |= (e0 & 0xFF) << (8 * i)
        l1 |= (e1 & 0xFF) << (8 * i)
        l2 |= (e2 & 0xFF) << (8 * i)
        l3 |= (e3 & 0xFF) << (8 * i)
        h0 |= (e0 >> 8) << (8 * i)
        h1 |= (e1 >> 8) << (8 * i)
        h2 |= (e2 >> 8) << (8 * i)
        h3 |= (e3 >> 8) << (8 * i)
    if ROW_REPS > 0:  # the same values, in the words' fragment row order (the layout Triton keeps)
        l0, l1, l2, l3 = fragment_rows(l0, ROW_REPS), fragment_rows(l1, ROW_REPS), fragment_rows(l2, ROW_REPS), fragment_rows(l3, ROW_REPS)
        h0, h1, h2, h3 = fragment_rows(h0, ROW_REPS), fragment_rows(h1, ROW_REPS), fragment_rows(h2, ROW_REPS), fragment_rows(h3, ROW_REPS)
    return l0, l1, l2, l3, h0, h1, h2, h3


@triton.jit
def _lut_pair(words, e: tl.constexpr, t_ptr, rows, s, OUT_DTYPE: tl.constexpr, SCALED: tl.constexpr,
              MMA_WORDS: tl.constexpr):
    """Plain-Triton twin of one LUT asm output: table entries (rounded to OUT_DTYPE) of codes 2e, 2e + 1
    (natural words) or e, 4 + e (mma word order), times s rounded once more when SCALED (the asm's
    f16x2/bf16x2 fma) -> [..., 2]."""
    if MMA_WORDS:
        lo_shift: tl.constexpr = 4 * e
        hi_shift: tl.constexpr = 16 + 4 * e
    else:
        lo_shift: tl.constexpr = 8 * e
        hi_shift: tl.constexpr = 8 * e + 4
    lo = tl.load(t_ptr + rows + ((words >> lo_shift) & 0xF)).to(OUT_DTYPE)
    hi = tl.load(t_ptr + rows + ((words >> hi_shift) & 0xF)).to(OUT_DTYPE)
    if SCALED:
        lo = (lo.to(tl.float32) * s).to(OUT_DTYPE)
        hi = (hi.to(tl.float32) * s).to(OUT_DTYPE)
    return tl.join(lo, hi)


@triton.jit
def lut4_packed(words, t_ptr, rows, tw, s, OUT_DTYPE: tl.constexpr, INLINE_ASM: tl.constexpr, SCALED: tl.constexpr,
                MMA_WORDS: tl.constexpr = False):
    """``dequant4_packed`` for lookup-table codes: table[q] (* s) in OUT_DTYPE [BLOCK_N, 8 R], K columns in
    ``mma_k_order`` (natural words) or in natural k order (MMA_WORDS: the mma word order). tw:
    ``lut4_table_words`` (asm); t_ptr + rows [1, BLOCK_N] (in the words' row order): each channel's table
    (the interpreter's twin); s: fp32 [1 or R, BLOCK_N], used when SCALED."""
    if INLINE_ASM:
        if SCALED:
            if OUT_DTYPE == tl.float16:
                asm: tl.constexpr = LUT4H_F16 if MMA_WORDS else LUT4_F16
            else:
                asm: tl.constexpr = LUT4H_BF16 if MMA_WORDS else LUT4_BF16
            e0, e1, e2, e3 = tl.inline_asm_elementwise(
                asm, "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r",
                [words, tw[0], tw[1], tw[2], tw[3], tw[4], tw[5], tw[6], tw[7], _pair16(s, OUT_DTYPE)],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            asm_q: tl.constexpr = LUT4H_Q if MMA_WORDS else LUT4_Q
            e0, e1, e2, e3 = tl.inline_asm_elementwise(
                asm_q, "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r",
                [words, tw[0], tw[1], tw[2], tw[3], tw[4], tw[5], tw[6], tw[7]],
                dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        w = _asm_columns(e0, e1, e2, e3, OUT_DTYPE)
    else:
        w = _mma_columns(_lut_pair(words, 0, t_ptr, rows, s, OUT_DTYPE, SCALED, MMA_WORDS),
                         _lut_pair(words, 1, t_ptr, rows, s, OUT_DTYPE, SCALED, MMA_WORDS),
                         _lut_pair(words, 2, t_ptr, rows, s, OUT_DTYPE, SCALED, MMA_WORDS),
                         _lut_pair(words, 3, t_ptr, rows, s, OUT_DTYPE, SCALED, MMA_WORDS))
    return w


@triton.jit
def mma_slots_to_natural(t, BLOCK_K: tl.constexpr, P: tl.constexpr):
    """Rows of a [BLOCK_K, ...] tile in mma word-order storage slots -> natural k order
    (``lowbit.formats.intx.mma_natural_k``; a register reorder, BLOCK_K a multiple of 128 / P)."""
    H: tl.constexpr = 16 // P
    t = tl.reshape(t, (BLOCK_K // (128 // P), 4, 2, H // 2, 2, t.shape[1]))  # [p, c, b, st, a, m]
    return tl.reshape(tl.permute(t, (0, 3, 4, 1, 2, 5)), (BLOCK_K, t.shape[5]))


@triton.jit
def mma_k_order(t, BLOCK_K: tl.constexpr):
    """Rows of a [BLOCK_K, ...] tile in natural k order -> the column order of ``dequant4_packed``."""
    t = tl.reshape(t, (BLOCK_K // 32, 4, 2, 2, 2, t.shape[1]))  # [p, c, st, a, b, m]
    return tl.reshape(tl.permute(t, (0, 2, 3, 1, 4, 5)), (BLOCK_K, t.shape[5]))


@triton.jit
def fragment_channels(v, ROW_REPS: tl.constexpr):
    """``fragment_rows`` of a per-channel vector [BLOCK_N] (offsets, masks, scales, zeros)."""
    return tl.reshape(fragment_rows(v[None, :], ROW_REPS), (v.shape[0],))


@triton.jit
def fragment_rows(t, ROW_REPS: tl.constexpr):
    """Columns of t [R, BLOCK_N] in natural channel order -> the row order of a Hopper MMA
    accumulator whose warps tile BLOCK_N in 16-row slices (ROW_REPS slices per warp): logical row
    ((a * WM + w) * 2 + h) * 8 + r holds channel ((w * 8 + r) * ROW_REPS + a) * 2 + h, so the
    2 * ROW_REPS rows one thread holds are consecutive channels (vector loads along N)."""
    R: tl.constexpr = t.shape[0]
    BN: tl.constexpr = t.shape[1]
    WM: tl.constexpr = BN // (16 * ROW_REPS)
    t = tl.reshape(t, (R, WM, 8, ROW_REPS, 2))  # [., w, r, a, h]
    return tl.reshape(tl.permute(t, (0, 3, 1, 4, 2)), (R, BN))
