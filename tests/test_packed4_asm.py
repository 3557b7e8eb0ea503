"""The inline PTX of the packed dequantizers, executed on CPU by ``ptx_emu`` against plain torch:
4-bit table lookups (``unpack.LUT4_*``), the 4-bit affine magic-number path (``unpack.DEQUANT4_*``) and
the 1/2/4/8-bit affine paths of the mma word order (``unpack.DEQUANT_FIELDS``)."""
import pytest
import torch
import triton
import triton.language as tl

from lowbit.formats.lut import fp4_table, nf4_table
from lowbit.kernels import unpack

import ptx_emu
from helpers import DEVICE, KERNEL_DTYPES

DTYPES = {"f16x2": torch.float16, "bf16x2": torch.bfloat16}


def _bits16(v: torch.Tensor) -> list:
    return (v.view(torch.int16).to(torch.int32) & 0xFFFF).tolist()


def _table_words(table: torch.Tensor) -> list:
    """Host mirror of ``unpack.lut4_table_words``: low bytes of entries 0-3 .. 12-15, then the high bytes."""
    b = _bits16(table)
    lo = [sum((b[4 * p + i] & 0xFF) << (8 * i) for i in range(4)) for p in range(4)]
    hi = [sum((b[4 * p + i] >> 8) << (8 * i) for i in range(4)) for p in range(4)]
    return lo + hi


def _words(seed: int, n: int = 64) -> list:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(0, 1 << 32, (n,), generator=g, dtype=torch.int64).tolist()
    return w + [0, 0xFFFFFFFF, 0x76543210, 0xFEDCBA98, 0x88888888, 0x7F7F7F7F]  # every code, both halves


def _pair(lo: float, hi: float, dtype) -> int:
    b = _bits16(torch.tensor([lo, hi], dtype=torch.float64).to(dtype))
    return b[0] | (b[1] << 16)


@pytest.mark.parametrize("table_name", ["nf4", "fp4", "random"])
@pytest.mark.parametrize("dt", ["f16x2", "bf16x2"])
def test_lut4_asm_looks_up_every_code(table_name, dt):
    dtype = DTYPES[dt]
    table = {"nf4": nf4_table(), "fp4": fp4_table(),
             "random": torch.randn(16, generator=torch.Generator().manual_seed(1)) * 3}[table_name].reshape(16).to(dtype)
    tw = _table_words(table)
    bits = _bits16(table)
    scale = torch.tensor(0.0371, dtype=dtype)
    scaled = [(table[i].double() * scale.double()).to(dtype) for i in range(16)]
    # natural words: register e = codes (2e, 2e + 1); the mma word order: codes (e, 4 + e)
    for order, pair in (("byte", lambda e: (2 * e, 2 * e + 1)), ("half", lambda e: (e, 4 + e))):
        asm_q = unpack.LUT4_Q if order == "byte" else unpack.LUT4H_Q
        asm_scaled = {("byte", "f16x2"): unpack.LUT4_F16, ("byte", "bf16x2"): unpack.LUT4_BF16,
                      ("half", "f16x2"): unpack.LUT4H_F16, ("half", "bf16x2"): unpack.LUT4H_BF16}[(order, dt)]
        for word in _words(7):
            codes = [(word >> (4 * j)) & 0xF for j in range(8)]
            out = ptx_emu.run(asm_q.value, [word] + tw, 4)
            assert out == [bits[codes[pair(e)[0]]] | (bits[codes[pair(e)[1]]] << 16) for e in range(4)], (order, hex(word))
            out = ptx_emu.run(asm_scaled.value, [word] + tw + [_pair(scale, scale, dtype)], 4)
            want = [_bits16(scaled[codes[pair(e)[0]]].reshape(1))[0] | (_bits16(scaled[codes[pair(e)[1]]].reshape(1))[0] << 16)
                    for e in range(4)]
            assert out == want, (order, hex(word))


@pytest.mark.parametrize("dt", ["f16x2", "bf16x2"])
def test_dequant4_asm_matches_affine(dt):
    dtype = DTYPES[dt]
    magic = 1024.0 if dt == "f16x2" else 128.0
    s, z = torch.tensor(0.0213, dtype=dtype).double(), 9.0
    for scaled in (True, False):
        asm = {("f16x2", True): unpack.DEQUANT4_F16, ("f16x2", False): unpack.DEQUANT4_F16_Q,
               ("bf16x2", True): unpack.DEQUANT4_BF16, ("bf16x2", False): unpack.DEQUANT4_BF16_Q}[(dt, scaled)]
        for word in _words(3, 16):
            codes = [(word >> (4 * j)) & 0xF for j in range(8)]
            out = ptx_emu.run(asm.value, [word, _pair(s, s, dtype), _pair(-(z + magic), -(z + magic), dtype)], 4)
            f = (lambda q: (q - z) * s) if scaled else (lambda q: q - z)
            assert out == [_pair(f(codes[2 * e]), f(codes[2 * e + 1]), dtype) for e in range(4)], hex(word)


@triton.jit
def _table_words_kernel(t_ptr, out_ptr, OUT_DTYPE: tl.constexpr, ROW_REPS: tl.constexpr):
    offs_n = tl.arange(0, 64)
    tw = unpack.lut4_table_words(t_ptr, offs_n * 0, offs_n < 64, OUT_DTYPE, ROW_REPS)  # [1, 64], one value repeated
    for i in tl.static_range(8):
        tl.store(out_ptr + i * 64 + offs_n[None, :], tw[i])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)  # the interpreter rounds fp32 -> bf16 differently
def test_kernel_table_words_match_the_asm_operands(dtype):
    """``unpack.lut4_table_words`` (in the kernel, from the fp32 table) builds the operands the asm above
    was checked with: entries rounded to the activation dtype, split into low / high byte registers."""
    table = torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    want = [w - (1 << 32) if w >= 1 << 31 else w for w in _table_words(table.reshape(16).to(dtype))]
    for row_reps in (0, 1):
        out = torch.zeros(8, 64, dtype=torch.int32, device=DEVICE)
        _table_words_kernel[(1,)](table, out, tl.float16 if dtype == torch.float16 else tl.bfloat16, row_reps)
        assert out.tolist() == [[w] * 64 for w in want]


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("dt", ["f16x2", "bf16x2"])
@pytest.mark.parametrize("scaled", [True, False], ids=["scaled", "q-z"])
def test_dequant_fields_asm_matches_affine(bits, dt, scaled):
    """Register e of the 1/2/4/8-bit asm = fields e and H + e of the word (H = 16 / bits), (q - z) * s rounded
    once to the output dtype (or q - z exactly), for every code value, the largest zero point and a
    mid one."""
    dtype = DTYPES[dt]
    h = 16 // bits
    s = torch.tensor(0.0213, dtype=dtype).double()
    asm = unpack.DEQUANT_FIELDS[(bits, dt, scaled)].value
    for z in (float(2 ** bits - 1), float(2 ** (bits - 1))):
        if bits == 8 and dt == "bf16x2":
            ops = [ptx_emu._f32_bits(float(s)), ptx_emu._f32_bits(z + 2.0 ** 23)]
        else:
            magic = 1024.0 if dt == "f16x2" else 128.0
            ops = [_pair(s, s, dtype), _pair(-(z + magic), -(z + magic), dtype)]
        for word in _words(5, 24):
            codes = [(word >> (bits * j)) & ((1 << bits) - 1) for j in range(32 // bits)]
            out = ptx_emu.run(asm, [word] + ops, h)
            f = (lambda q: (q - z) * float(s)) if scaled else (lambda q: q - z)
            assert out == [_pair(f(codes[e]), f(codes[h + e]), dtype) for e in range(h)], (hex(word), z)
