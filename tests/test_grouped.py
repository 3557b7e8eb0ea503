"""Grouped (MoE) low-bit GEMM vs the per-expert fp32 dequantize-then-matmul oracle.

CPU: the Triton interpreter, fp16, small shapes; GPU: fp16 + bf16, CUDA graphs, the dequantize +
torch._grouped_mm path.
"""
import math

import pytest
import torch

from lowbit import FormatError, InputError, IntxFormat, ops
from lowbit.formats.intx import symmetric_zero
from lowbit.formats.intx_experts import IntxExpertWeights, quantize_experts
from lowbit.kernels.dequant import dequantize_intx
from lowbit.kernels.grouped import GroupedConfig, dequant_grouped_mm, grouped_wxa16, heuristic_config, max_tiles
from lowbit.kernels.launch import split_k_counters
from lowbit.ops import PER_CHANNEL_GROUP_LEN
from lowbit.ops_moe import reference_grouped

from helpers import DEVICE, KERNEL_DTYPES, gpu_only

E, N, K = 4, 40, 200  # N, K not multiples of the tiles; K not a multiple of the group (padded last group)
CONFIGS = {
    "mma": GroupedConfig(mma=True, block_m=16, block_n=32, block_k=64),
    "mma-splitk": GroupedConfig(mma=True, block_m=16, block_n=32, block_k=32, split_k=3),
    # 4-bit int zeros: packed dequant with accumulator rows in MMA fragment order (gemm.fragment_row_reps = 1)
    "mma-packed-rows": GroupedConfig(mma=True, block_m=16, block_n=64, block_k=64, split_k=2),
    "mma-packed-128": GroupedConfig(mma=True, block_m=128, block_n=64, block_k=128, num_warps=4, scale_after=False),
    # the group scale applied to each K tile's product (one group per tile) vs folded into the weights
    "mma-packed-post": GroupedConfig(mma=True, block_m=16, block_n=64, block_k=64, scale_after=True),
    "mma-packed-folded": GroupedConfig(mma=True, block_m=16, block_n=64, block_k=64, scale_after=False),
    # two K tiles per loop iteration (4 K tiles = 2 splits x 2 steps: ``gemm.k_unroll_ok``)
    "mma-packed-unroll": GroupedConfig(mma=True, block_m=16, block_n=64, block_k=64, split_k=2, k_unroll=2),
    "gemv2": GroupedConfig(mma=False, block_m=2, block_n=32, block_k=64),
    "gemv4-splitk": GroupedConfig(mma=False, block_m=4, block_n=32, block_k=64, split_k=2),
}


def _weights(bits=4, group_size=64, symmetric=False, zero_kind="int", dtype=torch.float16, e=E, n=N, k=K, seed=0):
    w = torch.randn(e, n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
    return quantize_experts(IntxFormat(bits, group_size, symmetric, zero_kind, dtype), w).to(DEVICE)


def _offsets(counts):
    return torch.tensor([0] + list(torch.tensor(counts).cumsum(0).tolist()), dtype=torch.int32, device=DEVICE)


def _x(rows, k=K, dtype=torch.float16, seed=1):
    return torch.randn(rows, k, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def _assert_close(y, ref, x, w: IntxExpertWeights, dtype):
    """eps * (|ref| + 4 sqrt(K) rms(x) rms(w)) per element (the dense kernels' bound, all experts' rms)."""
    eps = torch.finfo(dtype).eps
    wd = w.dequantize()
    scale = 4 * math.sqrt(x.shape[-1]) * x.float().pow(2).mean().sqrt() * wd.pow(2).mean().sqrt()
    err = (y.float() - ref.float()).abs()
    tol = eps * (ref.float().abs() + scale)
    assert y.shape == ref.shape and y.dtype == dtype
    assert (err <= tol).all(), f"{int((err > tol).sum())} of {err.numel()} off, max err {err.max().item():.4g}"


def _oracle(x, w, counts, bias=None, row_weights=None):
    """Independent of ops: rows of expert e are x[a:b] @ dequant(W_e)^T."""
    wd = w.dequantize()
    y = torch.zeros(x.shape[0], w.out_features)
    a = 0
    for e, c in enumerate(counts):
        y[a:a + c] = x[a:a + c].float().cpu() @ wd[e].cpu().t()
        if bias is not None:
            y[a:a + c] += bias[e].float().cpu()
        a += c
    if row_weights is not None:
        y *= row_weights.float().cpu()[:, None]
    return y.to(DEVICE)


def _launch(x, w, offsets, cfg, **kw):
    return grouped_wxa16(x, w.qweight, w.scales, w.zeros, kw.pop("bias", None), w.bits,
                         w.group_size or PER_CHANNEL_GROUP_LEN, symmetric_zero(w.bits), offsets, config=cfg, **kw)


@pytest.mark.parametrize("cfg", list(CONFIGS), ids=list(CONFIGS))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES)
def test_kernel_sorted_rows_with_bias_and_routing_weights(cfg, dtype):
    counts = [3, 0, 18, 2]  # an empty expert, one spanning two 16-row tiles
    w = _weights(dtype=dtype)
    x = _x(sum(counts), dtype=dtype)
    bias = torch.randn(E, N, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    rw = torch.rand(sum(counts), generator=torch.Generator().manual_seed(4)).to(DEVICE, dtype)
    y = _launch(x, w, _offsets(counts), CONFIGS[cfg], bias=bias, row_weights=rw)
    _assert_close(y, _oracle(x, w, counts, bias, rw), x, w, dtype)
    assert int(split_k_counters(x.device).abs().sum()) == 0


@pytest.mark.parametrize("bits,group_size,symmetric,zero_kind", [
    pytest.param(2, 64, True, "int", id="w2g64-sym"),
    pytest.param(3, 128, False, "int", id="w3g128"),
    pytest.param(4, None, False, "int", id="w4-perchannel"),
    pytest.param(8, 32, False, "float", id="w8g32-floatzero"),
])
@pytest.mark.parametrize("cfg", ["mma", "gemv2"])
def test_kernel_bit_widths(bits, group_size, symmetric, zero_kind, cfg):
    counts = [5, 1, 0, 9]
    w = _weights(bits, group_size, symmetric, zero_kind, seed=bits)
    x = _x(sum(counts))
    y = _launch(x, w, _offsets(counts), CONFIGS[cfg])
    _assert_close(y, _oracle(x, w, counts), x, w, torch.float16)


@pytest.mark.parametrize("counts", [[0, 0, 0, 7], [7, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]],
                         ids=["last-only", "first-only", "one-row", "no-rows"])
def test_zero_token_experts(counts):
    w = _weights()
    x = _x(max(1, sum(counts)))
    offsets = _offsets(counts)
    y = ops.grouped_gemm(x[: sum(counts)], w, offsets)
    assert y.shape == (sum(counts), N)
    if sum(counts):
        _assert_close(y, _oracle(x[: sum(counts)], w, counts), x, w, torch.float16)


def test_no_tokens_at_all():
    w = _weights()
    y = ops.grouped_gemm(_x(0), w, topk_ids=torch.zeros(0, 2, dtype=torch.long, device=DEVICE))
    assert y.shape == (0, N)


def test_rows_past_the_last_expert_are_ignored():
    """A fixed-size buffer (CUDA-graph style) with fewer real rows: the kernel reads none of the rest."""
    counts = [2, 0, 3, 0]
    w = _weights()
    x = _x(12)
    x[5:] = float("nan")
    y = _launch(x, w, _offsets(counts), CONFIGS["mma"])
    assert y.shape == (12, N)
    _assert_close(y[:5], _oracle(x[:5], w, counts), x[:5], w, torch.float16)


def _moe_oracle(x, w, ids, weights, bias=None):
    wd = w.dequantize()
    out = torch.zeros(x.shape[0], w.out_features)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            y = x[t].float().cpu() @ wd[e].cpu().t() + (0 if bias is None else bias[e].float().cpu())
            out[t] += (1.0 if weights is None else float(weights[t, j])) * y
    return out.to(DEVICE)


@pytest.mark.parametrize("t,topk,with_weights", [(1, 2, True), (6, 2, True), (5, 3, False)])
def test_unsorted_topk_map(t, topk, with_weights):
    w = _weights()
    x = _x(t, seed=t)
    g = torch.Generator().manual_seed(10 + t)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:topk] for _ in range(t)]).to(DEVICE)  # expert 3 unused
    weights = torch.softmax(torch.randn(t, topk, generator=g), -1).to(DEVICE, torch.float16) if with_weights else None
    bias = torch.randn(E, N, generator=g).to(DEVICE, torch.float16)
    y = ops.grouped_gemm(x, w, topk_ids=ids, topk_weights=weights, bias=bias)
    assert y.shape == (t, N)
    _assert_close(y, _moe_oracle(x, w, ids, weights, bias), x, w, torch.float16)


def test_gather_without_scatter_keeps_sorted_order():
    """What the MoE block's first GEMM does: rows gathered by token, output in expert order."""
    w = _weights()
    ids = torch.tensor([[2, 0], [0, 1], [2, 1]], device=DEVICE)
    x = _x(3)
    sorted_ids, offsets = ops.moe_align(ids, E)
    y = torch.ops.lowbit.grouped_gemm_wxa16(x, w.qweight, w.scales, w.zeros, None, 4, 64, K, offsets, sorted_ids,
                                            2, True, False, None)
    ref = reference_grouped(x, w.qweight, w.scales, w.zeros, None, 4, 64, K, offsets, sorted_ids, 2, True, False,
                            None)
    _assert_close(y, ref.float(), x, w, torch.float16)
    xs = x[(sorted_ids // 2).long()]
    _assert_close(y, _oracle(xs, w, [2, 2, 2, 0]), x, w, torch.float16)


def test_sorted_input_scattered_output_with_routing_weights():
    """The MoE block's second GEMM: rows already in expert order, written back in pair order, weighted."""
    w = _weights()
    ids = torch.tensor([[2, 0], [0, 1], [2, 1]], device=DEVICE)
    sorted_ids, offsets = ops.moe_align(ids, E)
    xs = _x(6)
    rw = torch.rand(6, generator=torch.Generator().manual_seed(5)).to(DEVICE, torch.float16)
    y = torch.ops.lowbit.grouped_gemm_wxa16(xs, w.qweight, w.scales, w.zeros, None, 4, 64, K, offsets, sorted_ids,
                                            2, False, True, rw)
    ref_sorted = _oracle(xs, w, [2, 2, 2, 0], row_weights=rw[sorted_ids.long()])
    ref = torch.zeros_like(ref_sorted).index_copy_(0, sorted_ids.long(), ref_sorted)
    _assert_close(y, ref, xs, w, torch.float16)


def test_stacked_dequantize_one_launch():
    w = _weights(3, 64, False, "float")
    d = dequantize_intx(w.qweight, w.scales, w.zeros, 3, 64, symmetric_zero(3), K, torch.float16)
    assert d.shape == (E, N, K)
    ref = w.dequantize()
    assert ((d.float() - ref).abs() <= torch.finfo(torch.float16).eps * ref.abs() + 1e-6).all()


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch._grouped_mm missing")
@pytest.mark.parametrize("gather,scatter", [(False, False), (True, True), (False, True)])
def test_dequant_grouped_mm_path(gather, scatter):
    """The large-rows backend (dequantize every expert + torch._grouped_mm), same contract as the kernel."""
    w = _weights(k=192)  # torch._grouped_mm wants 16-byte rows
    ids = torch.tensor([[2, 0], [0, 1], [2, 1], [1, 0]], device=DEVICE)
    sorted_ids, offsets = ops.moe_align(ids, E)
    x = _x(4 if gather else 8, k=192)
    bias = torch.randn(E, N, generator=torch.Generator().manual_seed(8)).to(DEVICE, torch.float16)
    rw = torch.rand(8, generator=torch.Generator().manual_seed(9)).to(DEVICE, torch.float16)
    args = (x, w.qweight, w.scales, w.zeros, bias, 4, 64, symmetric_zero(4), offsets, sorted_ids, 2, gather, scatter, rw)
    ref = reference_grouped(x, w.qweight, w.scales, w.zeros, bias, 4, 64, 192, offsets, sorted_ids, 2, gather,
                            scatter, rw)
    _assert_close(dequant_grouped_mm(*args), ref.float(), x, w, torch.float16)
    _assert_close(grouped_wxa16(*args), ref.float(), x, w, torch.float16)


def test_moe_align():
    ids = torch.tensor([[3, 1], [1, 0], [3, 0], [1, 3]], device=DEVICE)
    sorted_ids, offsets = ops.moe_align(ids, 5)
    assert offsets.tolist() == [0, 2, 5, 5, 8, 8]
    flat = ids.flatten()
    assert flat[sorted_ids.long()].tolist() == [0, 0, 1, 1, 1, 3, 3, 3]
    assert sorted_ids.tolist() == [3, 5, 1, 2, 6, 0, 4, 7]  # stable: token order inside an expert


def test_max_tiles_bounds_every_split():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        e = int(torch.randint(1, 70, (1,), generator=g))
        rows = int(torch.randint(1, 600, (1,), generator=g))
        bm = [1, 2, 4, 16, 64, 128][int(torch.randint(0, 6, (1,), generator=g))]
        cuts = torch.sort(torch.randint(0, rows + 1, (e - 1,), generator=g)).values.tolist()
        counts = [b - a for a, b in zip([0] + cuts, cuts + [rows])]
        assert sum(-(-c // bm) for c in counts) <= max_tiles(rows, e, bm)
    assert max_tiles(1, 8, 16) == 1 and max_tiles(2, 8, 16) == 2


@pytest.mark.parametrize("rows,experts,topk,mma,block_m", [
    (2, 8, 2, False, 1), (16, 8, 2, False, 4), (32, 60, 4, False, 2), (128, 8, 2, True, 16), (256, 60, 4, True, 16),
    (8192, 8, 2, True, 128)])
def test_heuristic_picks_the_loop_by_rows_per_expert(rows, experts, topk, mma, block_m):
    cfg = heuristic_config(rows, experts, 14336, 4096, 128, topk=topk)
    assert (cfg.mma, cfg.block_m) == (mma, block_m)
    assert cfg.split_k * rows * 14336 * 4 <= (256 << 20) or cfg.split_k == 1
    packed = heuristic_config(rows, experts, 14336, 4096, 128, topk=topk, packed=True)
    assert packed.mma and packed.block_m == (block_m if mma else 16)
    assert packed.block_k == 128 and packed.num_warps == (4 if packed.block_m in (16, 128) else 8)
    assert packed.k_unroll == (2 if packed.block_m == 16 else 1) and cfg.k_unroll == 1  # 32 K tiles: unrolled
    assert heuristic_config(rows, experts, 2048, 1408, 128, topk=topk, packed=True).k_unroll == 1  # 11 K tiles


def test_reference_backend_matches_triton(monkeypatch):
    counts = [4, 0, 2, 6]
    w = _weights()
    x = _x(sum(counts))
    y = ops.grouped_gemm(x, w, _offsets(counts))
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    y_ref = ops.grouped_gemm(x, w, _offsets(counts))
    _assert_close(y, y_ref.float(), x, w, torch.float16)


def _bad(**over):
    w = _weights()
    args = dict(x=_x(6), qweight=w.qweight, scales=w.scales, zeros=w.zeros, bias=None, bits=4, group_size=64,
                in_features=K, expert_offsets=_offsets([1, 2, 3, 0]), sorted_ids=None, topk=1, gather=False,
                scatter=False, row_weights=None)
    args.update(over)
    return torch.ops.lowbit.grouped_gemm_wxa16(**args)


@pytest.mark.parametrize("over,err,match", [
    (dict(x=torch.zeros(6, K - 1, dtype=torch.float16)), InputError, "in_features"),
    (dict(bits=3), FormatError, "qweight"),
    (dict(group_size=48), FormatError, "group_size"),
    (dict(expert_offsets=torch.zeros(4, dtype=torch.int32)), InputError, "E \\+ 1"),
    (dict(bias=torch.zeros(N, dtype=torch.float16)), InputError, "bias"),
    (dict(sorted_ids=torch.zeros(5, dtype=torch.int32), topk=2, gather=True), InputError, "sorted_ids"),
    (dict(gather=True), InputError, "gather"),
    (dict(row_weights=torch.zeros(5, dtype=torch.float16)), InputError, "row_weights"),
    (dict(topk=0), InputError, "topk"),
    (dict(scales=torch.zeros(4, N, 4, dtype=torch.float16).transpose(1, 2)), FormatError, "contiguous"),
])
def test_bad_inputs_raise_typed_errors(over, err, match):
    over = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in over.items()}
    with pytest.raises(err, match=match):
        _bad(**over)


def test_grouped_gemm_needs_offsets_or_ids():
    with pytest.raises(InputError, match="exactly one"):
        ops.grouped_gemm(_x(2), _weights())


def test_stacked_layout_is_per_expert_intx():
    w = _weights()
    assert w.qweight.shape == (E, 256 * 4 // 32, N) and w.scales.shape == (E, 4, N)
    single = IntxFormat(4, 64, False, "int", torch.float16).quantize(
        (torch.randn(E, N, K, generator=torch.Generator().manual_seed(0)) * 0.05)[2]).to(DEVICE)
    assert torch.equal(w.expert(2).qweight, single.qweight) and torch.equal(w.expert(2).scales, single.scales)
    with pytest.raises(FormatError, match="share"):
        IntxExpertWeights.stack([w.expert(0), IntxFormat(4, 32).quantize(torch.randn(N, K)).to(DEVICE)])


def test_opcheck_and_compile():
    w = _weights()
    x = _x(5)
    ids = torch.tensor([[0, 2], [1, 2], [2, 3], [0, 1], [3, 2]], device=DEVICE)
    sorted_ids, offsets = ops.moe_align(ids, E)
    rw = torch.rand(10).to(DEVICE, torch.float16)
    args = (x, w.qweight, w.scales, w.zeros, None, 4, 64, K, offsets, sorted_ids, 2, True, True, rw)
    torch.library.opcheck(torch.ops.lowbit.grouped_gemm_wxa16.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    torch._dynamo.reset()
    fn = torch.compile(lambda x, ids: ops.grouped_gemm(x, w, topk_ids=ids), fullgraph=True,
                       backend="aot_eager" if DEVICE == "cpu" else "inductor")
    torch.testing.assert_close(fn(x, ids), ops.grouped_gemm(x, w, topk_ids=ids))


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("t,topk,e", [(1, 2, 8), (8, 4, 60), (64, 2, 8), (512, 4, 60)])
def test_gpu_moe_shapes(dtype, bits, t, topk, e):
    n, k = 704, 1024  # fine-expert shape, scaled down
    w = _weights(bits, 128, False, "int", dtype, e=e, n=n, k=k)
    x = torch.randn(t, k, device="cuda", dtype=dtype)
    ids = torch.stack([torch.randperm(e, device="cuda")[:topk] for _ in range(t)])
    wts = torch.softmax(torch.randn(t, topk, device="cuda"), -1).to(dtype)
    y = ops.grouped_gemm(x, w, topk_ids=ids, topk_weights=wts)
    sorted_ids, offsets = ops.moe_align(ids, e)
    ref = reference_grouped(x, w.qweight, w.scales, w.zeros, None, bits, 128, k, offsets, sorted_ids, topk, True,
                            True, wts.flatten()).float().view(t, topk, n).sum(1)
    _assert_close(y, ref, x, w, dtype)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("fused", [True, False])
def test_gpu_large_rows_per_expert_paths(fused, monkeypatch):
    """4096 tokens over 8 experts: dequantize + torch._grouped_mm by default, the fused kernel forced."""
    monkeypatch.setenv("LOWBIT_GROUPED_FUSED", "1" if fused else "0")
    w = _weights(4, 128, False, "int", torch.bfloat16, e=8, n=512, k=1024)
    counts = [1024, 0, 700, 1, 1300, 500, 300, 271]
    x = torch.randn(sum(counts), 1024, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
    y = ops.grouped_gemm(x, w, _offsets(counts), bias=bias)
    _assert_close(y, _oracle(x, w, counts, bias), x, w, torch.bfloat16)


@pytest.mark.gpu
@gpu_only
@pytest.mark.parametrize("t", [1, 8, 64])
def test_gpu_cuda_graph_replay_with_new_routing(t):
    e, topk = 8, 2
    w = _weights(4, 128, False, "int", torch.bfloat16, e=e, n=1024, k=2048)
    x = torch.randn(t, 2048, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, e, (t, topk), device="cuda")
    wts = torch.rand(t, topk, device="cuda", dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.grouped_gemm(x, w, topk_ids=ids, topk_weights=wts)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):  # raises if anything syncs with the host during capture
        out = ops.grouped_gemm(x, w, topk_ids=ids, topk_weights=wts)
    for _ in range(2):
        x.copy_(torch.randn_like(x))
        ids.copy_(torch.randint(0, e, (t, topk), device="cuda"))  # other experts, other counts (some empty)
        wts.copy_(torch.rand_like(wts))
        g.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(out, ops.grouped_gemm(x, w, topk_ids=ids, topk_weights=wts), rtol=0, atol=0)


@pytest.mark.parametrize("cfg", list(CONFIGS) + ["dequant-mm"], ids=list(CONFIGS) + ["dequant-mm"])
def test_mma_word_order_experts(cfg):
    """Expert words in the mma word order (k_order=1, what QuantMoEExperts runs): every loop of the grouped
    kernel and the dequantize + grouped-mm path give the natural-order result."""
    from lowbit.formats.intx import from_mma_words, to_mma_words

    counts = [3, 0, 18, 2]
    w = _weights(seed=5)
    mma = to_mma_words(w.qweight)
    assert torch.equal(from_mma_words(mma), w.qweight) and not torch.equal(mma, w.qweight)
    x = _x(sum(counts))
    w_mma = IntxExpertWeights(mma, w.scales, w.zeros, w.bits, w.group_size, w.in_features)
    if cfg == "dequant-mm":
        if not (DEVICE == "cuda" and hasattr(torch, "_grouped_mm")):
            pytest.skip("torch._grouped_mm needs CUDA")
        y = dequant_grouped_mm(x, mma, w.scales, w.zeros, None, 4, w.group_size, symmetric_zero(4), _offsets(counts),
                               k_order=1)
    else:
        y = _launch(x, w_mma, _offsets(counts), CONFIGS[cfg], k_order=1)
    _assert_close(y, _oracle(x, w, counts), x, w, torch.float16)
    y_op = ops.grouped_gemm(x, w_mma, _offsets(counts), k_order=1)
    _assert_close(y_op, _oracle(x, w, counts), x, w, torch.float16)


def test_grouped_k_unroll_applies():
    """The unrolled config of CONFIGS runs 2 K tiles per iteration (K = 200 -> 4 tiles of 64 in either word
    order), not when a split would hold an odd number of tiles or a tile two groups."""
    import dataclasses

    from lowbit.kernels.grouped import grouped_packed_meta

    cfg = CONFIGS["mma-packed-unroll"]
    z = torch.zeros(1, dtype=torch.uint8)
    for k_order in (0, 1):
        assert grouped_packed_meta(cfg, 4, z, 8.0, 64, False, k_order, K)["K_UNROLL"] == 2
    assert grouped_packed_meta(dataclasses.replace(cfg, split_k=3), 4, z, 8.0, 64, False, 1, K)["K_UNROLL"] == 1
    assert grouped_packed_meta(dataclasses.replace(cfg, block_k=128), 4, z, 8.0, 64, False, 1, 512)["K_UNROLL"] == 1


def test_grouped_heuristic_folds_the_scale_only_where_the_dense_guard_allows():
    """128-row packed tiles fold the group scale (``scale_after=False``) with groups of 128 (one 128-k tile per
    group, ``gemm.folded_scale_ok``); groups of 256 take 64-row tiles with the post-MMA scale instead."""
    from lowbit.kernels.gemm import folded_scale_ok

    g128 = heuristic_config(8192, 8, 14336, 4096, 128, topk=2, packed=True)
    assert (g128.block_m, g128.scale_after) == (128, False) and folded_scale_ok(g128, 128)
    g256 = heuristic_config(8192, 8, 14336, 4096, 256, topk=2, packed=True)
    assert g256.block_m == 64 and g256.scale_after and g256.block_k == 128
    # a folded config passed in gets the same guard as the dense GEMM's (``gemm.scale_after_applies``)
    from lowbit.kernels.grouped import grouped_packed_meta

    z = torch.zeros(1, dtype=torch.uint8)
    folded = GroupedConfig(mma=True, block_m=128, block_n=64, block_k=128, num_warps=4, scale_after=False)
    assert grouped_packed_meta(folded, 4, z, 8.0, 128, False, 1, 512)["SCALE_AFTER"] is False
    assert grouped_packed_meta(folded, 4, z, 8.0, 256, False, 1, 512)["SCALE_AFTER"] is True
    counts = [130, 0, 140]  # ~135 rows per active expert: the 128-row bucket, groups of 256 -> 64-row tiles
    w = _weights(group_size=256, e=3, n=40, k=512, seed=9)
    x = _x(sum(counts), k=512)
    assert heuristic_config(sum(counts), 3, 40, 512, 256, packed=True).block_m == 64
    _assert_close(ops.grouped_gemm(x, w, _offsets(counts)), _oracle(x, w, counts), x, w, torch.float16)
