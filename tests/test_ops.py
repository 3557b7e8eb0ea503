import pytest
import torch

import lowbit
from lowbit import FormatError, InputError, IntxFormat, UnsupportedError, ops
from lowbit import dispatch

from helpers import DEVICE, assert_close_matmul, reference_linear


def _qw(bits=4, group_size=128, n=48, k=256, dtype=torch.float16):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.05
    return IntxFormat(bits, group_size, False, "int", dtype).quantize(w).to(DEVICE)


def _call(x, qw, bias=None, **over):
    args = dict(qweight=qw.qweight, scales=qw.scales, zeros=qw.zeros, bias=bias, bits=qw.bits,
                group_size=qw.group_size or 0, in_features=qw.in_features)
    args.update(over)
    return torch.ops.lowbit.linear_wxa16(x, **args)


@pytest.mark.parametrize("shape", [(1, 256), (3, 256), (2, 5, 256), (2, 3, 4, 256), (256,)])
def test_leading_dims(shape):
    qw = _qw()
    x = torch.randn(*shape).to(DEVICE, torch.float16)
    y = ops.intx_linear(x, qw)
    assert y.shape == (*shape[:-1], 48)
    ref = reference_linear(x.reshape(-1, 256), qw).reshape(y.shape)
    assert_close_matmul(y, ref, x, qw.dequantize(), torch.float16)


def test_zero_rows():
    qw = _qw()
    y = ops.intx_linear(torch.empty(0, 256, dtype=torch.float16, device=DEVICE), qw)
    assert y.shape == (0, 48)


def test_non_contiguous_x():
    qw = _qw()
    base = torch.randn(256, 6).to(DEVICE, torch.float16)
    x = base.t()  # (6, 256), stride (1, 6)
    assert not x.is_contiguous()
    assert_close_matmul(ops.intx_linear(x, qw), reference_linear(x, qw), x, qw.dequantize(), torch.float16)


def test_reference_backend_forced(monkeypatch):
    qw = _qw()
    x = torch.randn(5, 256).to(DEVICE, torch.float16)
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    y_ref_backend = ops.intx_linear(x, qw)
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    y_triton = ops.intx_linear(x, qw)
    assert_close_matmul(y_triton, y_ref_backend.float(), x, qw.dequantize(), torch.float16)
    monkeypatch.setenv("LOWBIT_BACKEND", "cutlass")
    with pytest.raises(UnsupportedError, match="LOWBIT_BACKEND"):
        ops.intx_linear(x, qw)


def test_fp32_activations_fall_back_to_reference_with_a_log(caplog):
    qw = _qw()
    x = torch.randn(3, 256, device=DEVICE)
    dispatch._logged.clear()
    dispatch._select.cache_clear()
    with caplog.at_level("WARNING", logger="lowbit"):
        y = ops.intx_linear(x, qw)
        ops.intx_linear(x, qw)
    assert caplog.text.count("falling back to the reference backend") == 1  # logged once, not per call
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference_linear(x, qw), rtol=1e-5, atol=1e-5)


def test_forcing_triton_for_fp32_names_the_constraint(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    with pytest.raises(UnsupportedError, match="fp16/bf16"):
        ops.intx_linear(torch.randn(3, 256, device=DEVICE), _qw())


def test_dispatch_rules_without_a_shipped_table(monkeypatch):
    monkeypatch.setattr("lowbit.kernels.launch.shipped_best", lambda *a: None)
    dispatch._select.cache_clear()
    p = dict(n=64, k=256, bits=4, group_len=128, dtype=torch.float16, device_type="cuda")
    assert dispatch.select(dispatch.WxA16Problem(m=1, **p)) == "triton_gemv"
    assert dispatch.select(dispatch.WxA16Problem(m=8, **p)) == "triton_gemv"
    assert dispatch.select(dispatch.WxA16Problem(m=9, **p)) == "triton_gemm"
    assert dispatch.select(dispatch.WxA16Problem(m=4096, **p)) == "triton_dequant_mm"


def test_dispatch_follows_the_shipped_table(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.current_device", lambda: 0)
    monkeypatch.setattr("lowbit.kernels.launch.shipped_best", lambda *a: "gemm")
    dispatch._select.cache_clear()
    p = dict(n=64, k=256, bits=4, group_len=128, dtype=torch.float16, device_type="cuda")
    assert dispatch.select(dispatch.WxA16Problem(m=4096, **p)) == "triton_gemm"
    assert dispatch.select(dispatch.WxA16Problem(m=1, **p)) == "triton_gemm"
    dispatch._select.cache_clear()


@pytest.mark.parametrize("bad,err,match", [
    (dict(x_k=255), InputError, "in_features"),
    (dict(x_dtype=torch.int32), InputError, "floating"),
    (dict(bits=9), FormatError, "bits"),
    (dict(bits=3), FormatError, "qweight"),
    (dict(group_size=48), FormatError, "group_size"),
    (dict(group_size=64), FormatError, "scales"),
    (dict(bias_n=47), InputError, "bias"),
    (dict(in_features=300, x_k=300), FormatError, "qweight"),
])
def test_bad_inputs_raise_typed_errors(bad, err, match):
    qw = _qw()
    x = torch.randn(2, bad.get("x_k", 256)).to(DEVICE, bad.get("x_dtype", torch.float16))
    bias = torch.randn(bad["bias_n"], device=DEVICE, dtype=torch.float16) if "bias_n" in bad else None
    over = {k: v for k, v in bad.items() if k in ("bits", "group_size", "in_features")}
    with pytest.raises(err, match=match):
        _call(x, qw, bias, **over)


@pytest.mark.skipif(DEVICE != "cpu", reason="device mismatch is checked with CPU weights on a GPU run too")
def test_device_mismatch_is_typed():
    qw = _qw()
    x = torch.randn(2, 256, dtype=torch.float16, device="meta")
    with pytest.raises(UnsupportedError, match="device"):
        _call(x, qw)


def test_opcheck():
    qw = _qw()
    x = torch.randn(3, 256).to(DEVICE, torch.float16)
    bias = torch.randn(48).to(DEVICE, torch.float16)
    args = (x, qw.qweight, qw.scales, qw.zeros, bias, 4, 128, 256)
    torch.library.opcheck(torch.ops.lowbit.linear_wxa16.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


def test_torch_compile_fullgraph_quantlinear():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.SiLU(), torch.nn.Linear(64, 32))
    model = model.to(DEVICE, torch.float16)
    lowbit.quantize_(model, lowbit.Int4WeightOnlyConfig(group_size=32))
    x = torch.randn(2, 7, 256).to(DEVICE, torch.float16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    torch.testing.assert_close(compiled(x), eager)
