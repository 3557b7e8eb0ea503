"""2:4-sparse int4 weights: format (pruning, 2:4 check, pack/unpack), kernels vs the fp32 oracle,
lowbit::linear_sparse24_wxa16 (opcheck, dispatch), Sparse24Linear and quantize_.

CPU: Triton interpreter, fp16, small shapes. GPU: fp16 and bf16, plus the semi-structured path.
"""
import pytest
import torch
from torch import nn

import lowbit
from lowbit import dispatch
from lowbit.api import Int4Sparse24WeightConfig, config_from_dict, quantize_
from lowbit.errors import FormatError, InputError, UnsupportedError
from lowbit.formats import get_format
from lowbit.formats.intx import IntxWeight, unpack
from lowbit.formats.sparse24 import Sparse24Format, Sparse24Weight, _pack_nibbles, _unpack_nibbles, check_2_4, prune_2_4
from lowbit.kernels.launch import split_k_counters
from lowbit.kernels.sparse24 import (
    Sparse24GemmConfig, Sparse24GemvConfig, dequant_matmul_sparse24, dequant_semi_structured_sparse24,
    dequantize_sparse24, expand_matmul_sparse24, expand_sparse24, gemm_sparse24, gemv_sparse24, semi_structured_ok,
)
from lowbit.nn_sparse24 import Sparse24Linear
from lowbit.ops import PER_CHANNEL_GROUP_LEN
from lowbit.ops_sparse24 import linear_sparse24_wxa16, sparse24_linear

from helpers import DEVICE, HAS_CUDA, KERNEL_DTYPES, assert_close_matmul, gpu_only, reference_linear

FORMATS = [
    pytest.param(Sparse24Format(64, False, "int", torch.float16), id="g64-asym"),
    pytest.param(Sparse24Format(32, True, "int", torch.float16), id="g32-sym"),
    pytest.param(Sparse24Format(128, False, "float", torch.float32), id="g128-floatzero"),
    pytest.param(Sparse24Format(None, False, "int", torch.bfloat16), id="perchannel"),
]
LAUNCHERS = {"gemv": gemv_sparse24, "gemm": gemm_sparse24, "dequant_mm": dequant_matmul_sparse24,
             "expand_mm": expand_matmul_sparse24}


def _weight(n, k, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _launch(kind, x, qw, bias=None, config=None):
    gl = qw.group_size or PER_CHANNEL_GROUP_LEN
    return LAUNCHERS[kind](x, qw.qweight, qw.meta, qw.scales, qw.zeros, bias, gl, 8.0, config=config)


# ---- format ----------------------------------------------------------------------------------------

def test_prune_keeps_two_largest_of_every_four():
    w = torch.tensor([[1.0, -3.0, 2.0, 0.5, 0.0, 0.0, 0.0, 7.0, 4.0, 4.0, 4.0, 4.0, 1.0, -2.0]])
    p = prune_2_4(w)
    assert p.tolist() == [[0.0, -3.0, 2.0, 0.0, 0.0, 0.0, 0.0, 7.0, 4.0, 4.0, 0.0, 0.0, 1.0, -2.0]]
    w = _weight(33, 70)
    p = prune_2_4(w)
    groups = torch.nn.functional.pad(p, (0, 2)).view(33, -1, 4)
    assert int(((groups != 0).sum(-1) > 2).sum()) == 0
    kept_min = torch.where(groups != 0, groups.abs(), torch.inf).amin(-1)
    dropped = torch.nn.functional.pad(w, (0, 2)).view(33, -1, 4).abs().masked_fill(groups != 0, 0).amax(-1)
    assert (dropped <= kept_min).all()  # nothing dropped is larger than anything kept


def test_check_2_4_names_first_offending_group():
    w = prune_2_4(_weight(8, 64))
    check_2_4(w)
    w[5, 9:12] = torch.tensor([1.0, 2.0, 3.0])
    w[6, 0:4] = 1.0
    with pytest.raises(FormatError, match=r"row 5, k in \[8, 12\).*2 group\(s\)"):
        Sparse24Format(64, prune=False).quantize(w)


def test_already_sparse_weight_is_kept_exactly():
    w = prune_2_4(_weight(16, 128))
    w[0, :8] = 0  # groups with fewer than two non-zeros
    w[1, 4:8] = torch.tensor([0.0, 0.0, 0.03, 0.0])
    qw = Sparse24Format(64, prune=False).quantize(w)
    d = qw.dequantize()
    assert ((d != 0) <= (w != 0)).all()  # integer zero points represent 0 exactly
    assert (d - w).abs().max() <= qw.scales.float().max() / 2 + 1e-7


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [128, 300])
def test_quantize_error_bound_and_layout(fmt, k):
    w = _weight(24, k)
    qw = fmt.quantize(w)
    kp = qw.padded_in_features
    assert qw.qweight.shape == (kp // 16, 24) and qw.meta.shape == (kp // 32, 24)
    assert qw.scales.shape == (kp // qw.group_len, 24)
    d, p = qw.dequantize(), prune_2_4(w)
    if fmt.zero_kind == "int":
        assert ((d != 0) <= (p != 0)).all()
    s = qw.scales.float().t().repeat_interleave(qw.group_len, 1)[:, :k]
    assert ((d - p).abs() <= s / 2 * (1 + 1e-5) + 1e-8).all()
    pos = qw.positions()
    assert (pos[..., 0] < pos[..., 1]).all()


def test_pack_unpack_bit_exact_and_bit_order():
    codes = torch.randint(0, 16, (5, 24), generator=torch.Generator().manual_seed(1))
    words = _pack_nibbles(codes)
    assert words.shape == (3, 5) and torch.equal(_unpack_nibbles(words, 24), codes.to(torch.uint8))
    one = torch.zeros(1, 8, dtype=torch.int64)
    one[0, 2] = 0xA
    assert int(_pack_nibbles(one)[0, 0]) == 0xA << 8  # column j at bits [4j, 4j + 4)
    qw = Sparse24Format(32).quantize(_weight(8, 96))
    again = Sparse24Weight(_pack_nibbles(qw.codes()), _pack_nibbles(qw.positions()[..., 0] | qw.positions()[..., 1] << 2),
                           qw.scales, qw.zeros, 32, 96)
    assert torch.equal(again.qweight, qw.qweight) and torch.equal(again.meta, qw.meta)


def test_format_registry_and_bad_tensors():
    assert isinstance(get_format("sparse24_intx", group_size=64), Sparse24Format)
    qw = Sparse24Format(64).quantize(_weight(8, 128))
    with pytest.raises(FormatError, match="meta must be int32"):
        Sparse24Weight(qw.qweight, qw.meta[:-1], qw.scales, qw.zeros, 64, 128)
    with pytest.raises(FormatError, match="qweight must be int32"):
        Sparse24Weight(qw.qweight.float(), qw.meta, qw.scales, qw.zeros, 64, 128)
    with pytest.raises(FormatError, match="group_size"):
        Sparse24Format(48)
    with pytest.raises(FormatError, match="NaN"):
        Sparse24Format().quantize(torch.full((4, 32), float("nan")))


# ---- kernels ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 3), ("gemm", 5), ("gemm", 33), ("dequant_mm", 7),
                                    ("expand_mm", 6), ("expand_mm", 40)])
def test_kernel_matches_reference(fmt, dtype, kind, m):
    n, k = 72, 300  # masked N and K tails, partial last group
    qw = fmt.quantize(_weight(n, k)).to(DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(DEVICE, dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    y = _launch(kind, x, qw, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close_matmul(y, reference_linear(x, qw, bias), x, qw.dequantize(), dtype)


@pytest.mark.parametrize("kind,config", [
    ("gemv", Sparse24GemvConfig(block_n=32, block_k=256, split_k=2)),  # one tile spans 4 groups
    ("gemv", Sparse24GemvConfig(block_n=64, block_k=32, split_k=3, num_stages=1)),
    ("gemm", Sparse24GemmConfig(block_m=16, block_n=32, block_k=128, split_k=2)),  # tile spans 2 groups
    ("gemm", Sparse24GemmConfig(block_m=32, block_n=64, block_k=32, split_k=1, group_m=2)),
])
def test_kernel_configs_and_split_k(kind, config):
    n, k, m = 96, 520, 2 if kind == "gemv" else 40
    qw = Sparse24Format(64, False, "int", torch.float16).quantize(_weight(n, k, seed=3)).to(DEVICE)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.float16)
    y = _launch(kind, x, qw, None, config)
    assert_close_matmul(y, reference_linear(x, qw), x, qw.dequantize(), torch.float16)
    assert int(split_k_counters(x.device).abs().sum()) == 0


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f.values[0].zero_kind == "int"])
@pytest.mark.parametrize("n,k", [(72, 300), (40, 256)])
def test_expand_to_dense_words_is_exact(fmt, n, k):
    """expand_sparse24: dense 4-bit words (natural order) whose dequantization equals the sparse weight's exactly,
    the zero point at every pruned position (N / K tails, partial last group, sym / asym / per-channel)."""
    qw = fmt.quantize(_weight(n, k, seed=5)).to(DEVICE)
    gl = qw.group_size or PER_CHANNEL_GROUP_LEN
    dense = expand_sparse24(qw.qweight, qw.meta, qw.zeros, gl, 8.0)
    w = IntxWeight(dense, qw.scales, qw.zeros, 4, qw.group_size, k)
    assert torch.equal(w.dequantize(torch.float32), qw.dequantize(torch.float32))
    codes = unpack(dense.cpu(), 4, dense.shape[0] * 8)[:, :k]  # (N, K)
    z = qw.zeros.cpu().t().repeat_interleave(gl if qw.group_size else k, 1)[:, :k].long() if qw.zeros is not None else 8
    pruned = qw.dequantize(torch.float32).cpu() == 0
    assert torch.equal(codes.long()[pruned], (z * torch.ones_like(codes.long()))[pruned])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_dequantize_kernel_equals_reference_cast(dtype):
    qw = Sparse24Format(32, False, "int", dtype).quantize(_weight(40, 200)).to(DEVICE)
    w = dequantize_sparse24(qw.qweight, qw.meta, qw.scales, qw.zeros, 32, 8.0, 200, dtype)
    assert torch.equal(w, qw.dequantize(dtype))  # integer zeros: exact (q - z), one rounding of the product


# ---- op, dispatch, module, quantize_ -----------------------------------------------------------------

def _op_args(qw, x, bias=None):
    return (x, qw.qweight, qw.meta, qw.scales, qw.zeros, bias, qw.group_size or 0, qw.in_features)


@pytest.mark.parametrize("m", [1, 6, 40])
def test_op_leading_dims_and_dispatch(m):
    qw = Sparse24Format(64, False, "int", torch.float16).quantize(_weight(48, 256)).to(DEVICE)
    x = torch.randn(2, m, 256).to(DEVICE, torch.float16)
    y = linear_sparse24_wxa16(*_op_args(qw, x))
    assert y.shape == (2, m, 48)
    ref = reference_linear(x.reshape(-1, 256), qw).reshape(2, m, 48)
    assert_close_matmul(y, ref, x, qw.dequantize(), torch.float16)


def test_dispatch_rule_and_reasons(monkeypatch):
    def pick(m, dtype=torch.float16):
        return dispatch.select_sparse24(dispatch.WxA16Problem(m, 4096, 4096, 4, 128, dtype, DEVICE))

    assert pick(1) == "triton_sparse24_gemv"
    big = max(dispatch.SPARSE24_GEMV_MAX_M, dispatch.SPARSE24_GEMM_MAX_M) + 1
    if dispatch.SPARSE24_GEMM_MAX_M > dispatch.SPARSE24_GEMV_MAX_M:
        assert pick(dispatch.SPARSE24_GEMV_MAX_M + 1) == "triton_sparse24_gemm"
    assert pick(dispatch.SPARSE24_GEMV_MAX_M + 1) != "triton_sparse24_gemv"
    if dispatch.SPARSE24_EXPAND_MAX_M > max(dispatch.SPARSE24_GEMV_MAX_M, dispatch.SPARSE24_GEMM_MAX_M):
        assert pick(big) == "triton_sparse24_expand_mm"
        big = dispatch.SPARSE24_EXPAND_MAX_M + 1
    assert pick(big) == "triton_sparse24_dequant_mm"
    assert pick(1, torch.float32) == "reference"
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    with pytest.raises(UnsupportedError, match="fp16/bf16 activations"):
        pick(2, torch.float32)


def test_reference_backend_for_fp32():
    qw = Sparse24Format(64, False, "float", torch.float32).quantize(_weight(16, 128)).to(DEVICE)
    x = torch.randn(3, 128).to(DEVICE)
    torch.testing.assert_close(sparse24_linear(x, qw), reference_linear(x, qw), rtol=1e-5, atol=1e-5)


def test_op_errors():
    qw = Sparse24Format(64, False, "int", torch.float16).quantize(_weight(16, 128)).to(DEVICE)
    x = torch.randn(2, 128).to(DEVICE, torch.float16)
    with pytest.raises(InputError, match="in_features"):
        linear_sparse24_wxa16(*_op_args(qw, x[:, :64]))
    with pytest.raises(FormatError, match="meta must be int32"):
        linear_sparse24_wxa16(x, qw.qweight, qw.meta[:1], *_op_args(qw, x)[3:])
    with pytest.raises(InputError, match="bias"):
        linear_sparse24_wxa16(*_op_args(qw, x, torch.zeros(3, dtype=torch.float16, device=DEVICE)))
    with pytest.raises(UnsupportedError, match="meta is on"):
        linear_sparse24_wxa16(x, qw.qweight, qw.meta.to("meta"), *_op_args(qw, x)[3:])


def test_opcheck():
    qw = Sparse24Format(64, False, "int", torch.float16).quantize(_weight(32, 128)).to(DEVICE)
    x = torch.randn(3, 128).to(DEVICE, torch.float16)
    bias = torch.randn(32).to(DEVICE, torch.float16)
    torch.library.opcheck(torch.ops.lowbit.linear_sparse24_wxa16.default, _op_args(qw, x, bias),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_quantize_tiny_model_and_config_roundtrip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 40, bias=False)).to(DEVICE, torch.float16)
    x = torch.randn(3, 96).to(DEVICE, torch.float16)
    dense = [model[0].weight.detach().float().cpu(), model[2].weight.detach().float().cpu()]
    cfg = Int4Sparse24WeightConfig(group_size=32, scale_dtype=torch.float16)
    assert config_from_dict(cfg.to_dict()) == cfg
    quantize_(model, cfg)
    assert isinstance(model[0], Sparse24Linear) and isinstance(model[2], Sparse24Linear)
    assert "2:4 sparse" in repr(model[0])
    for layer, w in zip((model[0], model[2]), dense):
        assert (layer.weight.dequantize().cpu() - prune_2_4(w)).abs().max() <= layer.scales.float().max() / 2 + 1e-6
    h = torch.relu(reference_linear(x, model[0].weight, model[0].bias)).to(torch.float16)
    ref = reference_linear(h, model[2].weight)
    y = model(x)
    assert_close_matmul(y, ref, h, model[2].weight.dequantize(), torch.float16)
    sd = model.state_dict()
    assert {"0.qweight", "0.meta", "0.scales", "0.zeros", "0.bias"} <= set(sd)
    with pytest.raises(UnsupportedError, match="Sparse24Linear"):
        lowbit.save_quantized(model, "/nonexistent-never-written")


def test_quantize_prune_false_rejects_dense_layer():
    model = nn.Sequential(nn.Linear(64, 16))
    with pytest.raises(FormatError, match="not 2:4 sparse: row 0"):
        quantize_(model, Int4Sparse24WeightConfig(group_size=64, prune=False))


# ---- GPU only ----------------------------------------------------------------------------------------

@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_semi_structured_path(dtype):
    n, k, m = 256, 512, 64
    ok, why = semi_structured_ok(m, n, k, dtype, torch.device("cuda"))
    if not ok:
        pytest.skip(why)
    qw = Sparse24Format(128, False, "int", dtype).quantize(_weight(n, k)).to("cuda")
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(2)).to("cuda", dtype)
    y = dequant_semi_structured_sparse24(x, qw.qweight, qw.meta, qw.scales, qw.zeros, None, 128, 8.0)
    assert_close_matmul(y, reference_linear(x, qw), x, qw.dequantize(), dtype)


@gpu_only
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 4, 8, 16, 64, 256])
def test_llama_shape_all_backends(m):
    n, k = 1024, 4096
    qw = Sparse24Format(128, False, "int", torch.bfloat16).quantize(_weight(n, k)).to("cuda")
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to("cuda", torch.bfloat16)
    ref = reference_linear(x, qw)
    for kind in ("gemv", "gemm", "dequant_mm") if m <= 16 else ("gemm", "dequant_mm"):
        assert_close_matmul(_launch(kind, x, qw), ref, x, qw.dequantize(), torch.bfloat16)
    assert_close_matmul(sparse24_linear(x, qw), ref, x, qw.dequantize(), torch.bfloat16)
    assert HAS_CUDA
