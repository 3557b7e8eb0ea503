"""LUT mode of the wxa16 kernels (GEMV / GEMM / dequant) and lowbit::linear_luta16 vs the fp32 oracle.

CPU: Triton interpreter, fp16. GPU: fp16 and bf16.
"""
import json

import pytest
import torch

import lowbit
from lowbit import dispatch
from lowbit.api import CodebookWeightOnlyConfig, Fp4WeightOnlyConfig, NF4WeightOnlyConfig, config_from_dict
from lowbit.errors import FormatError, UnsupportedError
from lowbit.formats.lut import CodebookFormat, Fp4Format, NF4Format
from lowbit.kernels.dequant import dequant_matmul_wxa16, dequantize_intx
from lowbit.kernels.gemm import GemmConfig, gemm_wxa16
from lowbit.kernels.gemv import GemvConfig, gemv_wxa16
from lowbit.kernels.launch import split_k_counters
from lowbit.nn_lut import LutLinear
from lowbit.ops import PER_CHANNEL_GROUP_LEN
from lowbit.ops_lut import linear_luta16, lut_linear

from helpers import DEVICE, KERNEL_DTYPES, assert_close_matmul, reference_linear

FORMATS = [
    pytest.param(NF4Format(64), id="nf4-g64"),
    pytest.param(Fp4Format(32, "e8m0"), id="fp4-e8m0-g32"),
    pytest.param(Fp4Format(None, "float", torch.float32), id="fp4-float-perchannel"),
    pytest.param(CodebookFormat(4, 64, "row", iters=8), id="cb4-row"),
    pytest.param(CodebookFormat(3, 128, "group", table_dtype=torch.float16, iters=8), id="cb3-group"),
    pytest.param(CodebookFormat(2, 32, "row", torch.float16, torch.bfloat16, iters=8), id="cb2-row"),
]
LAUNCHERS = {"gemv": gemv_wxa16, "gemm": gemm_wxa16, "dequant_mm": dequant_matmul_wxa16}


def _make(fmt, n, k, dtype, seed=0):
    """``fmt``'s weight on the test device (scales/tables keep the format's dtypes, whatever ``dtype``)."""
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return fmt.quantize(w).to(DEVICE)


def _launch(kind, x, qw, bias=None, config=None):
    gl = qw.group_size or PER_CHANNEL_GROUP_LEN
    return LAUNCHERS[kind](x, qw.qweight, qw.scales, None, bias, qw.bits, gl, 0.0, qw.out_features,
                           config=config, table=qw.table)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 3), ("gemm", 17), ("gemm", 64), ("dequant_mm", 5)])
def test_lut_kernel_matches_reference(fmt, dtype, kind, m):
    n, k = 72, 300  # masked N and K tails, partial last group
    qw = _make(fmt, n, k, dtype)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(DEVICE, dtype)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(7)).to(DEVICE, dtype)
    y = _launch(kind, x, qw, bias)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close_matmul(y, reference_linear(x, qw, bias), x, qw.dequantize(), dtype)


@pytest.mark.parametrize("kind,config", [
    ("gemv", GemvConfig(block_n=32, block_k=256, split_k=2)),  # one tile spans 4 groups (and 4 tables)
    ("gemv", GemvConfig(block_n=64, block_k=32, split_k=3, prefetch=True)),
    ("gemm", GemmConfig(block_m=16, block_n=32, block_k=128, split_k=2)),  # tile spans 2 groups
    ("gemm", GemmConfig(block_m=32, block_n=64, block_k=32, split_k=1, group_m=2, prefetch=True)),
])
@pytest.mark.parametrize("fmt", [pytest.param(CodebookFormat(4, 64, "group", torch.float16, iters=4), id="cb4-group"),
                                 pytest.param(CodebookFormat(3, 64, "row", torch.float16, iters=4), id="cb3-row")])
def test_lut_kernel_configs_and_split_k(kind, config, fmt):
    n, k, m = 96, 520, 5 if kind == "gemv" else 40
    qw = _make(fmt, n, k, torch.float16, seed=3)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.float16)
    y = _launch(kind, x, qw, None, config)
    assert_close_matmul(y, reference_linear(x, qw), x, qw.dequantize(), torch.float16)
    assert int(split_k_counters(x.device).abs().sum()) == 0


@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_lut_dequantize_kernel_equals_reference_cast(dtype):
    qw = _make(NF4Format(64), 40, 200, dtype)
    w = dequantize_intx(qw.qweight, qw.scales, None, 4, 64, 0.0, 200, dtype, table=qw.table)
    assert torch.equal(w, qw.dequantize(dtype))  # table[q] * s in fp32, one rounding: exact


def _op_args(qw, x, bias=None):
    return (x, qw.qweight, qw.scales, qw.table, bias, qw.bits, qw.group_size or 0, qw.in_features)


@pytest.mark.parametrize("m", [1, 4, 33])
def test_op_leading_dims_and_dispatch(m):
    qw = _make(NF4Format(64), 48, 256, torch.float16)
    x = torch.randn(2, m, 256).to(DEVICE, torch.float16)
    y = linear_luta16(*_op_args(qw, x))
    assert y.shape == (2, m, 48)
    ref = reference_linear(x.reshape(-1, 256), qw).reshape(2, m, 48)
    assert_close_matmul(y, ref, x, qw.dequantize(), torch.float16)


def test_reference_backend_for_fp32_and_wide_codes(monkeypatch):
    qw = _make(CodebookFormat(5, 64, iters=3), 16, 128, torch.float32)  # 32-entry table: reference only
    p = dispatch.WxA16Problem(2, 16, 128, 5, 64, torch.float16, DEVICE)
    assert dispatch.select_lut(p) == "reference"
    x = torch.randn(2, 128).to(DEVICE)
    torch.testing.assert_close(lut_linear(x, qw), reference_linear(x, qw), rtol=1e-5, atol=1e-5)
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    with pytest.raises(UnsupportedError, match="at most 4 bits"):
        dispatch.select_lut(p)


def test_op_errors():
    qw = _make(NF4Format(64), 16, 128, torch.float16)
    x = torch.randn(2, 128).to(DEVICE, torch.float16)
    bad_table = qw.table[..., :8].contiguous()
    with pytest.raises(FormatError, match="2\\*\\*bits=16"):
        linear_luta16(*_op_args(qw, x)[:3], bad_table, *_op_args(qw, x)[4:])
    with pytest.raises(FormatError, match="table must be fp16"):
        linear_luta16(*_op_args(qw, x)[:3], qw.table.to(torch.int32), *_op_args(qw, x)[4:])
    with pytest.raises(UnsupportedError, match="table is on"):
        linear_luta16(*_op_args(qw, x)[:3], qw.table.to("meta"), *_op_args(qw, x)[4:])
    with pytest.raises(lowbit.InputError, match="in_features"):
        linear_luta16(*_op_args(qw, torch.randn(2, 64).to(DEVICE, torch.float16)))


def test_opcheck():
    qw = _make(CodebookFormat(3, 64, iters=3), 24, 128, torch.float16)
    x = torch.randn(3, 128).to(DEVICE, torch.float16)
    bias = torch.randn(24).to(DEVICE, torch.float16)
    torch.library.opcheck(torch.ops.lowbit.linear_luta16.default, _op_args(qw, x, bias),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))


@pytest.mark.parametrize("config", [NF4WeightOnlyConfig(group_size=32), Fp4WeightOnlyConfig(),
                                    CodebookWeightOnlyConfig(bits=2, group_size=64, iters=4)])
def test_quantize_config_module_state_dict_and_json(config):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.SiLU(), torch.nn.Linear(64, 40))
    lowbit.quantize_(model, config)
    assert all(isinstance(model[i], LutLinear) for i in (0, 2))
    model = model.to(DEVICE, torch.float16)
    x = torch.randn(3, 128).to(DEVICE, torch.float16)
    lin = model[0]
    ref = reference_linear(x, lin.weight, lin.bias)
    assert_close_matmul(lin(x), ref, x, lin.weight.dequantize(), torch.float16)
    fresh = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.SiLU(), torch.nn.Linear(64, 40))
    lowbit.quantize_(fresh, config)
    fresh = fresh.to(DEVICE, torch.float16)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), model(x))
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_validation():
    with pytest.raises(FormatError):
        CodebookWeightOnlyConfig(bits=0)
    with pytest.raises(FormatError, match="granularity"):
        CodebookWeightOnlyConfig(granularity="column")
    with pytest.raises(FormatError, match="table_dtype"):
        CodebookWeightOnlyConfig(table_dtype="int8")
    with pytest.raises(FormatError, match="e8m0"):
        Fp4WeightOnlyConfig(scale_dtype="float16")
    with pytest.raises(FormatError, match="group_size"):
        NF4WeightOnlyConfig(group_size=50)


def test_save_quantized_names_the_unsupported_module(tmp_path):
    pytest.importorskip("safetensors")
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    lowbit.quantize_(model, NF4WeightOnlyConfig(group_size=32))
    with pytest.raises(UnsupportedError, match="LutLinear"):
        lowbit.save_quantized(model, str(tmp_path / "ck"))


def test_torch_compile_fullgraph_lutlinear():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.SiLU(), torch.nn.Linear(64, 32))
    lowbit.quantize_(model, NF4WeightOnlyConfig(group_size=64))
    model = model.to(DEVICE, torch.float16)
    x = torch.randn(2, 5, 128).to(DEVICE, torch.float16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    torch.testing.assert_close(compiled(x), eager)


@pytest.mark.parametrize("config,fmt", [
    (GemmConfig(block_m=16, block_n=64, block_k=64, split_k=2), NF4Format(64)),        # one group per tile: post-scale
    (GemmConfig(block_m=16, block_n=64, block_k=128, split_k=1), NF4Format(64)),       # 2 groups per tile: scaled asm
    (GemmConfig(block_m=32, block_n=128, block_k=128, num_warps=8), Fp4Format(32, "e8m0")),  # 4 groups per tile
    (GemmConfig(block_m=16, block_n=128, block_k=64, split_k=2), CodebookFormat(4, 64, "row", torch.float16, iters=4)),
    (GemmConfig(block_m=16, block_n=64, block_k=128), CodebookFormat(4, 32, "row", iters=4)),  # per-channel tables
    # 2 K tiles per loop iteration (``gemm.k_unroll_ok``: 8 tiles of 64 at K = 512; the tails shape runs 1)
    (GemmConfig(block_m=16, block_n=64, block_k=64, split_k=2, k_unroll=2), NF4Format(64)),
], ids=["nf4-bk64", "nf4-bk128", "fp4-g32-bk128", "cb4-row-fp16-table", "cb4-row-g32-bk128", "nf4-bk64-unroll"])
@pytest.mark.parametrize("n,k", [(128, 512), (72, 300)], ids=["even", "tails"])
def test_lut_packed4_gemm(config, fmt, n, k):
    """The packed lookup-table path of the GEMM (``unpack.lut4_packed``; one global 16-entry table or one
    per channel, masked table rows on the N tail)."""
    from lowbit.kernels.gemm import k_unroll_ok, use_packed

    qw = _make(fmt, n, k, torch.float16, seed=n)
    assert use_packed(4, None, 0.0, qw.table, qw.group_size, config)
    assert k_unroll_ok(k, config, 4, 0, qw.group_size) == (config.k_unroll == 2 and k == 512)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(2)).to(DEVICE, torch.float16)
    bias = torch.randn(n, generator=torch.Generator().manual_seed(3)).to(DEVICE, torch.float16)
    y = _launch("gemm", x, qw, bias, config)
    assert_close_matmul(y, reference_linear(x, qw, bias), x, qw.dequantize(), torch.float16)


@pytest.mark.parametrize("fmt", [pytest.param(NF4Format(64), id="nf4"),
                                 pytest.param(CodebookFormat(4, 64, "row", iters=4), id="cb4-row"),
                                 pytest.param(CodebookFormat(4, 64, "group", torch.float16, iters=4), id="cb4-group")])
@pytest.mark.parametrize("m", [1, 20])
def test_lutlinear_runs_mma_word_order(fmt, m):
    """LutLinear keeps 4-bit codes in the mma word order (GEMV, packed and generic GEMM read it), its
    state dict and ``weight`` stay natural."""
    from lowbit.formats.intx import to_mma_words

    qw = _make(fmt, 72, 300, torch.float16, seed=9)
    mod = LutLinear(qw)
    assert mod.k_order == 1 and torch.equal(mod.qweight, to_mma_words(qw.qweight))
    assert torch.equal(mod.state_dict()["qweight"], qw.qweight) and torch.equal(mod.weight.qweight, qw.qweight)
    x = torch.randn(m, 300, generator=torch.Generator().manual_seed(m)).to(DEVICE, torch.float16)
    assert_close_matmul(mod(x), reference_linear(x, qw), x, qw.dequantize(), torch.float16)
