"""HQQ -> intx.

Fixtures come from the real packer: pip ``hqq`` (``Quantizer.quantize`` with its proximal
optimizer, and ``HQQLinear``'s state dict, the format transformers saves). The oracle is
``Quantizer.dequantize`` with compute_dtype fp32 and scale/zero widened to fp32 (HQQ's own fp16
path rounds (q - z) before the multiply, so only the fp32 formula is exact; see docs/checkpoints.md).
"""
import warnings

import pytest
import torch

from lowbit import FormatError
from lowbit.convert import hqq_state_dict_to_intx, hqq_to_intx
from lowbit.ops import intx_linear

from helpers import assert_close_matmul

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    hqq_quantize = pytest.importorskip("hqq.core.quantize", reason="needs hqq (test extra)")

Quantizer = hqq_quantize.Quantizer

N, K = 64, 256


def real_hqq(nbits, group_size, view_as_float=False, dtype=torch.float16, seed=0, k=K):
    w = torch.randn(N, k, generator=torch.Generator().manual_seed(seed))
    w_q, meta = Quantizer.quantize(w, nbits=nbits, group_size=group_size, optimize=True, axis=1,
                                   device="cpu", view_as_float=view_as_float, compute_dtype=dtype)
    meta["scale"], meta["zero"] = meta["scale"].to(dtype), meta["zero"].to(dtype)  # as HQQLinear stores them
    return w_q, meta


def oracle(w_q, meta):
    m = dict(meta, compute_dtype=torch.float32, scale=meta["scale"].float(), zero=meta["zero"].float())
    return Quantizer.dequantize(w_q, m)


@pytest.mark.parametrize("view_as_float", [False, True])
@pytest.mark.parametrize("nbits,group_size", [
    (8, 64), (6, 64), (5, None), (4, 64), (4, 128), (4, None), (3, 64), (2, 64), (1.58, 32), (1, 64), (1, None)])
def test_real_packer_round_trip_bit_identical(nbits, group_size, view_as_float):
    w_q, meta = real_hqq(nbits, group_size, view_as_float)
    weight = hqq_to_intx(w_q, meta)
    assert weight.zero_kind == "float" and weight.scales.dtype == torch.float16
    assert weight.bits == (2 if nbits == 1.58 else nbits) and weight.group_size == group_size
    assert torch.equal(weight.dequantize(torch.float32), oracle(w_q, meta))


def test_hqqlinear_state_dict():
    hqq_linear = hqq_quantize.HQQLinear
    base = torch.nn.Linear(K, N)
    cfg = hqq_quantize.BaseQuantizeConfig(nbits=3, group_size=64, axis=1)
    layer = hqq_linear(base, cfg, compute_dtype=torch.bfloat16, device="cpu")
    weight, bias = hqq_state_dict_to_intx(layer.state_dict())  # meta entries in HQQ's tensor encoding
    assert weight.scales.dtype == torch.bfloat16 and bias.dtype == torch.bfloat16
    assert torch.equal(weight.dequantize(torch.float32), oracle(layer.W_q, layer.meta))


@pytest.mark.parametrize("nbits", [4, 3])
def test_converted_weights_run_through_kernels(nbits, monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    w_q, meta = real_hqq(nbits, 64, seed=5)
    weight = hqq_to_intx(w_q, meta)
    w = oracle(w_q, meta)
    x = torch.randn(3, K, generator=torch.Generator().manual_seed(3)).half()
    assert_close_matmul(intx_linear(x, weight), x.float() @ w.t(), x, w, torch.float16)


def test_errors_name_the_problem():
    w = torch.randn(N, K)
    w_q, meta = Quantizer.quantize(w, nbits=4, group_size=64, optimize=False, axis=0, device="cpu")
    with pytest.raises(FormatError, match="axis=0"):
        hqq_to_intx(w_q, meta)
    w_q, meta = real_hqq(4, 64)
    with pytest.raises(FormatError, match="expected"):
        hqq_to_intx(w_q[:-2], meta)
    with pytest.raises(FormatError, match="quant_scale"):
        hqq_to_intx(w_q, dict(meta, quant_scale=True))
    with pytest.raises(FormatError, match="nbits"):
        hqq_to_intx(w_q, dict(meta, nbits=7))
    w_q, meta = Quantizer.quantize(torch.randn(N, K), nbits=4, group_size=16, optimize=False, axis=1, device="cpu")
    with pytest.raises(FormatError, match="multiple of 32"):
        hqq_to_intx(w_q, meta)


def test_unpacked_and_default_packing():
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(8))
    w_q, meta = Quantizer.quantize(w, nbits=4, group_size=64, optimize=False, axis=1, device="cpu", bitpack=False)
    assert meta["packing"] is None  # codes stored unpacked, as floats
    assert torch.equal(hqq_to_intx(w_q, meta).dequantize(), oracle(w_q, meta))
    w_q, meta = real_hqq(4, 64)
    del meta["packing"]  # absent: HQQ's default packing for nbits
    assert torch.equal(hqq_to_intx(w_q, meta).dequantize(), oracle(w_q, dict(meta, packing="4bit_u8")))


@pytest.mark.parametrize("nbits", [4, 3])
def test_odd_group_count(nbits):
    w_q, meta = real_hqq(nbits, 64, k=192, seed=nbits)  # 3 groups per channel
    weight = hqq_to_intx(w_q, meta)
    assert weight.num_groups == 3 and weight.in_features == 192
    assert torch.equal(weight.dequantize(), oracle(w_q, meta))
