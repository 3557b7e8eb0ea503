"""The Llama-3 style decoder: cached prefill + decode equals the full forward, an independent naive
reference (per-head loops, pairwise RoPE rotation, explicit softmax), configs and init."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from lowbit.bench.shapes import MODELS
from lowbit.models import LlamaConfig, build_model, from_hf_config, load_config
from lowbit.models.llama import LOGIT_STD

CFG = LlamaConfig(name="t", vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=128)


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, "cpu", torch.float32, seed=1)


def naive_forward(m, tokens):
    """Straight-line Llama: separate heads, K/V head h // g, RoPE as a rotation of pairs (i, i + D/2)."""
    cfg = m.config
    b, t = tokens.shape
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    half = hd // 2
    pos = torch.arange(t, dtype=torch.float64)
    freq = cfg.rope_theta ** (-torch.arange(half, dtype=torch.float64) * 2 / hd)
    ang = (pos[:, None] * freq[None, :]).float()  # (T, D/2)

    def rot(x):  # x (B, T, D)
        a, c = x[..., :half], x[..., half:]
        return torch.cat([a * ang.cos() - c * ang.sin(), c * ang.cos() + a * ang.sin()], -1)

    def rms(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    x = m.embed_tokens.weight[tokens]
    causal = torch.ones(t, t).tril().bool()
    for layer in m.layers:
        h = rms(x, layer.input_layernorm.weight)
        wq, wk, wv = layer.self_attn.qkv_proj.weight.split([nh * hd, nkv * hd, nkv * hd])
        heads = []
        for i in range(nh):
            j = i // (nh // nkv)
            q = rot(h @ wq[i * hd:(i + 1) * hd].t())
            k = rot(h @ wk[j * hd:(j + 1) * hd].t())
            v = h @ wv[j * hd:(j + 1) * hd].t()
            s = (q @ k.transpose(1, 2)) / math.sqrt(hd)
            heads.append(torch.softmax(s.masked_fill(~causal, -math.inf), -1) @ v)
        x = x + torch.cat(heads, -1) @ layer.self_attn.o_proj.weight.t()
        h = rms(x, layer.post_attention_layernorm.weight)
        gate, up = (h @ layer.mlp.gate_up_proj.weight.t()).chunk(2, -1)
        x = x + (F.silu(gate) * up) @ layer.mlp.down_proj.weight.t()
    return rms(x, m.norm.weight) @ m.lm_head.weight.t()


def test_full_forward_matches_naive_reference(model):
    tokens = torch.randint(0, CFG.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), naive_forward(model, tokens), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunks", [(7, 1, 1, 1, 1, 1), (3, 4, 1, 1, 2, 1)], ids=["prefill+decode", "chunked"])
def test_cached_prefill_and_decode_equal_full_forward(model, chunks):
    tokens = torch.randint(0, CFG.vocab_size, (3, sum(chunks)), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(tokens)
        model.setup_caches(3, 32)
        try:
            outs, p = [], 0
            for c in chunks:
                outs.append(model(tokens[:, p:p + c], torch.arange(p, p + c)))
                p += c
            last = model(tokens[:, :7], torch.arange(7), last_only=True)  # rewrites the same cache entries
        finally:
            model.clear_caches()
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, full[:, 6:7], rtol=1e-5, atol=1e-5)
    assert model.causal is None and model.layers[0].self_attn.k_cache is None


def test_same_seed_same_weights_and_lm_like_logits():
    a = build_model(CFG, "cpu", torch.float32, seed=3)
    b = build_model(CFG, "cpu", torch.float32, seed=3)
    c = build_model(CFG, "cpu", torch.float32, seed=4)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), n
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert all(not p.requires_grad for p in a.parameters())
    tokens = torch.randint(0, CFG.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = a(tokens)
    assert logits.std().item() == pytest.approx(LOGIT_STD, rel=0.2)
    lp = torch.log_softmax(logits, -1)
    entropy = -(lp.exp() * lp).sum(-1).mean().item()
    assert 0.5 < entropy < math.log(CFG.vocab_size) - 0.5  # neither one-hot nor flat


def test_bf16_model_on_cpu_and_tied_embeddings():
    cfg = LlamaConfig(**{**CFG.to_dict(), "tie_word_embeddings": True})
    m = build_model(cfg, "cpu", torch.bfloat16, seed=0)
    assert m.lm_head.weight is m.embed_tokens.weight and m.lm_head.weight.dtype == torch.bfloat16
    assert cfg.num_params() == sum(p.numel() for p in m.parameters())
    with torch.no_grad():
        assert torch.isfinite(m(torch.zeros(1, 3, dtype=torch.long)).float()).all()


def test_llama3_8b_config_matches_the_benchmark_shape_table():
    cfg = load_config("llama3-8b")
    got = {s.layer: (s.n, s.k, s.parallel) for s in cfg.linear_shapes()}
    for s in MODELS["llama3-8b"]:
        assert got[s.layer] == (s.n, s.k, s.parallel)
    assert got["lm_head"] == (128256, 4096, "column")
    assert cfg.num_params() == pytest.approx(8.03e9, rel=0.01)
    assert load_config("llama3-70b").num_params() == pytest.approx(70.6e9, rel=0.01)


def test_load_config_from_json_file_string_and_hf_dict(tmp_path):
    hf = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
          "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "torch_dtype": "bfloat16"}
    path = tmp_path / "my_model.json"
    path.write_text(json.dumps(hf))
    a = load_config(str(path))
    assert (a.name, a.head_dim, a.rope_theta, a.num_key_value_heads) == ("my_model", 16, 10000.0, 2)
    assert load_config(json.dumps(hf)).rms_norm_eps == 1e-6
    assert from_hf_config({**hf, "num_key_value_heads": None}).num_key_value_heads == 4
    assert load_config(CFG.to_dict()) == CFG  # our own to_dict round-trips
    with pytest.warns(UserWarning, match="llama3"):
        from_hf_config({**hf, "rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ValueError, match="unknown model"):
        load_config("llama9-1t")
    with pytest.raises(ValueError, match="multiple"):
        LlamaConfig(num_attention_heads=6, num_key_value_heads=4)


def test_matches_transformers_llama_and_quantize_works_on_both(monkeypatch):
    """Same weights in transformers' LlamaForCausalLM and ours: same logits, before and after quantize_."""
    transformers = pytest.importorskip("transformers")
    import lowbit
    from lowbit.models import load_hf_state_dict

    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    hc = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                                  max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():  # HF's init (std 0.02) makes near-zero logits: use ours' scale
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[-1])) if p.dim() == 2 else p.fill_(1.0)
    ours = build_model(from_hf_config(hc.to_dict()), "cpu", torch.float32)
    load_hf_state_dict(ours, hf.state_dict())
    tokens = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)
        cfg = lowbit.Int4WeightOnlyConfig(group_size=32)
        keep = lambda m, fqn: isinstance(m, torch.nn.Linear) and "lm_head" not in fqn  # noqa: E731
        lowbit.quantize_(hf, cfg, keep)
        lowbit.quantize_(ours, cfg, keep)
        assert sum(isinstance(m, lowbit.QuantLinear) for m in hf.modules()) == 7 * 2
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=1e-4, atol=1e-4)
