"""compressed-tensors ``pack-quantized`` -> intx.

Fixtures come from the real packer: pip ``compressed-tensors`` (``PackedQuantizationCompressor.compress``
with scales/zero points from its ``calculate_qparams``); the oracle is its ``decompress`` with fp32
scales. Two layouts the installed version no longer writes are built from our reading of the older
sources and say so: the legacy word-aligned packing of <= 0.17 and ``actorder: group`` g_idx.
"""
import warnings

import pytest
import torch

from lowbit import FormatError
from lowbit.convert import compressed_tensors_to_intx, packing_for_version, quant_linear

from helpers import assert_close_matmul

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ct_compressors = pytest.importorskip("compressed_tensors.compressors", reason="needs compressed-tensors (test extra)")
    ct_quant = pytest.importorskip("compressed_tensors.quantization", reason="needs compressed-tensors (test extra)")
    ct_utils = pytest.importorskip("compressed_tensors.quantization.utils")

Compressor = ct_compressors.PackedQuantizationCompressor
N, K = 96, 384


def real_ct(bits, strategy, symmetric, group_size=None, seed=0, n=N, k=K):
    args = ct_quant.QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                                     group_size=group_size)
    scheme = ct_quant.QuantizationScheme(targets=["Linear"], weights=args)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)).half()
    if strategy == "group":
        v = w.float().view(n, k // group_size, group_size)
        mn, mx = v.amin(-1), v.amax(-1)
    elif strategy == "channel":
        mn, mx = w.float().amin(-1, keepdim=True), w.float().amax(-1, keepdim=True)
    else:
        mn, mx = w.float().min().reshape(1), w.float().max().reshape(1)
    scale, zp = ct_utils.calculate_qparams(mn, mx, args)
    state = {"weight": w, "weight_scale": scale.half(), "weight_zero_point": zp.round().to(torch.int8)}
    return Compressor.compress(state, scheme), scheme, args


def oracle(compressed, scheme):
    state = dict(compressed, weight_scale=compressed["weight_scale"].float())
    return Compressor.decompress(state, scheme)["weight"]


def convert(c, args, **kw):
    return compressed_tensors_to_intx(
        c["weight_packed"], c["weight_scale"], c["weight_shape"], c.get("weight_zero_point"),
        num_bits=args.num_bits, strategy=args.strategy, group_size=args.group_size,
        symmetric=args.symmetric, **kw)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("strategy,group_size", [("group", 128), ("channel", None), ("tensor", None)])
@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_real_packer_round_trip_bit_identical(bits, strategy, group_size, symmetric):
    c, scheme, args = real_ct(bits, strategy, symmetric, group_size, seed=bits)
    weight, perm = convert(c, args)
    assert perm is None and weight.group_size == group_size
    assert weight.num_groups == (3 if strategy == "group" else 1)  # K=384 / 128: odd group count
    assert (weight.zeros is None) == (symmetric and bits > 1)
    assert torch.equal(weight.dequantize(torch.float32), oracle(c, scheme))


def _legacy_pack(u, bits):
    """compressed-tensors <= 0.17 ``pack_to_int32`` as we read it: 32 // bits unsigned values per
    word along the last dim, value i at bit (i % per) * bits, the last word zero-padded."""
    per = 32 // bits
    rows, cols = u.shape
    padded = torch.zeros(rows, -(-cols // per) * per, dtype=torch.int64)
    padded[:, :cols] = u
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (padded.view(rows, -1, per) << shifts).sum(-1)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def test_legacy_word_aligned_packing():
    # Spec fixture (legacy layout written by hand); codes/zeros/scales from the real compressor,
    # oracle its real decompress.
    bits = 3
    c, scheme, args = real_ct(bits, "group", False, 128, seed=4)
    q = ct_compressors.unpack_from_int32(c["weight_packed"], bits, (N, K))  # signed codes
    zp = ct_compressors.unpack_from_int32(c["weight_zero_point"], bits, (N, 3), packed_dim=0)
    legacy = dict(c, weight_packed=_legacy_pack(q.long() + 4, bits),
                  weight_zero_point=_legacy_pack(zp.long().t() + 4, bits).t().contiguous())
    assert legacy["weight_packed"].shape[1] == 39 and c["weight_packed"].shape[1] == 36  # 384/10 vs 384*3/32
    weight, _ = convert(legacy, args)  # "auto" tells the layouts apart by their word counts
    assert torch.equal(weight.dequantize(), oracle(c, scheme))
    weight, _ = convert(legacy, args, packing=packing_for_version("0.17.1"))
    assert torch.equal(weight.dequantize(), oracle(c, scheme))
    with pytest.raises(FormatError, match="weight_packed must have shape"):
        convert(legacy, args, packing="dense")


def test_packing_detection_refuses_ambiguous_shapes():
    c, scheme, args = real_ct(3, "channel", True, n=32, k=10)  # 10 values: 1 word either way
    with pytest.raises(FormatError, match="cannot tell"):
        convert(c, args)
    weight, _ = convert(c, args, packing="dense")
    assert torch.equal(weight.dequantize(), oracle(c, scheme))
    assert packing_for_version("0.20.0") == "dense" and packing_for_version("0.12.2") == "legacy"


def test_actorder_group_g_idx(monkeypatch):
    # Spec fixture: compressed-tensors 0.20 dropped ``actorder: group``; per the 0.17 sources a
    # layer with weight_g_idx dequantizes x_q[:, argsort(g_idx)] with contiguous groups and undoes
    # the permutation. Packed tensors come from the real compressor; the oracle applies that
    # permutation around the real dequantize.
    c, scheme, args = real_ct(4, "group", False, 128, seed=9)
    order = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    g_idx = torch.empty(K, dtype=torch.int32)
    g_idx[order] = (torch.arange(K) // 128).to(torch.int32)
    weight, perm = compressed_tensors_to_intx(
        c["weight_packed"], c["weight_scale"], c["weight_shape"], c["weight_zero_point"], g_idx,
        num_bits=4, strategy="group", group_size=128, symmetric=False)
    q = ct_compressors.unpack_from_int32(c["weight_packed"], 4, (N, K))
    zp = ct_compressors.unpack_from_int32(c["weight_zero_point"], 4, (N, 3), packed_dim=0)
    sorted_cols = torch.argsort(g_idx)
    deq = ct_quant.dequantize(q[:, sorted_cols], c["weight_scale"].float(), zp, args)
    expected = deq[:, torch.argsort(sorted_cols)]
    w_orig = weight.dequantize()[:, torch.argsort(perm)]
    assert torch.equal(w_orig, expected)

    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    x = torch.randn(2, K, generator=torch.Generator().manual_seed(1)).half()
    assert_close_matmul(quant_linear(weight, perm)(x), x.float() @ expected.t(), x, expected, torch.float16)

    placeholder = torch.full((K,), -1, dtype=torch.int32)  # compressed-tensors' "column order"
    _, perm = compressed_tensors_to_intx(
        c["weight_packed"], c["weight_scale"], c["weight_shape"], c["weight_zero_point"], placeholder,
        num_bits=4, strategy="group", group_size=128, symmetric=False)
    assert perm is None


@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False), (3, False)])
def test_converted_weights_run_through_kernels(bits, symmetric, monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    c, scheme, args = real_ct(bits, "group", symmetric, 128, seed=2)
    weight, perm = convert(c, args)
    w = oracle(c, scheme)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(4)).half()
    assert_close_matmul(quant_linear(weight, perm)(x), x.float() @ w.t(), x, w, torch.float16)


def test_errors_name_the_problem():
    c, scheme, args = real_ct(4, "group", False, 128)
    with pytest.raises(FormatError, match="needs weight_zero_point"):
        compressed_tensors_to_intx(c["weight_packed"], c["weight_scale"], c["weight_shape"],
                                   num_bits=4, strategy="group", group_size=128, symmetric=False)
    with pytest.raises(FormatError, match="strategy must be one of"):
        convert(c, args.model_copy(update={"strategy": "block"}))
    with pytest.raises(FormatError, match="weight_scale must have shape"):
        compressed_tensors_to_intx(c["weight_packed"], c["weight_scale"][:, :2], c["weight_shape"],
                                   c["weight_zero_point"], num_bits=4, strategy="group", group_size=128,
                                   symmetric=False)
    sym, _, sym_args = real_ct(4, "group", True, 128)
    with pytest.raises(FormatError, match="non-zero"):
        compressed_tensors_to_intx(sym["weight_packed"], sym["weight_scale"], sym["weight_shape"],
                                   torch.ones(N, 3, dtype=torch.int8), num_bits=4, strategy="group",
                                   group_size=128, symmetric=True)
