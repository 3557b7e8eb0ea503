"""Prefill + greedy decode with a static KV cache, eager / compiled / CUDA-graphed; logits comparison.

``Generator(model, batch, prompt_len, max_new, mode)`` owns the static buffers of one batch size:
``tokens`` (B, P) the prompt, ``tok`` (B, 1) the last token, ``pos`` (1,) its position. ``prefill()``
fills the cache from ``tokens`` and writes the first new token into ``tok``; each ``decode_step()``
feeds ``tok`` at ``pos`` and overwrites both with the next token and position, so a captured step
replays with no host work. Modes (``MODES``):

* ``compile-graph`` — ``torch.compile(fullgraph=True)`` of one decoder layer (every layer reuses the
  graph: fused norms / RoPE / SiLU·mul), the whole step captured in one CUDA graph;
* ``reduce-overhead`` — ``torch.compile(mode="reduce-overhead", fullgraph=True)`` of the whole step
  (gpt-fast / torchao style; compiles the full model per batch size: slow to start);
* ``graph`` — eager step captured in one CUDA graph (no fusion);
* ``none`` — eager.

Without CUDA there is no graph: ``graph`` runs eager and the compile modes trace with the
``aot_eager`` backend (checks that the model compiles with ``fullgraph=True``; no codegen).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List

import torch

from .llama import Llama, call_layer

MODES = ("compile-graph", "reduce-overhead", "graph", "none")
SEQ_ALIGN = 16  # cache length multiple: keeps the attention mask's rows 16-byte aligned for SDPA kernels


def cache_len(prompt_len: int, max_new: int) -> int:
    return -(-(prompt_len + max_new) // SEQ_ALIGN) * SEQ_ALIGN


def _raise_recompile_limit(n: int = 64) -> None:
    """One compiled function serves every layer, batch size and prefill/decode shape of a format."""
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), n))


class CudaGraphed:
    """``fn`` captured once in a CUDA graph (after ``warmup`` calls on a side stream); call = replay."""

    def __init__(self, fn: Callable[[], None], warmup: int = 2) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            fn()
        torch.cuda.synchronize()

    def __call__(self) -> None:
        self.graph.replay()


def _next_token(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1].argmax(dim=-1, keepdim=True)


class Generator:
    def __init__(self, model: Llama, batch: int, prompt_len: int, max_new: int, mode: str = "compile-graph") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        dev = model.embed_tokens.weight.device
        self.model, self.batch, self.prompt_len, self.mode = model, batch, prompt_len, mode
        self.cuda = dev.type == "cuda"
        model.setup_caches(batch, cache_len(prompt_len, max_new))
        self.tokens = torch.zeros(batch, prompt_len, dtype=torch.long, device=dev)
        self.prefill_pos = torch.arange(prompt_len, device=dev)
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.full((1,), prompt_len, dtype=torch.long, device=dev)

        layer_fn = call_layer
        backend = "inductor" if self.cuda else "aot_eager"
        if mode == "compile-graph":
            _raise_recompile_limit()
            layer_fn = torch.compile(call_layer, fullgraph=True, dynamic=False, backend=backend)

        def prefill_logits(tokens, pos):
            return _next_token(model(tokens, pos, last_only=True, layer_fn=layer_fn))

        def decode_logits(tok, pos):
            return _next_token(model(tok, pos, layer_fn=layer_fn))

        if mode == "reduce-overhead":
            _raise_recompile_limit()
            kw = dict(mode="reduce-overhead") if self.cuda else dict(backend=backend)
            prefill_logits = torch.compile(prefill_logits, fullgraph=True, dynamic=False, **kw)
            decode_logits = torch.compile(decode_logits, fullgraph=True, dynamic=False, **kw)
        mark_step = mode == "reduce-overhead" and self.cuda

        def prefill() -> None:
            if mark_step:  # cudagraph trees: the previous outputs may be overwritten from here on
                torch.compiler.cudagraph_mark_step_begin()
            self.tok.copy_(prefill_logits(self.tokens, self.prefill_pos))
            self.pos.fill_(prompt_len)

        def decode_step() -> None:
            if mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            self.tok.copy_(decode_logits(self.tok, self.pos))
            self.pos.add_(1)

        self._prefill: Callable[[], None] = prefill
        self._decode: Callable[[], None] = decode_step
        if mode in ("graph", "compile-graph") and self.cuda:
            with torch.no_grad():
                self._prefill = CudaGraphed(prefill)
                self._decode = CudaGraphed(decode_step)

    def load(self, prompt: torch.Tensor) -> None:
        self.tokens.copy_(prompt)

    @torch.no_grad()
    def prefill(self) -> None:
        self._prefill()

    @torch.no_grad()
    def decode(self, steps: int) -> None:
        for _ in range(steps):
            self._decode()

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, steps: int) -> torch.Tensor:
        """(B, 1 + steps) greedy tokens after ``prompt`` (first from prefill). Not for timing."""
        self.load(prompt)
        self.prefill()
        out = [self.tok.clone()]
        for _ in range(steps):
            self._decode()
            out.append(self.tok.clone())
        return torch.cat(out, dim=1)

    def close(self) -> None:
        self._prefill = self._decode = None  # drops the graphs and their memory pools
        self.model.clear_caches()
        if self.mode in ("compile-graph", "reduce-overhead"):
            torch._dynamo.reset()  # compiled graphs (and cudagraph trees' pools) are per batch size anyway


@torch.no_grad()
def eager_generate(model: Llama, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference greedy decode, plain eager calls on the model's current caches (same layout as ``generate``)."""
    p = prompt.shape[1]
    tok = _next_token(model(prompt, torch.arange(p, device=prompt.device), last_only=True))
    out = [tok]
    for i in range(steps):
        tok = _next_token(model(tok, torch.tensor([p + i], device=prompt.device)))
        out.append(tok)
    return torch.cat(out, dim=1)


@torch.no_grad()
def teacher_forced_logits(model: Llama, tokens: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """fp32 logits (B, L, V) at every position of ``tokens`` (B, L): prefill of the first
    ``prompt_len`` (the GEMM path), then one cached decode step per remaining token (the GEMV path)."""
    b, length = tokens.shape
    dev = tokens.device
    model.setup_caches(b, cache_len(length, 0))
    try:
        out = [model(tokens[:, :prompt_len], torch.arange(prompt_len, device=dev)).float()]
        for i in range(prompt_len, length):
            out.append(model(tokens[:, i:i + 1], torch.tensor([i], device=dev)).float())
    finally:
        model.clear_caches()
    return torch.cat(out, dim=1)


@torch.no_grad()
def compare_logits(ref: torch.Tensor, test: torch.Tensor, chunk: int = 64) -> Dict[str, float]:
    """Top-1 agreement and KL(ref || test) in nats per position, fp32; logits (..., V), any device."""
    ref2, test2 = ref.reshape(-1, ref.shape[-1]), test.reshape(-1, test.shape[-1])
    n = ref2.shape[0]
    agree, kl, kl_max = 0, 0.0, 0.0
    for i in range(0, n, chunk):
        t = test2[i:i + chunk].float()
        r = ref2[i:i + chunk].to(t.device, torch.float32)  # on the test's device (the GPU when there is one)
        lr, lt = torch.log_softmax(r, -1), torch.log_softmax(t, -1)
        k = (lr.exp() * (lr - lt)).sum(-1).clamp_min(0)
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        kl += float(k.sum())
        kl_max = max(kl_max, float(k.max()))
    return {"top1_agree": agree / n, "kl_mean": kl / n, "kl_max": kl_max, "positions": n}


@torch.no_grad()
def entropy_nats(logits: torch.Tensor) -> float:
    """Mean entropy of softmax(logits) per position (is the reference distribution LM-like or flat?)."""
    lp = torch.log_softmax(logits.reshape(-1, logits.shape[-1]).float(), -1)
    return float(-(lp.exp() * lp).sum(-1).mean())


def greedy_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over sequences of the matching-prefix fraction of two greedy outputs (B, K): after a
    first mismatch the contexts differ, so later tokens are not comparable."""
    if a.numel() == 0:
        return math.nan
    return float((a == b).long().cumprod(dim=1).float().mean())


__all__: List[str] = ["MODES", "Generator", "CudaGraphed", "eager_generate", "teacher_forced_logits",
                      "compare_logits", "entropy_nats", "greedy_agreement", "cache_len"]
