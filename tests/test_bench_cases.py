"""Ideal bytes / FLOPs, copy counts, case selection, tinygemm's zero convention, derived metrics."""
import pytest
import torch

from lowbit.bench import cases
from lowbit.bench.cases import (
    Bound, OpSpec, default_tol, intx_weight_bytes, matmul_flops, select_cases, tensor_nbytes,
)
from lowbit.bench.ceilings import fake_ceilings
from lowbit.bench.results import FAIL, OK, Row, derive, geomeans
from lowbit.bench.timing import copies_for

MB = 1 << 20


def test_intx_weight_bytes_counts_exact_bits_plus_group_metadata():
    # 4-bit g128 asym (bf16 scales, uint8 zeros), 4096x4096: 8 MiB of codes + 32 groups x 4096 x 3 B
    assert intx_weight_bytes(4096, 4096, 4, 128, 2, 1) == 8 * MB + 32 * 4096 * 3
    # 3 bits: exactly 3/8 byte per value, no padding to words
    assert intx_weight_bytes(4096, 4096, 3, 128, 2, 0) == 4096 * 4096 * 3 // 8 + 32 * 4096 * 2
    # ragged K: groups round up; per-channel: one group
    assert intx_weight_bytes(10, 200, 4, 128, 2, 1) == 1000 + 2 * 10 * 3
    assert intx_weight_bytes(10, 200, 2, None, 4, 0) == 500 + 10 * 4


def test_flops_and_point_bytes():
    assert matmul_flops(16, 4096, 14336) == 2 * 16 * 4096 * 14336
    b = Bound(weights=(), run=lambda x, w: x, weight_bytes=1000, x_bytes_per_elem=2, y_bytes_per_elem=2,
              out_dtype=torch.bfloat16)
    assert b.ideal_bytes(m=3, n=10, k=20) == 1000 + 3 * 20 * 2 + 3 * 10 * 2


def test_copies_fill_256mb_with_at_least_two_and_a_cap():
    assert copies_for(8 * MB, 256 * MB, 1000) == 32
    assert copies_for(9 * MB, 256 * MB, 1000) == 29  # ceil: 29 * 9 MB >= 256 MB
    assert copies_for(900 * MB, 256 * MB, 1000) == 2
    assert copies_for(1024, 256 * MB, 1000) == 1000
    assert copies_for(0, 256 * MB, 1000) == 2


def test_tensor_nbytes():
    t = torch.zeros(4, 8, dtype=torch.int32)
    lin = torch.nn.Linear(8, 4, bias=False)
    assert tensor_nbytes((t, None, torch.zeros(3, dtype=torch.uint8))) == 128 + 3
    assert tensor_nbytes(lin) == 4 * 8 * 4


def test_select_cases_defaults_and_errors():
    spec = OpSpec()
    names = [c.name for c in select_cases(spec, None)]
    assert names[0] == "lowbit" and {"cublas", "tinygemm", "dequant_cublas", "compiled"} <= set(names)
    assert [c.name for c in select_cases(spec, [])] == ["lowbit"]
    assert [c.name for c in select_cases(spec, ["cublas"])] == ["lowbit", "cublas"]
    fp8 = [c.name for c in select_cases(OpSpec(op="fp8"), None)]
    assert "lowbit" not in fp8 and "scaled_mm" in fp8 and "cublas" in fp8
    with pytest.raises(ValueError, match="unknown baseline"):
        select_cases(spec, ["nope"])
    with pytest.raises(ValueError, match="do not apply"):
        select_cases(spec, ["int_mm"])


def test_tolerances_scale_with_dtype():
    assert default_tol(torch.bfloat16) == pytest.approx(2 * 2**-7)
    assert default_tol(torch.float16) == pytest.approx(2 * 2**-10)
    assert default_tol(torch.float32) < 1e-3


@pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="no CPU tinygemm")
def test_tinygemm_scales_and_zeros_reproduce_our_dequantization():
    """tinygemm computes (q - 8) * s + zt; the CPU kernel checks our zt = (8 - z) * s conversion."""
    from lowbit.bench.cases_wxa16 import tinygemm_scales_and_zeros
    from lowbit.formats import IntxFormat

    torch.manual_seed(0)
    n, k, g = 64, 256, 128
    qw = IntxFormat(bits=4, group_size=g, scale_dtype=torch.bfloat16).quantize(torch.randn(n, k))
    wp = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qw.codes()[:, :k].to(torch.int32), 2)
    x = torch.randn(5, k).bfloat16()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x, wp, g, tinygemm_scales_and_zeros(qw))
    ref = x.float() @ qw.dequantize().t()
    assert ((y.float() - ref).norm() / ref.norm()) < default_tol(torch.bfloat16)


def test_tinygemm_nibbles_put_even_k_high():
    from lowbit.bench.cases_wxa16 import tinygemm_nibbles

    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    assert tinygemm_nibbles(codes).tolist() == [[0x12, 0xF0]]


def _row(method, m, us, nbytes=16 * MB, flops=10**9, status=OK, layer="o"):
    return Row("x", layer, 4096, 4096, m, method, "ours" if method == "lowbit" else "baseline", status,
               math="bf16", ideal_bytes=nbytes, flops=flops, kernel_us=us)


def test_derive_fills_rates_sol_and_speedups():
    c = fake_ceilings(["bf16"])  # 2 µs + B / 3 TB/s, 800 TFLOP/s
    rows = [_row("lowbit", 1, 10.0), _row("cublas", 1, 25.0, nbytes=32 * MB), _row("tinygemm", 1, 20.0),
            _row("bad", 1, None, status=FAIL)]
    derive(rows, c)
    ours = rows[0]
    assert ours.tflops == pytest.approx(1e9 / 10e-6 / 1e12)
    assert ours.gbps == pytest.approx(16 * MB / 10e-6 / 1e9)
    mem = c.stream_time_us(16 * MB)
    assert ours.sol_us == pytest.approx(mem) and ours.bound == "memory"
    assert ours.pct_sol == pytest.approx(100 * mem / 10.0)
    assert ours.pct_peak == pytest.approx(100 * (16 * MB / c.peak_bandwidth * 1e6) / 10.0)
    assert ours.speedup_cublas == pytest.approx(2.5) and ours.speedup_tinygemm == pytest.approx(2.0)
    assert rows[1].speedup_cublas == pytest.approx(1.0)
    assert rows[3].pct_sol is None and rows[3].speedup_cublas is None


def test_geomeans_per_m_bucket_over_shapes():
    rows = [_row("lowbit", 1, 10.0, layer="a"), _row("cublas", 1, 20.0, layer="a"),
            _row("lowbit", 1, 10.0, layer="b"), _row("cublas", 1, 80.0, layer="b"),
            _row("lowbit", 2, 10.0, layer="a"), _row("cublas", 2, 10.0, layer="a"),
            _row("lowbit", 2, None, layer="b", status=FAIL), _row("cublas", 2, 10.0, layer="b")]
    derive(rows, None)
    gm = {(g["method"], g["m"]): g for g in geomeans(rows)}
    assert gm[("lowbit", 1)]["speedup_cublas"] == pytest.approx(4.0)  # sqrt(2 * 8)
    assert gm[("lowbit", 2)]["speedup_cublas"] == pytest.approx(1.0)
    assert gm[("lowbit", 2)]["points"] == 1 and gm[("lowbit", 2)]["failed"] == 1
    assert gm[("lowbit", 1)]["pct_sol"] is None  # no ceilings given


def _cpu_op_works(fn):
    try:
        fn()
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.parametrize("quant", ["none", "eager"])
def test_scaled_mm_case_matches_its_own_reference_but_not_the_dense_one(quant):
    from lowbit.bench.cases_gemm import FP8, ScaledMM
    from lowbit.bench.micro import rel_error
    from lowbit.bench.shapes import LinearShape

    a = torch.zeros(16, 32).to(FP8) if FP8 is not None else None
    if a is None or not _cpu_op_works(lambda: torch._scaled_mm(
            a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)):
        pytest.skip("no CPU _scaled_mm row-wise in this torch")
    spec = OpSpec(op="fp8")
    data = cases.make_shape_data(LinearShape("c", "x", 64, 128), spec, torch.device("cpu"))
    b = ScaledMM("s", "s", quant=quant).bind(data)
    x = cases.make_x(5, 128, spec, torch.device("cpu"))
    y = b.run(b.prepare_x(x), b.weights)
    assert y.shape == (5, 64) and y.dtype == torch.bfloat16
    assert rel_error(y, b.reference(x)) < default_tol(torch.bfloat16)
    assert rel_error(y, x.float() @ data.w_ref.t()) > default_tol(torch.bfloat16)  # fp8 error is real
    assert b.ideal_bytes(5, 64, 128) == 64 * 128 + 64 * 4 + 5 * 128 * (1 if quant == "none" else 2) + 5 * 64 * 2


def test_int_mm_case_is_exact_against_its_reference():
    from lowbit.bench.cases_gemm import IntMM
    from lowbit.bench.micro import rel_error
    from lowbit.bench.shapes import LinearShape

    if not _cpu_op_works(lambda: torch._int_mm(torch.ones(32, 32, dtype=torch.int8),
                                               torch.ones(32, 32, dtype=torch.int8))):
        pytest.skip("no CPU _int_mm in this torch")
    spec = OpSpec(op="int8")
    case = IntMM("i", "i", ops=("int8",))
    shape = LinearShape("c", "x", 64, 128)
    assert not case.supports(spec, shape, 16)[0] and case.supports(spec, shape, 17)[0]
    b = case.bind(cases.make_shape_data(shape, spec, torch.device("cpu")))
    x = cases.make_x(32, 128, spec, torch.device("cpu"))
    y = b.run(b.prepare_x(x), b.weights)
    assert y.dtype == torch.int32 and rel_error(y, b.reference(x)) == 0.0


@pytest.mark.parametrize("bits,group_size,symmetric,k", [(4, 128, False, 256), (3, 64, False, 200), (2, None, True, 96)])
def test_compiled_baseline_math_equals_the_format_dequantization(bits, group_size, symmetric, k):
    """The function the ``compiled`` baseline hands to torch.compile, run eagerly here."""
    from lowbit.bench.cases_wxa16 import _dequant_linear
    from lowbit.formats import IntxFormat

    torch.manual_seed(1)
    qw = IntxFormat(bits=bits, group_size=group_size, symmetric=symmetric,
                    scale_dtype=torch.float32).quantize(torch.randn(48, k))
    x = torch.randn(3, k)
    y = _dequant_linear(x, qw.qweight, qw.scales, qw.zeros, bits, qw.group_len, k)
    ref = x @ qw.dequantize().t()
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5)
