"""Shared converter pieces, from our reading of the layouts (no external packer): bit-stream and
word-aligned unpacking at exact bit positions, act-order permutations, zero-point storage."""
import pytest
import torch

from lowbit import FormatError
from lowbit.convert import PermutedQuantLinear, quant_linear
from lowbit.convert._common import group_permutation, intx_from_codes, unpack_bitstream, unpack_word_aligned
from lowbit.formats.intx import IntxFormat


def _words(*uints):
    return torch.tensor([[u - 2**32 if u >= 2**31 else u for u in uints]], dtype=torch.int32)


def test_bitstream_3bit_values_straddle_words():
    # 32 values of 3 bits in 3 words: value 10 = bits 30..32 (word 0 bits 30-31, word 1 bit 0),
    # value 21 = bits 63..65 (word 1 bit 31, word 2 bits 0-1).
    vals = torch.arange(32) % 8
    stream = sum(int(v) << (3 * i) for i, v in enumerate(vals.tolist()))
    words = _words(stream & 0xFFFFFFFF, (stream >> 32) & 0xFFFFFFFF, (stream >> 64) & 0xFFFFFFFF)
    assert torch.equal(unpack_bitstream(words, 3, 32)[0], vals.to(torch.uint8))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_bitstream_equals_word_aligned_for_power_of_two_bits(bits):
    words = torch.randint(-2**31, 2**31, (3, 5), dtype=torch.int64).to(torch.int32)
    count = 5 * 32 // bits
    assert torch.equal(unpack_bitstream(words, bits, count), unpack_word_aligned(words, bits, count))


def test_word_aligned_leaves_top_bits_unused():
    vals = [3, 4, 5, 6, 7, 0, 1, 2, 3, 4]
    word = sum(v << (3 * i) for i, v in enumerate(vals)) | (0b11 << 30)  # 10 values, 2 junk bits on top
    assert unpack_word_aligned(_words(word), 3, 10)[0].tolist() == vals


def test_group_permutation():
    assert group_permutation(torch.arange(96) // 32, 96, 32) is None
    g_idx = (torch.arange(64) >= 40).long()  # 40 columns in group 0, 24 in group 1
    with pytest.raises(FormatError, match=r"exactly group_size=32 columns \(counts \[40, 24\]\)"):
        group_permutation(g_idx, 64, 32)
    g_idx = (torch.arange(64) // 32).flip(0)  # columns 0..31 in group 1, 32..63 in group 0
    perm = group_permutation(g_idx, 64, 32)
    assert torch.equal(perm, torch.cat([torch.arange(32, 64), torch.arange(32)]))
    with pytest.raises(FormatError, match=r"values must lie in \[0, 2\)"):
        group_permutation(torch.full((64,), 5), 64, 32)


def test_zero_points_outside_uint8_range_become_exact_floats():
    codes = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    scales = torch.rand(2, 8).half()
    w = intx_from_codes(codes, scales, torch.full((2, 8), 16), 4, 32)
    assert w.zeros.dtype == torch.float16 and bool((w.zeros == 16).all())
    assert intx_from_codes(codes, scales, torch.full((2, 8), 15), 4, 32).zeros.dtype == torch.uint8
    with pytest.raises(FormatError, match="not exactly representable"):
        intx_from_codes(codes, scales, torch.full((2, 8), 4099), 4, 32)
    with pytest.raises(FormatError, match="out of range"):
        intx_from_codes(codes * 2, scales, None, 4, 32)


def test_permuted_quant_linear_applies_perm_to_x():
    torch.manual_seed(0)
    w = IntxFormat(4, 32, False, "int", torch.float16).quantize(torch.randn(16, 64))
    perm = torch.randperm(64)
    module = quant_linear(w, perm)
    assert isinstance(module, PermutedQuantLinear) and "permuted" in repr(module)
    x = torch.randn(2, 64).half()
    assert torch.equal(module(x), quant_linear(w)(x[:, perm]))
    with pytest.raises(FormatError, match="permutation"):
        PermutedQuantLinear(w, torch.zeros(64, dtype=torch.int64))
    with pytest.raises(FormatError, match="length in_features"):
        PermutedQuantLinear(w, torch.arange(63))
