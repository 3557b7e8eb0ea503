"""Tensor-parallel sharding (lowbit.tp) in one process: every format's shard is a slice of the packed
tensors whose dequantize() equals the slice of the full dequantize() bit for bit; typed errors;
modules' shard() outputs combine (cat / sum) to the unsharded output; MoE experts; model plans."""
import pytest
import torch
from torch import nn

from lowbit.errors import FormatError, LowbitError, ShardError
from lowbit.formats import Fp8Format, Int8Format, IntxFormat, quantize_experts
from lowbit.formats.lut import CodebookFormat, Fp4Format, NF4Format
from lowbit.nn import QuantLinear
from lowbit.nn_a8 import Float8Linear, Int8Linear, W4A8Linear
from lowbit.nn_lut import LutLinear
from lowbit.tp import (COLUMN, LLAMA_PLAN, ROW, ColumnParallel, RowParallel, shard_bias, shard_linear,
                       shard_model_, shard_ranges, shard_weight)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _dense(n, k, seed=0):
    return torch.randn(n, k, generator=_gen(seed)) * 0.05


@pytest.fixture
def reference_backend(monkeypatch):
    """Module combination tests: the shard bookkeeping is under test, not the kernels (test_tp_dist runs them)."""
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def _check_shards(q, ws, dim, sections=None):
    """Every rank's shard dequantizes to the matching slice of the full weight, bit for bit; returns shards."""
    full = q.dequantize()
    axis = 0 if dim == COLUMN else 1
    shards = [shard_weight(q, r, ws, dim, sections) for r in range(ws)]
    for r, s in enumerate(shards):
        assert type(s) is type(q)
        idx = torch.cat([torch.arange(a, b) for a, b in
                         shard_ranges(full.shape[axis], r, ws, what="NK"[axis], sections=sections)])
        want = full.index_select(axis, idx)
        got = s.dequantize()
        assert got.shape == want.shape and torch.equal(got, want), (r, dim)
        for t in s.tensors().values():  # compact copies: a saved shard does not carry the full storage
            assert t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    return shards


# ---- intx: every bit width, zero kind, group size; the packed codes themselves are slices -------------------

ZERO_KINDS = [(True, "int"), (False, "int"), (False, "float")]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric,zero_kind", ZERO_KINDS, ids=["sym", "int-zero", "float-zero"])
@pytest.mark.parametrize("group_size", [64, None], ids=["g64", "pc"])
def test_intx_shards_are_bit_exact(bits, symmetric, zero_kind, group_size):
    q = IntxFormat(bits, group_size, symmetric, zero_kind, torch.float16).quantize(_dense(48, 256, bits))
    for ws in (2, 4):
        cols = _check_shards(q, ws, COLUMN)
        assert torch.equal(torch.cat([s.qweight for s in cols], 1), q.qweight)
        rows = _check_shards(q, ws, ROW)
        codes = q.codes()
        for r, s in enumerate(rows):  # the codes (not only their dequantized values) are the slice
            assert torch.equal(s.codes(), codes[:, r * 256 // ws:(r + 1) * 256 // ws])
            assert s.in_features == 256 // ws and s.group_size == group_size


@pytest.mark.parametrize("bits", [3, 4, 7])
def test_intx_ragged_k_column_and_world_size_one(bits):
    q = IntxFormat(bits, 64, False, "int", torch.float16).quantize(_dense(30, 200, bits))  # Kp = 256
    _check_shards(q, 2, COLUMN)
    for dim in (COLUMN, ROW):
        one = shard_weight(q, 0, 1, dim)
        assert torch.equal(one.qweight, q.qweight) and one.in_features == 200
        assert torch.equal(one.dequantize(), q.dequantize())


def test_intx_row_errors_name_group_size_k_and_world_size():
    q = IntxFormat(4, 128, False, "int", torch.float16).quantize(_dense(16, 384))
    with pytest.raises(ShardError, match=r"K=384.*world_size=2.*group_size=128"):
        shard_weight(q, 0, 2, ROW)  # 192 per shard cuts a group of 128
    with pytest.raises(ShardError, match=r"K=384 is not divisible by world_size=5"):
        shard_weight(q, 0, 5, ROW)
    with pytest.raises(ShardError, match=r"N=16 is not divisible by world_size=3"):
        shard_weight(q, 0, 3, COLUMN)
    pc = IntxFormat(4, None, True).quantize(_dense(16, 192))
    with pytest.raises(ShardError, match=r"K=192.*world_size=4.*multiples of 32"):
        shard_weight(pc, 1, 4, ROW)
    ragged = IntxFormat(4, 64).quantize(_dense(16, 200))
    with pytest.raises(ShardError, match="not divisible"):
        shard_weight(ragged, 0, 3, ROW)
    with pytest.raises(ShardError, match="group_size=64"):
        shard_weight(ragged, 0, 2, ROW)  # 100 per shard
    assert issubclass(ShardError, FormatError) and issubclass(ShardError, LowbitError)


@pytest.mark.parametrize("bad", [dict(rank=2, world_size=2), dict(rank=-1, world_size=2), dict(rank=0, world_size=0),
                                 dict(rank=0, world_size=2, dim="diagonal"), dict(rank=0, world_size=2, dim=2),
                                 dict(rank=0, world_size=2, dim=ROW, sections=(64, 64))])
def test_bad_rank_dim_sections(bad):
    q = IntxFormat(4, 64).quantize(_dense(128, 128))
    kw = dict(dim=COLUMN) | bad
    with pytest.raises(ShardError):
        shard_weight(q, **kw)


def test_unknown_weight_type():
    with pytest.raises(ShardError, match="no tensor-parallel rule for Tensor"):
        shard_weight(torch.zeros(4, 4), 0, 2, COLUMN)


def test_fused_sections_shard_each_section():
    q = IntxFormat(4, 64).quantize(_dense(96 + 32 + 32, 128))  # qkv: q 96, k 32, v 32
    sec = (96, 32, 32)
    full = q.dequantize()
    for r in range(2):
        s = shard_weight(q, r, 2, COLUMN, sec)
        want = torch.cat([full[48 * r:48 * (r + 1)], full[96 + 16 * r:96 + 16 * (r + 1)],
                          full[128 + 16 * r:128 + 16 * (r + 1)]])
        assert torch.equal(s.dequantize(), want)
    with pytest.raises(ShardError, match=r"N=32 \(section of N=160\) is not divisible by world_size=3"):
        shard_weight(IntxFormat(4, 64).quantize(_dense(160, 128)), 0, 3, COLUMN, (96, 32, 32))
    with pytest.raises(ShardError, match="sum to"):
        shard_weight(q, 0, 2, COLUMN, (96, 32))


# ---- LUT, fp8, int8, experts -----------------------------------------------------------------------------

LUT_FORMATS = [
    pytest.param(NF4Format(64, torch.float16), id="nf4"),
    pytest.param(Fp4Format(32, "e8m0", torch.bfloat16), id="fp4-e8m0"),
    pytest.param(CodebookFormat(3, 64, "row", torch.float16, iters=3), id="codebook3-row"),
    pytest.param(CodebookFormat(2, 64, "group", torch.float16, iters=3), id="codebook2-group"),
]


@pytest.mark.parametrize("fmt", LUT_FORMATS)
def test_lut_shards_are_bit_exact(fmt):
    q = fmt.quantize(_dense(32, 256, 5))
    for ws in (2, 4):
        for s in _check_shards(q, ws, COLUMN) + _check_shards(q, ws, ROW):
            assert s.table.shape[0] in (1, s.num_groups) and s.table.shape[1] in (1, s.out_features)
    if isinstance(fmt, CodebookFormat) and fmt.granularity == "group":
        assert shard_weight(q, 1, 2, ROW).table.shape[0] == 2  # per-group tables follow their groups
    with pytest.raises(ShardError, match=f"group_size={fmt.group_size}"):
        shard_weight(fmt.quantize(_dense(32, 3 * fmt.group_size)), 0, 2, ROW)


@pytest.mark.parametrize("granularity", ["row", "block"])
def test_fp8_shards_are_bit_exact(granularity):
    q = Fp8Format(granularity).quantize(_dense(512, 512, 7))
    for ws in (2, 4) if granularity == "block" else (2, 4, 8):
        _check_shards(q, ws, COLUMN)
        _check_shards(q, ws, ROW)


def test_fp8_block_errors_and_ragged_edge_block():
    q = Fp8Format("block").quantize(_dense(256, 384))
    with pytest.raises(ShardError, match=r"K=384 over world_size=2.*128x128 scale block"):
        shard_weight(q, 0, 2, ROW)
    with pytest.raises(ShardError, match=r"N=256 over world_size=4.*128x128 scale block"):
        shard_weight(q, 0, 4, COLUMN)
    assert Fp8Format("row").quantize(_dense(256, 384)).scales.shape == (256,)
    edge = Fp8Format("block").quantize(_dense(200, 256))  # N = 200: a short edge block; K splits fine
    _check_shards(edge, 2, ROW)
    # fused sections: every section offset must fall on a block edge
    _check_shards(Fp8Format("block").quantize(_dense(512, 256)), 2, COLUMN, (256, 256))
    with pytest.raises(ShardError, match="section"):
        shard_weight(Fp8Format("block").quantize(_dense(384, 256)), 0, 2, COLUMN, (128, 256))


@pytest.mark.parametrize("smooth", [False, True])
def test_int8_shards_are_bit_exact(smooth):
    w = _dense(96, 96, 9)
    fmt = Int8Format(0.5 if smooth else None)
    q = fmt.quantize(w, act_amax=torch.rand(96, generator=_gen(3)) + 0.1) if smooth else fmt.quantize(w)
    for ws in (2, 3):
        _check_shards(q, ws, COLUMN)
        rows = _check_shards(q, ws, ROW)
        assert (rows[0].inv_smooth is None) == (not smooth)


def test_expert_stack_shards_are_bit_exact():
    q = quantize_experts(IntxFormat(3, 64, False, "float", torch.float16), torch.randn(3, 64, 128) * 0.05)
    for dim in (COLUMN, ROW):
        for r in range(2):
            s = shard_weight(q, r, 2, dim)
            for e in range(3):
                full = q.expert(e).dequantize()
                want = full[32 * r:32 * (r + 1)] if dim == COLUMN else full[:, 64 * r:64 * (r + 1)]
                assert torch.equal(s.expert(e).dequantize(), want)


# ---- modules: shard() keeps the class, outputs combine to the unsharded output ---------------------------

def _modules(n=256, k=256):
    lin = nn.Linear(k, n, bias=True)
    with torch.no_grad():
        lin.weight.copy_(_dense(n, k, 11))
        lin.bias.copy_(torch.randn(n, generator=_gen(12)))
    lin = lin.half()
    return {
        "intx4": QuantLinear.from_linear(lin, IntxFormat(4, 64, False, "int", torch.float16)),
        "intx3-sym": QuantLinear.from_linear(lin, IntxFormat(3, 64, True, "int", torch.float16)),
        "nf4": LutLinear.from_linear(lin, NF4Format(64, torch.float16)),
        "fp8-block": Float8Linear.from_linear(lin, Fp8Format("block")),
        "int8": Int8Linear.from_linear(lin, Int8Format()),
        "w4a8": W4A8Linear.from_linear(lin, IntxFormat(4, 64, True, "int", torch.float16)),
        "dense": lin,
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_module_shards_combine(name, reference_backend):
    mod = _modules()[name]
    x = torch.randn(5, 256, generator=_gen(13)).half()
    y = mod(x).float()
    tol = dict(rtol=2e-3, atol=2e-3)
    cols = [mod.shard(r, 2, COLUMN) if name != "dense" else shard_linear(mod, r, 2, 0) for r in range(2)]
    rows = [mod.shard(r, 2, ROW) if name != "dense" else shard_linear(mod, r, 2, 1) for r in range(2)]
    assert all(type(c) is type(mod) for c in cols + rows)
    assert [c.out_features for c in cols] == [128, 128] and [c.in_features for c in rows] == [128, 128]
    assert rows[0].bias is not None and rows[1].bias is None  # row-parallel bias: added once, on rank 0
    torch.testing.assert_close(torch.cat([c(x).float() for c in cols], -1), y, **tol)
    if name in ("int8", "w4a8"):  # per-token activation scales are per shard: the fp32 math of those operands
        return
    torch.testing.assert_close(sum(rw(x[:, 128 * r:128 * (r + 1)]).float() for r, rw in enumerate(rows)), y, **tol)


def test_state_dict_of_a_shard_round_trips(reference_backend):
    s = _modules()["intx4"].shard(1, 2, ROW)
    t = QuantLinear(s.weight, s.bias)
    t.load_state_dict(s.state_dict())
    x = torch.randn(3, 128, generator=_gen(1)).half()
    assert torch.equal(t(x), s(x))


def test_shard_bias():
    b = torch.arange(8.0)
    assert torch.equal(shard_bias(b, 1, 2, COLUMN), b[4:])
    assert torch.equal(shard_bias(b, 1, 2, COLUMN, (4, 4)), torch.tensor([2.0, 3.0, 6.0, 7.0]))
    assert torch.equal(shard_bias(b, 0, 2, ROW), b) and shard_bias(b, 1, 2, ROW) is None
    assert shard_bias(None, 0, 2, ROW) is None
    with pytest.raises(ShardError):
        shard_bias(b, 3, 2, ROW)


def test_wrappers_without_process_group_are_local(reference_backend):
    """Uninitialized torch.distributed = world size 1: the wrappers run the local layer unchanged."""
    mod = _modules()["intx4"]
    x = torch.randn(2, 256, generator=_gen(2)).half()
    assert torch.equal(ColumnParallel.from_full(mod)(x), mod(x))
    assert torch.equal(RowParallel.from_full(mod, input_is_parallel=False)(x), mod(x))


def test_moe_experts_shard_sums_to_full(reference_backend):
    from lowbit.nn_moe import QuantMoEExperts

    e, h, i = 4, 128, 128
    fmt = IntxFormat(4, 64, False, "int", torch.float16)
    full = QuantMoEExperts.from_dense(torch.randn(e, 2 * i, h, generator=_gen(4)) * 0.05,
                                      torch.randn(e, h, i, generator=_gen(5)) * 0.05, fmt)
    x = torch.randn(6, h, generator=_gen(6)).half()
    ids = torch.randint(0, e, (6, 2), generator=_gen(7))
    wts = torch.rand(6, 2, generator=_gen(8)).half()
    shards = [full.shard(r, 2) for r in range(2)]
    assert shards[0].intermediate_dim == i // 2 and shards[0].hidden_dim == h
    torch.testing.assert_close(sum(s(x, ids, wts).float() for s in shards), full(x, ids, wts).float(),
                               rtol=2e-3, atol=2e-3)


def test_shard_model_plan_on_lowbit_llama_block():
    from lowbit.models.llama import LlamaConfig, build_model

    cfg = LlamaConfig(name="t", vocab_size=64, hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    model = build_model(cfg, dtype=torch.float32)
    attn = model.layers[0].self_attn
    qkv = attn.qkv_proj.weight.detach().clone()
    shard_model_(model, 1, 2)
    assert (attn.n_heads, attn.n_kv) == (2, 1)
    assert isinstance(attn.qkv_proj, ColumnParallel) and isinstance(attn.o_proj, RowParallel)
    assert isinstance(model.layers[0].mlp.gate_up_proj, ColumnParallel) and isinstance(model.layers[0].mlp.down_proj,
                                                                                      RowParallel)
    hd = cfg.head_dim
    want = torch.cat([qkv[2 * hd:4 * hd], qkv[4 * hd + hd:4 * hd + 2 * hd], qkv[6 * hd + hd:]])
    assert torch.equal(attn.qkv_proj.local.weight, want)
    assert "o_proj" in LLAMA_PLAN and LLAMA_PLAN["down_proj"].dim == ROW
    with pytest.raises(ShardError, match="n_kv=1 is not divisible by world_size=2"):
        m2 = build_model(LlamaConfig(name="t", vocab_size=64, hidden_size=128, intermediate_size=256,
                                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=1),
                         dtype=torch.float32)
        shard_model_(m2, 0, 2)


# ---- the benchmark's shape table includes the TP shards ---------------------------------------------------

def test_bench_dry_run_lists_tp_shards(capsys):
    from lowbit.bench import main

    assert main(["--shapes", "llama3-8b-tp2,llama3-70b-tp4", "--m", "1,16", "--baselines", "none", "--dry-run"]) == 0
    rows = {tuple(line.split()[:5]) for line in capsys.readouterr().out.splitlines()}
    for row in [("llama3-8b-tp2", "qkv", "column", "3072", "4096"), ("llama3-8b-tp2", "o", "row", "4096", "2048"),
                ("llama3-8b-tp2", "gate_up", "column", "14336", "4096"), ("llama3-8b-tp2", "down", "row", "4096", "7168"),
                ("llama3-70b-tp4", "qkv", "column", "2560", "8192"), ("llama3-70b-tp4", "o", "row", "8192", "2048"),
                ("llama3-70b-tp4", "gate_up", "column", "14336", "8192"),
                ("llama3-70b-tp4", "down", "row", "8192", "7168")]:
        assert row in rows, row


@pytest.mark.parametrize("model", ["llama3-8b", "llama3-70b"])
@pytest.mark.parametrize("tp", [2, 4, 8])
def test_bench_tp_shapes_are_what_lowbit_tp_produces(model, tp):
    """The table's shard of every layer is the shape lowbit.tp cuts, group-aligned at g128 and 128x128
    fp8 blocks (Llama-3 dims); checked through shard_ranges, the function every format's shard uses."""
    from lowbit.bench.shapes import MODELS, model_shapes

    for full, shard in zip(MODELS[model], model_shapes(f"{model}-tp{tp}")):
        axis_size = full.n if full.parallel == COLUMN else full.k
        (a, b), = shard_ranges(axis_size, tp - 1, tp, 128, "group of 128", "NK"[full.parallel == ROW])
        assert b - a == (shard.n if full.parallel == COLUMN else shard.k)
        assert (shard.n, shard.k) == ((b - a, full.k) if full.parallel == COLUMN else (full.n, b - a))
