"""Lookup-table formats: NF4 / FP4 / codebooks (pure torch), error bounds, bitsandbytes import."""
import math

import pytest
import torch

from lowbit.convert.bnb import bnb_4bit_to_lut, bnb_absmax, bnb_quant_state_to_lut
from lowbit.errors import FormatError
from lowbit.formats.intx import IntxFormat, pack, unpack
from lowbit.formats.lut import (
    FP4_E2M1_VALUES, NF4_VALUES, CodebookFormat, Fp4Format, LutWeight, NF4Format, kmeans_1d,
    nf4_values_from_normal, sqnr_db,
)
from lowbit.formats.lut_error import error_table, make_weight


def _w(n=40, k=300, seed=0, heavy=False):
    return make_weight("student_t" if heavy else "gaussian", n, k, seed)


def test_nf4_table_is_the_normal_quantile_construction():
    assert torch.allclose(nf4_values_from_normal().float(), torch.tensor(NF4_VALUES), atol=2e-7, rtol=0)
    assert NF4_VALUES[7] == 0.0 and NF4_VALUES[0] == -1.0 and NF4_VALUES[15] == 1.0


def test_fp4_e2m1_code_order():
    for code, v in enumerate(FP4_E2M1_VALUES):
        s, e, m = code >> 3, (code >> 1) & 3, code & 1
        mag = m * 0.5 if e == 0 else 2.0 ** (e - 1) * (1 + m / 2)
        assert v == (-mag if s else mag)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_pack_unpack_codes_bit_exact(bits):
    codes = torch.randint(0, 2**bits, (24, 320), generator=torch.Generator().manual_seed(bits))
    assert torch.equal(unpack(pack(codes, bits), bits, 320), codes.to(torch.uint8))


@pytest.mark.parametrize("fmt", [
    pytest.param(NF4Format(64), id="nf4-g64"),
    pytest.param(NF4Format(None, torch.float32), id="nf4-perchannel"),
    pytest.param(Fp4Format(32, "e8m0"), id="fp4-e8m0-g32"),
    pytest.param(Fp4Format(64, "float", torch.float16), id="fp4-float-g64"),
    pytest.param(CodebookFormat(4, 64, "row"), id="cb4-row"),
    pytest.param(CodebookFormat(3, 128, "group", table_dtype=torch.float16), id="cb3-group"),
    pytest.param(CodebookFormat(2, 32, "row", torch.float16), id="cb2-row"),
])
def test_quantize_is_nearest_table_entry(fmt):
    """Every code is the nearest entry of its table (times the stored scale): the RTN error bound."""
    w = _w()
    qw = fmt.quantize(w)
    assert qw.dequantize().shape == w.shape and qw.padded_in_features % 32 == 0
    n, k, g, gl = qw.out_features, qw.in_features, qw.num_groups, qw.group_len
    t = qw.table.float().expand(g, n, -1).permute(1, 0, 2)  # (N, G, E)
    cand = t.unsqueeze(2) * qw.scales.float().t()[:, :, None, None]  # (N, G, 1, E)
    wp = torch.zeros(n, g * gl)
    wp[:, :k] = w
    if isinstance(fmt, Fp4Format):  # saturating: |w| > 6 s is clipped to 6 s
        lim = 6 * qw.scales.float().t().repeat_interleave(gl, 1)
        wp = torch.maximum(torch.minimum(wp, lim), -lim)
    best = (cand - wp.view(n, g, gl, 1)).abs().amin(-1).view(n, -1)[:, :k]
    err = (qw.dequantize() - wp[:, :k]).abs()
    assert torch.all(err <= best + 1e-7 * (1 + wp[:, :k].abs()))


def test_fp4_e8m0_scales_are_powers_of_two_and_float_scales_cover_absmax():
    w = _w(heavy=True)
    s = Fp4Format(32, "e8m0").quantize(w).scales.float()
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)
    qf = Fp4Format(64, "float", torch.float16).quantize(w)
    amax = torch.nn.functional.pad(w, (0, qf.padded_in_features - 300)).abs().view(40, -1, 64).amax(-1).t()
    assert torch.all(qf.scales.float() * 6 >= amax)  # rounded up: no clipping


def test_kmeans_deterministic_and_better_than_its_start():
    x = torch.randn(6, 500, generator=torch.Generator().manual_seed(3))
    a, b = kmeans_1d(x, 8, 20, seed=1), kmeans_1d(x, 8, 20, seed=1)
    assert torch.equal(a, b) and torch.all(a[:, 1:] >= a[:, :-1])

    def mse(c):
        mids = (c[:, 1:] + c[:, :-1]) / 2
        return (c.gather(1, torch.searchsorted(mids.contiguous(), x)) - x).pow(2).mean()

    assert mse(a) < mse(kmeans_1d(x, 8, 0))
    assert torch.equal(CodebookFormat(3, 64).quantize(x).qweight, CodebookFormat(3, 64).quantize(x).qweight)


def test_sqnr_ordering_on_gaussian_and_heavy_tailed():
    """Non-uniform 4-bit formats are at least as good as uniform int4 where they should be."""
    for heavy in (False, True):
        w = _w(64, 512, heavy=heavy)
        int4 = sqnr_db(w, IntxFormat(4, 64, True, "int", torch.float32).quantize(w).dequantize())
        nf4 = sqnr_db(w, NF4Format(64, torch.float32).quantize(w).dequantize())
        cb4 = sqnr_db(w, CodebookFormat(4, 64, scale_dtype=torch.float32).quantize(w).dequantize())
        cb2 = sqnr_db(w, CodebookFormat(2, 64, scale_dtype=torch.float32).quantize(w).dequantize())
        assert nf4 > int4 and cb4 > int4 - 0.1 and cb2 < nf4 - 6  # sym int4, same group
        assert 12 < int4 < 30


def test_error_table_rows():
    rows = error_table(shapes=[("t", 64, 256)], dists=("gaussian",), formats=("int4", "nf4"), group_size=64)
    assert [r["format"] for r in rows] == ["int4", "nf4"] and all(math.isfinite(r["sqnr_db"]) for r in rows)
    assert rows[0]["delta_vs_int4_db"] == 0.0


@pytest.mark.parametrize("bad,match", [
    (dict(table=torch.zeros(1, 1, 8)), "2\\*\\*bits=16"),
    (dict(table=torch.zeros(1, 1, 16, dtype=torch.int32)), "table must be fp16"),
    (dict(table=torch.zeros(3, 1, 16)), "1 or G"),
    (dict(table=torch.zeros(1, 16, 1).expand(1, 16, 16)), "contiguous"),
    (dict(scales=torch.zeros(5, 16, dtype=torch.int8)), "scales"),
    (dict(bits=9), "bits"),
])
def test_bad_tensors_raise_format_error(bad, match):
    good = NF4Format(64).quantize(_w(16, 128))
    args = dict(qweight=good.qweight, scales=good.scales, table=good.table, bits=4, group_size=64, in_features=128)
    args.update(bad)
    with pytest.raises(FormatError, match=match):
        LutWeight(**args)


def test_bad_format_parameters():
    with pytest.raises(FormatError, match="e8m0"):
        Fp4Format(32, "e8m0", torch.float16)
    with pytest.raises(FormatError, match="scale_kind"):
        Fp4Format(32, "e4m3")
    with pytest.raises(FormatError, match="granularity"):
        CodebookFormat(4, 64, "tensor")
    with pytest.raises(FormatError, match="group_size"):
        NF4Format(48)


# --- bitsandbytes import ---------------------------------------------------------------------------
# Fixture source 1 (always): bitsandbytes' algorithm re-implemented from its source as read
# (bitsandbytes 0.50 backends/default/ops.py: quantize_4bit / dequantize_4bit / quantize_blockwise /
# dequantize_blockwise, functional.dequantize_4bit). Fixture source 2: bitsandbytes itself when it
# imports (it installs and runs on CPU: the tests below then also use functional.quantize_4bit).

def _spec_quantize_4bit(w, blocksize, code):
    flat = w.reshape(-1).float().view(-1, blocksize)
    absmax = flat.abs().max(dim=-1)[0]
    scaled = torch.clamp(flat * (1.0 / absmax.view(-1, 1)), -1, 1).reshape(-1)
    sv, order = torch.sort(code)
    q = order[torch.bucketize(scaled, (sv[:-1] + sv[1:]) / 2)].to(torch.uint8)
    return ((q[::2] << 4) | q[1::2]).unsqueeze(1), absmax


def _spec_dequantize_4bit(packed, absmax, blocksize, code, shape):
    a = packed.reshape(-1)
    q = torch.empty(a.numel() * 2, dtype=torch.int64)
    q[::2], q[1::2] = (a >> 4).long(), (a & 0xF).long()
    return (code[q].view(-1, blocksize) * absmax.view(-1, 1)).reshape(shape)


@pytest.mark.parametrize("blocksize", [64, 128])
def test_bnb_spec_fixture_bit_exact(blocksize):
    w = _w(24, 256, seed=blocksize)
    code = torch.tensor(NF4_VALUES)
    packed, absmax = _spec_quantize_4bit(w, blocksize, code)
    lw = bnb_4bit_to_lut(packed, absmax, (24, 256), blocksize, code)
    assert torch.equal(lw.dequantize(), _spec_dequantize_4bit(packed, absmax, blocksize, code, (24, 256)))
    # the nibble order matters: element 0 of the flat weight is the high nibble of byte 0
    assert int(lw.codes()[0, 0]) == int(packed[0, 0]) >> 4 and int(lw.codes()[0, 1]) == int(packed[0, 0]) & 15


def test_bnb_nested_absmax_formula():
    code2 = torch.linspace(-1, 1, 256)
    q = torch.randint(0, 256, (600,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    absmax2 = torch.rand(3) + 0.5
    got = bnb_absmax(q, code2, absmax2, 256, 0.125)
    want = torch.cat([(code2[q[:512].long()].view(2, 256) * absmax2[:2].view(-1, 1)).reshape(-1),
                      code2[q[512:].long()] * absmax2[2]]) + torch.tensor(0.125)
    assert torch.equal(got, want)


def test_bnb_import_errors():
    code = torch.tensor(NF4_VALUES)
    packed, absmax = _spec_quantize_4bit(_w(8, 192), 64, code)
    with pytest.raises(FormatError, match="straddle"):
        bnb_4bit_to_lut(packed, absmax, (16, 96), 64, code)  # 96 % 64 != 0
    with pytest.raises(FormatError, match="quant_map"):
        bnb_4bit_to_lut(packed, absmax, (8, 192), 64, code[:8])
    with pytest.raises(FormatError, match="bytes"):
        bnb_4bit_to_lut(packed[:-1], absmax, (8, 192), 64, code)
    with pytest.raises(FormatError, match="absmax"):
        bnb_4bit_to_lut(packed, absmax.half(), (8, 192), 64, code)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("nested", [False, True])
def test_bnb_library_bit_exact(quant_type, nested):
    F = pytest.importorskip("bitsandbytes.functional")
    w = _w(32, 384, seed=5)
    try:
        packed, st = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=nested)
    except Exception as e:  # noqa: BLE001 - a bitsandbytes build without this device's backend
        pytest.skip(f"bitsandbytes quantize_4bit unavailable here: {type(e).__name__}: {e}")
    lw = bnb_quant_state_to_lut(packed, st)
    assert torch.equal(lw.dequantize(), F.dequantize_4bit(packed, st).float())
