import pytest
import torch
from hypothesis import given, settings, strategies as st

from lowbit import FormatError, IntxFormat, IntxWeight
from lowbit.formats.intx import bit_planes, pack, padded_k, symmetric_zero, unpack

ALL_BITS = list(range(1, 9))
GROUPS = [32, 64, 128, 256, None]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_bit_planes_are_powers_of_two_summing_to_bits(bits):
    planes = bit_planes(bits)
    assert sum(planes) == bits
    assert all(p in (1, 2, 4, 8) for p in planes)
    assert planes == sorted(planes, reverse=True)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("n,kp", [(1, 32), (7, 96), (33, 256), (5, 1024)])
def test_pack_unpack_round_trip_bit_exact(bits, n, kp):
    g = torch.Generator().manual_seed(bits * 1000 + n)
    codes = torch.randint(0, 2**bits, (n, kp), generator=g, dtype=torch.int64).to(torch.uint8)
    qw = pack(codes, bits)
    assert qw.dtype == torch.int32 and tuple(qw.shape) == (kp * bits // 32, n)
    assert torch.equal(unpack(qw, bits, kp), codes)


def test_pack_4bit_is_sequential_nibbles_low_first():
    # k = 0..7 of column 0 hold codes 1..8: the word must read 0x87654321 (GPTQ order).
    codes = torch.zeros(2, 32, dtype=torch.uint8)
    codes[0, :8] = torch.arange(1, 9, dtype=torch.uint8)
    qw = pack(codes, 4)
    assert qw[0, 0].item() == -((0x87654321 ^ 0xFFFFFFFF) + 1)  # int32 view of 0x87654321
    assert qw[0, 1].item() == 0 and qw[1:, 0].abs().sum() == 0


def test_pack_3bit_planes_layout():
    # 3 bits = 2-bit plane (low bits, 16 per word) then 1-bit plane (high bit, 32 per word).
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 1] = 0b101  # low bits 01 at k=1 -> plane0 word0 bits 2..3; high bit -> plane1 bit 1
    codes[0, 17] = 0b010  # low bits 10 at k=17 -> plane0 word1 bits 2..3
    qw = pack(codes, 3)
    assert tuple(qw.shape) == (3, 1)
    assert qw[:, 0].tolist() == [0b01 << 2, 0b10 << 2, 1 << 1]


@pytest.mark.parametrize("bits", ALL_BITS)
def test_pack_rejects_out_of_range_codes(bits):
    codes = torch.full((2, 32), 2**bits, dtype=torch.int64)
    if 2**bits > 255:
        codes = codes.clamp(max=300)
    with pytest.raises(FormatError):
        pack(codes, bits)


@pytest.mark.parametrize("bits", ALL_BITS)
@pytest.mark.parametrize("group_size", GROUPS)
@pytest.mark.parametrize("symmetric,zero_kind", [(False, "int"), (True, "int"), (False, "float")])
def test_quantize_error_within_half_scale(bits, group_size, symmetric, zero_kind):
    n, k = 9, 300  # K not a multiple of any group size: last group partial
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(bits)) * 0.02
    w[0, :50] += 0.05  # one-sided group (asym int zeros must include 0 in the range)
    qw = IntxFormat(bits, group_size, symmetric, zero_kind, torch.float32).quantize(w)
    gl = qw.group_len
    s = qw.scales.float().t().repeat_interleave(gl, dim=1)[:, :k]
    err = (qw.dequantize() - w).abs()
    assert (err <= s * 0.5 * (1 + 1e-5) + 1e-12).all(), (err / s).max()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quantize_low_precision_scales_keep_bound(dtype):
    w = torch.randn(16, 512, generator=torch.Generator().manual_seed(3))
    qw = IntxFormat(8, 128, False, "int", dtype).quantize(w)
    s = qw.scales.float().t().repeat_interleave(128, dim=1)
    assert ((qw.dequantize() - w).abs() <= s * 0.5 * (1 + 1e-5)).all()


def test_last_partial_group_is_kept_and_padded_with_zero_codes():
    w = torch.randn(4, 130)
    qw = IntxFormat(4, 128, False, "int", torch.float32).quantize(w)
    assert qw.padded_in_features == 256 and qw.num_groups == 2
    codes = qw.codes()
    assert (codes[:, 130:] == 0).all()
    # the 2-element last group has its own scale: error tiny compared to the first group's
    assert (qw.dequantize()[:, 128:] - w[:, 128:]).abs().max() <= qw.scales[1].max() / 2 + 1e-7


def test_symmetric_zero_points():
    assert symmetric_zero(4) == 8.0 and symmetric_zero(8) == 128.0 and symmetric_zero(1) == 0.5
    qw = IntxFormat(4, 32, True).quantize(torch.randn(3, 64))
    assert qw.zeros is None and qw.symmetric


def test_padded_k():
    assert padded_k(4096, 128) == 4096
    assert padded_k(4100, 128) == 4224
    assert padded_k(100, None) == 128
    assert padded_k(1, 32) == 32


@pytest.mark.parametrize("kwargs", [dict(bits=0), dict(bits=9), dict(bits=4.0), dict(group_size=48),
                                    dict(group_size=0), dict(zero_kind="half"),
                                    dict(scale_dtype=torch.int8)])
def test_bad_format_parameters_raise(kwargs):
    with pytest.raises(FormatError):
        IntxFormat(**kwargs)


def test_quantize_rejects_nonfinite_and_bad_shapes():
    with pytest.raises(FormatError):
        IntxFormat().quantize(torch.tensor([[float("nan")] * 32]))
    with pytest.raises(FormatError):
        IntxFormat().quantize(torch.randn(32))
    with pytest.raises(FormatError):
        IntxFormat().quantize(torch.randint(0, 3, (4, 32)))


def test_intx_weight_validates_packed_shapes():
    qw = IntxFormat(4, 128).quantize(torch.randn(8, 256))
    with pytest.raises(FormatError):
        IntxWeight(qw.qweight[:-1], qw.scales, qw.zeros, 4, 128, 256)
    with pytest.raises(FormatError):
        IntxWeight(qw.qweight, qw.scales[:1], qw.zeros, 4, 128, 256)
    with pytest.raises(FormatError):
        IntxWeight(qw.qweight, qw.scales, qw.zeros.to(torch.int32), 4, 128, 256)


def test_bytes_per_weight_are_ideal():
    n, k = 64, 4096
    for bits in ALL_BITS:
        qw = IntxFormat(bits, 128, True, scale_dtype=torch.float16).quantize(torch.randn(n, k))
        assert qw.qweight.numel() * 4 == n * k * bits // 8
        assert qw.ideal_nbytes() == n * k * bits // 8 + n * (k // 128) * 2


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 40), k=st.integers(1, 300),
       group=st.sampled_from(GROUPS), sym=st.booleans())
def test_quantize_dequantize_random_shapes(bits, n, k, group, sym):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * 1000 + k))
    qw = IntxFormat(bits, group, sym, "int", torch.float32).quantize(w)
    assert torch.equal(pack(qw.codes(), bits), qw.qweight)
    s = qw.scales.float().t().repeat_interleave(qw.group_len, dim=1)[:, :k]
    assert ((qw.dequantize() - w).abs() <= s * 0.5 * (1 + 1e-5) + 1e-12).all()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_word_order_conversion_in_column_chunks(bits, monkeypatch):
    """to/from_mma_words convert a few columns at a time (bounded temporaries): same words as one whole-matrix
    pass, for ragged last chunks and stacked experts."""
    import lowbit.formats.intx as intx

    gen = torch.Generator().manual_seed(bits)
    codes = torch.randint(0, 2 ** bits, (3, 37, 256), generator=gen)
    q = torch.stack([intx.pack(c, bits) for c in codes])  # (3, 256*bits/32, 37)
    whole = intx.to_mma_words(q, bits)
    monkeypatch.setattr(intx, "CONVERT_CHUNK_WORDS", q.shape[1] * 5)  # 5 columns per chunk: 8 chunks, the last of 2
    chunked = intx.to_mma_words(q, bits)
    assert torch.equal(chunked, whole) and torch.equal(intx.to_mma_words(q[1], bits), whole[1])
    assert torch.equal(intx.from_mma_words(chunked, bits), q)
