"""e2e building blocks on CPU: formats applied to the model, accuracy proxy, Generator modes vs eager."""
import math

import pytest
import torch
from torch import nn

from helpers import gpu_only
from lowbit import QuantLinear
from lowbit.models import LlamaConfig, build_model
from lowbit.models.generate import (
    Generator, cache_len, compare_logits, eager_generate, entropy_nats, greedy_agreement, teacher_forced_logits,
)
from lowbit.models.quant import TinygemmLinear, apply_format, parse_format, parse_formats, weight_bytes

CFG = LlamaConfig(name="t", vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def tokens(b, t, seed=0):
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def quantized(name, lm_head=False):
    return apply_format(build_model(CFG, "cpu", torch.float32, seed=0), parse_format(name), lm_head)


@pytest.fixture(scope="module")
def w4_model():
    return quantized("w4a16")


def test_parse_formats():
    fs = parse_formats("bf16, tinygemm,w4a16,w3a16-g64,w2a16-pc-sym,w4a16")
    assert [f.name for f in fs] == ["bf16", "tinygemm", "w4a16", "w3a16-g64", "w2a16-pc-sym"]
    assert (fs[3].bits, fs[3].group_size, fs[3].symmetric) == (3, 64, False)
    assert (fs[4].bits, fs[4].group_size, fs[4].symmetric) == (2, None, True)
    assert fs[0].label(torch.float32) == "fp32" and fs[2].label(torch.bfloat16) == "w4a16 g128"
    ok, why = fs[1].available(torch.device("cpu"), torch.bfloat16)
    assert not ok and "CUDA" in why
    a8 = parse_formats("fp8,fp8-block,int8,w4a8,w8a8")
    assert [f.kind for f in a8] == ["fp8", "fp8-block", "int8", "w4a8"]  # w8a8 = int8, deduplicated
    assert a8[3].label(torch.bfloat16) == "w4a8-fp8 g128" and a8[3].bits == 4
    with pytest.raises(ValueError, match="unknown format"):
        parse_format("w9a16")
    with pytest.raises(ValueError, match="unknown format"):
        parse_format("fp4a8")


@pytest.mark.parametrize("name,module", [("int8", "Int8Linear"), ("w4a8", "W4A8Linear"), ("fp8", "Float8Linear")])
def test_apply_format_8bit_activations(name, module):
    """The 8-bit-activation e2e formats go through quantize_ (every linear but the lm_head) and run the
    model (CPU: the reference backend / interpreter) close to the dense logits."""
    m = quantized(name)
    kinds = {type(mod).__name__ for n, mod in m.named_modules() if n.startswith("layers.") and "proj" in n}
    assert kinds == {module} and isinstance(m.lm_head, nn.Linear)
    dense = build_model(CFG, "cpu", torch.float32, seed=0)
    t = tokens(1, 6)
    ref, got = dense(t), m(t)
    assert got.shape == ref.shape
    assert ((got - ref).norm() / ref.norm()).item() < 0.3


def test_apply_format_replaces_linears_but_not_embedding_or_lm_head(w4_model):
    m = w4_model
    q = [n for n, mod in m.named_modules() if isinstance(mod, QuantLinear)]
    assert len(q) == 4 * CFG.num_hidden_layers and "lm_head" not in q
    assert isinstance(m.lm_head, nn.Linear) and isinstance(m.embed_tokens, nn.Embedding)
    assert isinstance(quantized("w4a16", lm_head=True).lm_head, QuantLinear)
    dense = build_model(CFG, "cpu", torch.float32, seed=0)
    assert apply_format(dense, parse_format("bf16")) is dense
    assert weight_bytes(dense) == 4 * CFG.num_params()
    assert weight_bytes(quantized("w2a16")) < weight_bytes(m) < weight_bytes(dense)


def test_tinygemm_linear_refuses_cpu_or_odd_shapes():
    with pytest.raises((RuntimeError, ValueError, NotImplementedError)):
        TinygemmLinear(nn.Linear(100, 64, bias=False).bfloat16())


def test_compare_logits_identity_and_known_kl():
    a = torch.randn(3, 5, 11)
    r = compare_logits(a, a)
    assert r["top1_agree"] == 1.0 and r["kl_mean"] == pytest.approx(0.0, abs=1e-6) and r["positions"] == 15
    p, q = torch.tensor([[0.5, 0.5]]).log(), torch.tensor([[0.9, 0.1]]).log()
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert compare_logits(p, q)["kl_mean"] == pytest.approx(kl, rel=1e-5)
    assert entropy_nats(torch.zeros(2, 8)) == pytest.approx(math.log(8), rel=1e-6)
    assert greedy_agreement(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]]),
                            torch.tensor([[1, 9, 3, 4], [1, 2, 3, 4]])) == pytest.approx((0.25 + 1.0) / 2)


def test_accuracy_proxy_orders_bit_widths():
    toks = tokens(2, 12)
    ref = teacher_forced_logits(build_model(CFG, "cpu", torch.float32, seed=0), toks, 8)
    assert ref.shape == (2, 12, CFG.vocab_size)
    acc = {n: compare_logits(ref, teacher_forced_logits(quantized(n), toks, 8)) for n in ("w8a16", "w4a16", "w2a16")}
    assert acc["w8a16"]["top1_agree"] > 0.9 and acc["w8a16"]["kl_mean"] < 0.01
    assert acc["w8a16"]["top1_agree"] > acc["w4a16"]["top1_agree"] > acc["w2a16"]["top1_agree"]
    assert acc["w8a16"]["kl_mean"] < acc["w4a16"]["kl_mean"] < acc["w2a16"]["kl_mean"]
    assert acc["w2a16"]["top1_agree"] < 0.6  # W2 of random weights really is lossy: the proxy sees it


@pytest.mark.parametrize("mode", ["none", "graph", "compile-graph", "reduce-overhead"])
def test_generator_matches_eager_greedy_decode(mode, w4_model):
    """On CPU the graph modes run eager and the compile modes trace with aot_eager (fullgraph=True)."""
    from torch._dynamo.utils import counters

    m = w4_model
    prompt = tokens(2, 6, seed=1)
    graphs = counters["stats"]["unique_graphs"]
    gen = Generator(m, 2, 6, 5, mode)
    try:
        assert m.max_seq == cache_len(6, 5) == 16
        got = gen.generate(prompt, 4)
        gen.load(prompt)
        gen.prefill()
        gen.decode(3)
        assert int(gen.pos) == 6 + 3
        # one graph for prefill, one for decode: every layer reuses the compiled layer (no recompiles)
        assert counters["stats"]["unique_graphs"] - graphs == (0 if mode in ("none", "graph") else 2)
    finally:
        gen.close()
    assert m.causal is None
    m.setup_caches(2, 16)
    want = eager_generate(m, prompt, 4)
    m.clear_caches()
    assert got.shape == (2, 5) and torch.equal(got, want)
    with torch.no_grad():  # and greedy decode with the cache equals argmax of the full forward
        seq = torch.cat([prompt, want[:, :-1]], 1)
        assert torch.equal(m(seq)[:, 5:].argmax(-1), want)


GPU_CFG = LlamaConfig(name="g", vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


@gpu_only
@pytest.mark.parametrize("mode,fmt", [("graph", "bf16"), ("graph", "w4a16"), ("graph", "tinygemm"),
                                      ("compile-graph", "bf16"), ("compile-graph", "w4a16"),
                                      ("compile-graph", "tinygemm"), ("reduce-overhead", "w4a16"),
                                      ("graph", "w4a8"), ("compile-graph", "w4a8"), ("compile-graph", "fp8"),
                                      ("compile-graph", "int8")])
def test_cuda_generator_matches_eager(mode, fmt, monkeypatch):
    """The captured / compiled decode loop on the GPU (Triton kernels, bf16) against plain eager calls."""
    monkeypatch.delenv("LOWBIT_BACKEND")
    m = apply_format(build_model(GPU_CFG, "cuda", torch.bfloat16, seed=0), parse_format(fmt))
    prompt = torch.randint(0, GPU_CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0)).cuda()
    gen = Generator(m, 2, 16, 8, mode)
    try:
        got = gen.generate(prompt, 8)
        again = gen.generate(prompt, 8)  # replaying from a used cache gives the same tokens
    finally:
        gen.close()
    m.setup_caches(2, cache_len(16, 8))
    want = eager_generate(m, prompt, 8)
    m.clear_caches()
    assert torch.equal(got, again)
    if mode == "graph":  # the same kernels, replayed: bitwise the same
        assert torch.equal(got, want)
    else:  # inductor fuses and rounds differently: allow a late near-tie flip, not garbage. With 8-bit
        # activations a last-bit difference in a normed activation can move its int8 / fp8 code by one step
        # (int8 on the H200: 0.72 matching prefix), so those formats get a looser bound
        bound = 0.5 if fmt in ("int8", "fp8", "w4a8") else 0.75
        assert torch.equal(got[:, :2], want[:, :2]) and greedy_agreement(got, want) >= bound
