"""A Llama-3 style decoder built from a config, for end-to-end benchmarks (random weights, nothing downloaded).

Shapes (B batch, T new tokens, S cache length, H heads, Hkv KV heads, D head_dim, g = H // Hkv)::

    tokens (B, T) -> embed (B, T, hidden) -> layers -> RMSNorm -> lm_head -> logits (B, T, vocab)
    layer: x + o_proj(attn(rope(qkv_proj(norm(x))))) then h + down_proj(silu(gate) * up)

The linear layers are plain ``nn.Linear`` (``qkv_proj`` and ``gate_up_proj`` fused, as in
``lowbit.bench.shapes``) so ``lowbit.quantize_`` replaces them. RoPE is the rotate-half form
(Hugging Face's); Llama-3.1 "llama3" RoPE scaling is not implemented (it changes positions >
8k only). GQA never repeats K/V: the ``g`` query heads sharing a KV head are folded into the query
length, (B, Hkv, g*T, D) against (B, Hkv, S, D), and the (T, S) mask is tiled ``g`` times, so any
``scaled_dot_product_attention`` backend runs it.

Static KV cache: ``setup_caches(batch, max_seq)`` allocates (B, Hkv, S, D) buffers; ``forward``
with ``input_pos`` (T,) int64 writes the new K/V at those positions (``index_put_``) and attends
to cache positions <= each query's position. Everything is static-shaped, so one decode step can
be captured in a CUDA graph. Without caches ``forward`` is a plain causal forward over ``tokens``.
One-token steps on a GPU run ``lowbit::decode_attention`` (split-KV, ``kernels.decode_attention``) instead
of SDPA with the mask row (``LOWBIT_DECODE_ATTENTION=0`` keeps SDPA).
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..bench.shapes import COLUMN, ROW, LinearShape
from ..ops_attention import decode_attention, decode_attention_applies

LOGIT_STD = 4.0  # init: logits ~ N(0, 4^2) per token, an entropy of ~ln(V) - 8 nats (LM-like, not flat)


@dataclass
class LlamaConfig:
    """Architecture hyper-parameters (Hugging Face ``LlamaConfig`` names)."""

    name: str = "custom"
    vocab_size: int = 128256
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: Optional[int] = None  # default hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if not isinstance(getattr(self, f), int) or getattr(self, f) <= 0:
                raise ValueError(f"{f} must be a positive integer, got {getattr(self, f)!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even (RoPE rotates pairs)")

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)

    def num_params(self) -> int:
        layer = sum(s.n * s.k for s in self.linear_shapes()[:4]) + 2 * self.hidden_size
        embed = self.vocab_size * self.hidden_size
        return self.num_hidden_layers * layer + self.hidden_size + embed * (1 if self.tie_word_embeddings else 2)

    def linear_shapes(self) -> List[LinearShape]:
        """The per-layer linears (N x K, ``lowbit.bench.shapes`` names) and the lm_head, once each."""
        h = self.hidden_size
        return [
            LinearShape(self.name, "qkv", self.q_size + 2 * self.kv_size, h, COLUMN),
            LinearShape(self.name, "o", h, self.q_size, ROW),
            LinearShape(self.name, "gate_up", 2 * self.intermediate_size, h, COLUMN),
            LinearShape(self.name, "down", h, self.intermediate_size, ROW),
            LinearShape(self.name, "lm_head", self.vocab_size, h, COLUMN),
        ]


PRESETS: Dict[str, LlamaConfig] = {
    "llama3-8b": LlamaConfig(name="llama3-8b"),
    "llama3-70b": LlamaConfig(name="llama3-70b", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                              num_attention_heads=64),
    "llama3.2-1b": LlamaConfig(name="llama3.2-1b", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, head_dim=64, tie_word_embeddings=True),
    # small enough for the CPU reference backend and the Triton interpreter; K multiples of 128
    "tiny": LlamaConfig(name="tiny", vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
}

_HF_KEYS = {f.name for f in fields(LlamaConfig)} - {"name"}


def from_hf_config(d: Dict[str, object], name: str = "custom") -> LlamaConfig:
    """``LlamaConfig`` from a transformers ``LlamaConfig.to_dict()`` / ``config.json`` dict (extra keys ignored)."""
    kw = {k: d[k] for k in _HF_KEYS if d.get(k) is not None}
    if d.get("num_key_value_heads") is None and "num_attention_heads" in d:
        kw["num_key_value_heads"] = d["num_attention_heads"]  # HF default: no GQA
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}  # transformers >= 5 nests rope_theta here
    if "rope_theta" not in kw and isinstance(rope, dict) and rope.get("rope_theta") is not None:
        kw["rope_theta"] = rope["rope_theta"]
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        warnings.warn(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not implemented; using plain RoPE")
    return LlamaConfig(name=str(d.get("name", name)), **kw)


def load_config(spec: Union[str, Dict[str, object]]) -> LlamaConfig:
    """A preset name, a JSON file path, a JSON object string, or a dict (ours or an HF config.json)."""
    if isinstance(spec, dict):
        return from_hf_config(spec)
    if spec in PRESETS:
        return LlamaConfig(**PRESETS[spec].to_dict())
    text = spec.strip()
    if text.startswith("{"):
        return from_hf_config(json.loads(text))
    path = Path(spec)
    if path.is_file():
        return from_hf_config(json.loads(path.read_text()), name=path.stem)
    raise ValueError(f"unknown model {spec!r}: a preset ({', '.join(PRESETS)}), a JSON file or a JSON object")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_tables(cfg: LlamaConfig, max_seq: int, device) -> torch.Tensor:
    """(2, max_seq, head_dim) fp32: cos and sin of position * inverse frequency (rotate-half layout)."""
    d = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=device) / d))
    ang = torch.outer(torch.arange(max_seq, dtype=torch.float32, device=device), inv)
    ang = torch.cat((ang, ang), dim=-1)
    return torch.stack((ang.cos(), ang.sin()))


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=False, dtype=dtype)
        self.o_proj = nn.Linear(cfg.q_size, cfg.hidden_size, bias=False, dtype=dtype)
        self.register_buffer("k_cache", None, persistent=False)  # buffers: static addresses for CUDA graphs
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                input_pos: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, T, hidden); cos/sin (T, D) in x's dtype; mask (T, S) bool; input_pos (T,) or None (no cache)."""
        b, t, _ = x.shape
        hd, nkv, g = self.head_dim, self.n_kv, self.n_heads // self.n_kv
        q, k, v = self.qkv_proj(x).split([self.n_heads * hd, nkv * hd, nkv * hd], dim=-1)
        q = q.view(b, t, self.n_heads, hd).transpose(1, 2)
        k = k.view(b, t, nkv, hd).transpose(1, 2)
        v = v.view(b, t, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.k_cache is not None:
            self.k_cache[:, :, input_pos] = k  # index_put_: inductor updates the buffer in place
            self.v_cache[:, :, input_pos] = v
            k, v = self.k_cache, self.v_cache
        # query head h uses KV head h // g: fold the g heads of a group into the query length
        q = q.reshape(b, nkv, g * t, hd)
        one_step = t == 1 and input_pos is not None and self.k_cache is not None
        if one_step and decode_attention_applies(q, k, v, input_pos):
            y = decode_attention(q, k, v, input_pos)  # split-KV over positions 0..input_pos (= the mask row)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.repeat(g, 1))
        y = y.view(b, nkv, g, t, hd).permute(0, 3, 1, 2, 4).reshape(b, t, self.n_heads * hd)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(cfg, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.mlp = MLP(cfg, dtype)

    def forward(self, x, cos, sin, mask, input_pos):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, input_pos)
        return h + self.mlp(self.post_attention_layernorm(h))


def call_layer(layer: DecoderLayer, x, cos, sin, mask, input_pos):
    """One decoder layer; ``torch.compile`` this function once and every layer reuses the graph."""
    return layer(x, cos, sin, mask, input_pos)


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, dtype) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.max_seq = 0
        self.register_buffer("rope", None, persistent=False)  # (2, S, D) fp32 cos, sin
        self.register_buffer("causal", None, persistent=False)  # (S, S) bool lower triangle

    def setup_caches(self, batch: int, max_seq: int) -> None:
        """Allocate static KV caches for ``batch`` sequences of up to ``max_seq`` tokens (zeros)."""
        w = self.embed_tokens.weight
        cfg = self.config
        shape = (batch, cfg.num_key_value_heads, max_seq, cfg.head_dim)
        for layer in self.layers:
            layer.self_attn.k_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
            layer.self_attn.v_cache = torch.zeros(shape, dtype=w.dtype, device=w.device)
        self.max_seq = max_seq
        self.rope = rope_tables(cfg, max_seq, w.device)
        self.causal = torch.ones(max_seq, max_seq, dtype=torch.bool, device=w.device).tril()

    def clear_caches(self) -> None:
        for layer in self.layers:
            layer.self_attn.k_cache = layer.self_attn.v_cache = None
        self.max_seq, self.rope, self.causal = 0, None, None

    def forward(self, tokens: torch.Tensor, input_pos: Optional[torch.Tensor] = None, last_only: bool = False,
                layer_fn: Callable = call_layer) -> torch.Tensor:
        """tokens (B, T) int64, input_pos (T,) int64 cache positions -> logits (B, T or 1, vocab).

        With caches ``input_pos`` is required; without, the forward is causal over ``tokens`` alone.
        ``last_only`` computes the lm_head for the last position only (prefill).
        """
        t = tokens.shape[1]
        x = self.embed_tokens(tokens)
        if self.causal is not None:
            cos, sin = self.rope[0][input_pos], self.rope[1][input_pos]
            mask = self.causal[input_pos]
        else:
            table = rope_tables(self.config, t, tokens.device)
            cos, sin = table[0], table[1]
            mask = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.layers:
            x = layer_fn(layer, x, cos, sin, mask, input_pos)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))


@torch.no_grad()
def init_weights(model: Llama, seed: int) -> None:
    """Deterministic random init (same seed, same device -> same weights) that keeps logits LM-like:
    linears N(0, 1/fan_in) (unit-variance outputs), embeddings N(0, 1), norms 1, lm_head scaled so
    logits have std ``LOGIT_STD`` (a tied embedding gets that scale instead)."""
    cfg = model.config
    g = torch.Generator(device=model.embed_tokens.weight.device).manual_seed(seed)
    head_std = LOGIT_STD / math.sqrt(cfg.hidden_size)
    for name, p in model.named_parameters():  # fixed order; a tied lm_head appears once, as the embedding
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name == "embed_tokens.weight":
            p.normal_(0.0, head_std if cfg.tie_word_embeddings else 1.0, generator=g)
        elif name == "lm_head.weight":
            p.normal_(0.0, head_std, generator=g)
        else:
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=g)


def build_model(cfg: LlamaConfig, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> Llama:
    """A randomly initialised model directly on ``device`` in ``dtype`` (no fp32 copy, no CPU detour)."""
    with torch.device("meta"):
        model = Llama(cfg, dtype=dtype)
    model = model.to_empty(device=device)
    if cfg.tie_word_embeddings:  # to_empty keeps the tie, but be explicit
        model.lm_head.weight = model.embed_tokens.weight
    init_weights(model, seed)
    return model.requires_grad_(False).eval()


def load_hf_state_dict(model: Llama, sd: Dict[str, torch.Tensor]) -> None:
    """Copy a transformers ``LlamaForCausalLM`` state dict (separate q/k/v, gate/up) into ``model``."""
    with torch.no_grad():
        model.embed_tokens.weight.copy_(sd["model.embed_tokens.weight"])
        model.norm.weight.copy_(sd["model.norm.weight"])
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.copy_(sd["lm_head.weight"])
        for i, layer in enumerate(model.layers):
            p = f"model.layers.{i}."
            a = p + "self_attn."
            layer.self_attn.qkv_proj.weight.copy_(
                torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]))
            layer.self_attn.o_proj.weight.copy_(sd[a + "o_proj.weight"])
            layer.mlp.gate_up_proj.weight.copy_(
                torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]]))
            layer.mlp.down_proj.weight.copy_(sd[p + "mlp.down_proj.weight"])
            layer.input_layernorm.weight.copy_(sd[p + "input_layernorm.weight"])
            layer.post_attention_layernorm.weight.copy_(sd[p + "post_attention_layernorm.weight"])
