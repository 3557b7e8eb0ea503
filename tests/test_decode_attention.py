"""Split-KV decode attention (``kernels.decode_attention``, op ``lowbit::decode_attention``) against fp32
scaled_dot_product_attention over the same cache positions."""
import pytest
import torch
import torch.nn.functional as F

from helpers import DEVICE, HAS_CUDA, gpu_only
from lowbit.kernels.decode_attention import decode_attention, split_plan


def _reference(q, k, v, pos):
    s = k.shape[2]
    mask = (torch.arange(s, device=q.device) <= pos)[None, :].expand(q.shape[2], s)
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)


def _case(b, hkv, g, d, s, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv, g, d, generator=gen).to(DEVICE, dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(DEVICE, dtype)
    v = torch.randn(b, hkv, s, d, generator=gen).to(DEVICE, dtype)
    return q, k, v


def _check(out, ref, dtype):
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    err = (out.float() - ref).abs().max().item()
    assert err <= tol, f"max abs error {err:.3g} > {tol}"


# the last case has 256 (b, h) pairs: one chunk of 4 blocks per program (the online-softmax rescale across blocks)
@pytest.mark.parametrize("b, hkv, g, d, s", [(2, 2, 4, 64, 200), (1, 3, 1, 32, 70), (1, 1, 8, 128, 5),
                                             (16, 16, 2, 16, 200)])
@pytest.mark.parametrize("where", ["first", "block_edge", "mid", "last"])
def test_matches_masked_sdpa(b, hkv, g, d, s, where):
    dtype = torch.float16  # the interpreter's bf16 dot is wrong: bf16 on the GPU below
    q, k, v = _case(b, hkv, g, d, s, dtype)
    p = {"first": 0, "block_edge": min(63, s - 1), "mid": s // 2, "last": s - 1}[where]
    pos = torch.tensor([p], device=DEVICE)
    out = decode_attention(q, k, v, pos)
    assert out.shape == q.shape and out.dtype == dtype
    _check(out, _reference(q, k, v, p), dtype)


def test_positions_past_pos_are_ignored():
    """Garbage (NaN / huge) in the cache past pos must not reach the output."""
    q, k, v = _case(1, 2, 4, 64, 130, torch.float16)
    k[:, :, 90:] = float("nan")
    v[:, :, 90:] = 1e4
    pos = torch.tensor([89], device=DEVICE)
    out = decode_attention(q, k, v, pos)
    assert torch.isfinite(out).all()
    _check(out, _reference(q[:, :, :, :], k[:, :, :90], v[:, :, :90], 89), torch.float16)


@pytest.mark.parametrize("bh, s", [(8, 384), (256, 384), (1, 5), (8, 4096), (64, 64)])
def test_split_plan_covers_the_cache(bh, s):
    chunk, nsplit = split_plan(bh, s)
    assert chunk % 64 == 0 and nsplit & (nsplit - 1) == 0
    assert chunk * nsplit >= s and chunk * (nsplit // 2) < s or nsplit == 1


@gpu_only
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_op_cuda_graph_and_model_step(dtype):
    """The op on the GPU (bf16 too), replayed in a CUDA graph with a new position each time, and the model's
    one-token step with the kernel vs with SDPA."""
    import os

    from lowbit.models.llama import LlamaConfig, build_model
    from lowbit.ops_attention import decode_attention as op

    q, k, v = _case(2, 8, 4, 128, 384, dtype)
    pos = torch.tensor([0], device="cuda")
    out = op(q, k, v, pos)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = op(q, k, v, pos)
    for p in (5, 63, 64, 300, 383):
        pos.fill_(p)
        graph.replay()
        _check(out, _reference(q, k, v, p), dtype)

    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256)
    model = build_model(cfg, "cuda", dtype)
    model.setup_caches(1, 64)
    tokens = torch.randint(0, 1000, (1, 20), device="cuda")
    model(tokens, torch.arange(20, device="cuda"))
    step = torch.randint(0, 1000, (1, 1), device="cuda")
    ours = model(step, torch.tensor([20], device="cuda"))
    os.environ["LOWBIT_DECODE_ATTENTION"] = "0"
    try:
        model(tokens, torch.arange(20, device="cuda"))  # the same cache contents
        sdpa = model(step, torch.tensor([20], device="cuda"))
    finally:
        del os.environ["LOWBIT_DECODE_ATTENTION"]
    rel = ((ours.float() - sdpa.float()).norm() / sdpa.float().norm()).item()
    assert rel < (2e-2 if dtype == torch.bfloat16 else 3e-3), rel


@pytest.mark.skipif(HAS_CUDA, reason="CPU: the model keeps SDPA")
def test_cpu_model_keeps_sdpa():
    from lowbit.ops_attention import decode_attention_applies

    q, k, v = _case(1, 1, 4, 64, 8, torch.float16)
    assert not decode_attention_applies(q, k, v, torch.tensor([3]))


@pytest.mark.parametrize("p", [0, 70, 199])
def test_unwritten_chunks_stay_out_of_the_merge(monkeypatch, p):
    """Chunks past pos are neither written nor read: scratch pre-filled with NaN must not reach the output."""
    import lowbit.kernels.decode_attention as mod

    def nan_empty(*shape, **kw):
        return torch.full(*shape, float("nan"), **kw) if kw.get("dtype") == torch.float32 else torch.empty(*shape, **kw)

    monkeypatch.setattr(mod.torch, "empty", nan_empty)
    q, k, v = _case(1, 2, 4, 64, 200, torch.float16)
    pos = torch.tensor([p], device=DEVICE)
    out = decode_attention(q, k, v, pos)
    _check(out, _reference(q, k, v, p), torch.float16)
