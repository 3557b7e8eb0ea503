"""GPTQ -> intx.

Fixtures come from a real packer: AutoRound's GPTQ QuantLinear (pip ``auto-round``), whose
``qlinear_torch_zp`` is AutoGPTQ's packer ported (v1 checkpoints: qzeros hold z - 1) and whose
``qlinear_torch`` writes GPTQModel's v2 convention (qzeros hold z). The oracle is that module's own
torch forward (AutoGPTQ's dequantization formula, g_idx-aware) run in fp32 on an identity input.
Tests that edit the packed tensors by hand (act-order g_idx, a wrapped v1 zero point) say so.
"""
import math

import pytest
import torch

from lowbit import FormatError
from lowbit.convert import PermutedQuantLinear, gptq_to_intx, quant_linear
from lowbit.ops import intx_linear

from helpers import DEVICE, assert_close_matmul

qlinear_v1 = pytest.importorskip("auto_round_extension.torch.qlinear_torch_zp", reason="needs auto-round (test extra)")
qlinear_v2 = pytest.importorskip("auto_round_extension.torch.qlinear_torch", reason="needs auto-round (test extra)")

PACKERS = {"gptq": qlinear_v1.QuantLinear, "gptq_v2": qlinear_v2.QuantLinear}


def real_gptq_layer(bits, group_size, k=320, n=64, fmt="gptq", sym=False, seed=0):
    """Pack a random layer with the real GPTQ packer; min-max scales/zeros per group."""
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data = torch.randn(n, k, generator=g)
    gl = k if group_size == -1 else group_size
    groups = math.ceil(k / gl)
    wp = torch.zeros(n, groups * gl)
    wp[:, :k] = lin.weight.data
    mn, mx = wp.view(n, groups, gl).amin(-1), wp.view(n, groups, gl).amax(-1)
    maxq = 2**bits - 1
    if sym:
        s = (torch.maximum(mn.abs(), mx.abs()) * 2 / maxq).half().float()
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        s = ((mx - mn) / maxq).half().float()
        z = torch.round(-mn / s).clamp(0, maxq)
    layer = PACKERS[fmt](bits, group_size, k, n, False, g_idx=True)
    layer.device = torch.device("cpu")  # auto-round's v2 packer reads self.device, which nn.Module lacks
    layer.pack(lin, s, z)
    return layer


def oracle(layer):
    """The packer module's own dequantization (its torch forward), in fp32: (N, K)."""
    fp16_scales = layer.scales
    layer.scales = fp16_scales.float()
    try:
        with torch.no_grad():
            return layer(torch.eye(layer.infeatures)).t()
    finally:
        layer.scales = fp16_scales


def run_kernels(weight, perm, w_dense, monkeypatch, m=3):
    """intx kernels (Triton interpreter on CPU, the GPU when there is one) vs the fp32 reference."""
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    k = w_dense.shape[1]
    weight, w_dense = weight.to(DEVICE), w_dense.to(DEVICE)
    perm = None if perm is None else perm.to(DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).half().to(DEVICE)
    module = quant_linear(weight, perm)
    y = module(x)
    ref = x.float() @ w_dense.t()
    assert_close_matmul(y, ref, x, w_dense, torch.float16)
    if perm is not None:
        assert isinstance(module, PermutedQuantLinear)
        assert_close_matmul(intx_linear(x[..., perm], weight), ref, x, w_dense, torch.float16)


@pytest.mark.parametrize("fmt", ["gptq", "gptq_v2"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_real_packer_round_trip_bit_identical(bits, fmt):
    # K=320, group 128: 3 groups, the last one partial (the odd-group-count case).
    layer = real_gptq_layer(bits, 128, fmt=fmt, seed=bits)
    weight, perm = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, bits=bits,
                                group_size=128, checkpoint_format=fmt)
    assert perm is None and weight.in_features == 320 and weight.num_groups == 3
    assert weight.zeros.dtype == torch.uint8 and weight.scales.dtype == torch.float16
    assert torch.equal(weight.dequantize(torch.float32), oracle(layer))


def test_off_by_one_convention_matters():
    layer = real_gptq_layer(4, 128, fmt="gptq")
    v1, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=128, checkpoint_format="gptq")
    v2, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=128,
                         checkpoint_format="gptq_v2")
    assert torch.equal(v1.zeros.int(), v2.zeros.int() + 1)
    assert not torch.equal(v2.dequantize(), oracle(layer))


def test_4bit_qweight_is_intx_layout_unchanged():
    layer = real_gptq_layer(4, 128, fmt="gptq_v2")
    weight, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=128,
                             checkpoint_format="gptq_v2")
    rows = layer.qweight.shape[0]  # 320 / 8 = 40; intx pads K to 384 with zero codes
    assert torch.equal(weight.qweight[:rows], layer.qweight) and not weight.qweight[rows:].any()


def test_per_channel_and_sym():
    layer = real_gptq_layer(4, -1, fmt="gptq")
    weight, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=-1)
    assert weight.group_size is None and weight.num_groups == 1
    assert torch.equal(weight.dequantize(), oracle(layer))

    layer = real_gptq_layer(4, 64, fmt="gptq", sym=True)
    weight, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=64, sym=True)
    assert weight.zeros is None  # stored symmetric: implicit z = 8, no zeros tensor
    assert torch.equal(weight.dequantize(), oracle(layer))
    asym = real_gptq_layer(4, 64, fmt="gptq")
    with pytest.raises(FormatError, match="sym=True"):
        gptq_to_intx(asym.qweight, asym.qzeros, asym.scales, bits=4, group_size=64, sym=True)


def _act_order_g_idx(k, group_size, seed):
    """GPTQ desc_act: columns are quantized in a permuted order; column order[i] gets group i // gs."""
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


@pytest.mark.parametrize("bits", [3, 4])
def test_act_order_permutation(bits, monkeypatch):
    # Packed tensors from the real packer; the act-order g_idx is ours (the packer ignores g_idx),
    # set on the real module so its g_idx-aware forward is the oracle.
    layer = real_gptq_layer(bits, 128, fmt="gptq", seed=7)
    layer.g_idx = _act_order_g_idx(320, 128, seed=bits)
    weight, perm = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, layer.g_idx, bits=bits,
                                group_size=128, desc_act=True)
    assert perm is not None and torch.equal(layer.g_idx[perm].long(), torch.arange(320) // 128)
    w_orig = weight.dequantize()[:, torch.argsort(perm)]
    assert torch.equal(w_orig, oracle(layer))
    run_kernels(weight, perm, w_orig, monkeypatch)


def test_v1_wrapped_zero_point():
    # Hand-edited qzeros (spec: AutoGPTQ wrote z - 1 = -1 for z = 0, so a field reads 15 and
    # readers use 15 + 1 = 16). z = 16 is outside intx's uint8 range [0, 15], so the converter
    # stores exact float zero points instead; the real module's forward is the oracle.
    layer = real_gptq_layer(4, 128, fmt="gptq")
    layer.qzeros = layer.qzeros.clone()
    layer.qzeros[1, 2] |= 0xF << 12  # group 1, channel 2*8 + 3 = 19
    weight, _ = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=4, group_size=128)
    assert weight.zeros.dtype == torch.float16 and weight.zeros[1, 19].item() == 16.0
    assert torch.equal(weight.dequantize(), oracle(layer))


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_converted_weights_run_through_kernels(bits, monkeypatch):
    layer = real_gptq_layer(bits, 128, fmt="gptq", seed=3)
    weight, perm = gptq_to_intx(layer.qweight, layer.qzeros, layer.scales, bits=bits, group_size=128)
    run_kernels(weight, perm, oracle(layer), monkeypatch)


def test_errors_name_the_problem():
    layer = real_gptq_layer(4, 128)
    args = (layer.qweight, layer.qzeros, layer.scales)
    with pytest.raises(FormatError, match="multiple of 32"):
        gptq_to_intx(*args, bits=4, group_size=16)
    with pytest.raises(FormatError, match="scales must have shape"):
        gptq_to_intx(*args, bits=4, group_size=64)
    with pytest.raises(FormatError, match="qzeros must have shape"):
        gptq_to_intx(layer.qweight, layer.qzeros[:, :4], layer.scales, bits=4, group_size=128)
    with pytest.raises(FormatError, match="desc_act"):
        gptq_to_intx(*args, bits=4, group_size=128, desc_act=True)
    with pytest.raises(FormatError, match="checkpoint_format"):
        gptq_to_intx(*args, bits=4, group_size=128, checkpoint_format="gptq_v3")
    unbalanced = torch.zeros(320, dtype=torch.int32)
    unbalanced[-1] = 2  # group 0 holds 319 columns: no permutation makes the groups contiguous
    with pytest.raises(FormatError, match="exactly group_size"):
        gptq_to_intx(*args, unbalanced, bits=4, group_size=128)
