"""AWQ -> intx.

Fixtures come from real packers: AutoAWQ's ``WQLinear_GEMM.from_linear`` (pip ``autoawq``, 4 bits)
and AutoRound's AWQ export ``WQLinear_GEMM`` (pip ``auto-round``, 5/6/7 bits over the generic bit
stream). The oracles are the projects' own ``dequantize_gemm`` run with fp32 scales.
"""
import warnings

import pytest
import torch

from lowbit import FormatError
from lowbit.convert import awq_to_intx
from lowbit.convert.awq import awq_deinterleave
from lowbit.ops import intx_linear

from helpers import DEVICE, assert_close_matmul

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    awq_gemm = pytest.importorskip("awq.modules.linear.gemm", reason="needs autoawq (test extra)")
    awq_packing = pytest.importorskip("awq.utils.packing_utils", reason="needs autoawq (test extra)")
    ar_awq = pytest.importorskip("auto_round.export.export_to_awq.utils", reason="needs auto-round (test extra)")


def _min_max(w, group_size, bits):
    n, k = w.shape
    v = w.view(n, k // group_size, group_size)
    mn, mx = v.amin(-1), v.amax(-1)
    s = ((mx - mn) / (2**bits - 1)).half().float()
    z = torch.round(-mn / s).clamp(0, 2**bits - 1)
    return s.t().contiguous(), z.t().contiguous()  # (G, N), as the AWQ packers take them


def real_awq_layer(bits, group_size, k=384, n=64, seed=0):
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    s, z = _min_max(lin.weight.data, group_size, bits)
    if bits == 4:
        layer, deq = awq_gemm.WQLinear_GEMM.from_linear(lin, 4, group_size, scales=s, zeros=z), awq_packing.dequantize_gemm
    else:
        layer, deq = ar_awq.WQLinear_GEMM.from_linear(lin, bits, group_size, scales=s, zeros=z), ar_awq.dequantize_gemm
    for name in ("qweight", "qzeros", "scales"):  # the packers may leave buffers on the GPU when there is one
        setattr(layer, name, getattr(layer, name).cpu())
    return layer, deq


def oracle(layer, deq, bits, group_size, scale_dtype=torch.float32):
    """The project's dequantize_gemm: (K, N) -> (N, K)."""
    return deq(layer.qweight, layer.qzeros, layer.scales.to(scale_dtype), bits, group_size).t()


@pytest.mark.parametrize("bits", [4, 5, 6, 7])
@pytest.mark.parametrize("group_size", [128, 384])
def test_real_packer_round_trip_bit_identical(bits, group_size):
    # K=384: group 128 gives 3 groups (odd count); group 384 is one group per channel.
    layer, deq = real_awq_layer(bits, group_size, seed=bits)
    weight = awq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=bits, group_size=group_size)
    assert weight.zeros.dtype == torch.uint8 and weight.num_groups == 384 // group_size
    assert torch.equal(weight.dequantize(torch.float32), oracle(layer, deq, bits, group_size))
    # AutoAWQ's own fp16 dequantization is the fp32 result rounded once: ours cast to fp16 equals it.
    assert torch.equal(weight.dequantize(torch.float16), oracle(layer, deq, bits, group_size, torch.float16))


def test_interleave_order_in_one_word():
    # Channel n of every k holds code n % 8 + 1 (scale 1, zero 0). AutoAWQ stores slot i <- channel
    # [0, 2, 4, 6, 1, 3, 5, 7][i], so each word reads (high to low nibble) 8 6 4 2 7 5 3 1.
    k, n = 128, 32  # AutoAWQ's packer needs N % 32 == 0
    lin = torch.nn.Linear(k, n, bias=False)
    codes = torch.arange(n) % 8 + 1
    lin.weight.data = codes.float().repeat(k, 1).t().contiguous()
    s, z = torch.ones(1, n), torch.zeros(1, n)
    layer = awq_gemm.WQLinear_GEMM.from_linear(lin, 4, k, scales=s, zeros=z)
    assert (layer.qweight[0, 0].item() & 0xFFFFFFFF) == 0x86427531
    weight = awq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=k)
    assert torch.equal(weight.codes()[:, 0], codes.to(torch.uint8))
    assert torch.equal(awq_deinterleave(torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])), torch.arange(8))


@pytest.mark.parametrize("bits", [4, 6])
def test_converted_weights_run_through_kernels(bits, monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    layer, deq = real_awq_layer(bits, 128, seed=11)
    weight = awq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=bits, group_size=128)
    w = oracle(layer, deq, bits, 128).to(DEVICE)
    x = torch.randn(3, 384, generator=torch.Generator().manual_seed(2)).half().to(DEVICE)
    assert_close_matmul(intx_linear(x, weight.to(DEVICE)), x.float() @ w.t(), x, w, torch.float16)


def test_errors_name_the_problem():
    layer, _ = real_awq_layer(4, 128)
    args = (layer.qweight, layer.qzeros, layer.scales)
    with pytest.raises(FormatError, match="version 'gemm'"):
        awq_to_intx(*args, bits=4, group_size=128, version="gemv")
    with pytest.raises(FormatError, match="bits must be one of"):
        awq_to_intx(*args, bits=3, group_size=128)
    with pytest.raises(FormatError, match="scales must have shape"):
        awq_to_intx(*args, bits=4, group_size=64)
    with pytest.raises(FormatError, match="qzeros must have shape"):
        awq_to_intx(layer.qweight, layer.qzeros[:2], layer.scales, bits=4, group_size=128)
    with pytest.raises(FormatError, match="2-D int32"):
        awq_to_intx(layer.qweight.float(), layer.qzeros, layer.scales, bits=4, group_size=128)
