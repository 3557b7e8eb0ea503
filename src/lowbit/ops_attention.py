"""``lowbit::decode_attention``: the split-KV decode attention of ``kernels.decode_attention`` as a torch.library
op (one opaque node under torch.compile, capturable in CUDA graphs), used by ``lowbit.models`` for one-token
decode steps against a static KV cache. ``LOWBIT_DECODE_ATTENTION=0`` keeps
``scaled_dot_product_attention`` (for A/B runs)."""
from __future__ import annotations

import os

import torch

from .kernels.decode_attention import decode_attention as _decode_attention


@torch.library.custom_op("lowbit::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q (B, Hkv, G, D), caches (B, Hkv, S, D) contiguous, pos (1,) int64 -> (B, Hkv, G, D): attention of each
    query over cache positions 0..pos[0], scale 1/sqrt(D)."""
    return _decode_attention(q, k_cache, v_cache, pos)


@decode_attention.register_fake
def _(q, k_cache, v_cache, pos):
    return torch.empty_like(q)


def decode_attention_applies(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> bool:
    """The kernel's constraints: CUDA fp16/bf16, head dim a power of two in 16..256, contiguous caches of q's
    dtype, one position; and not switched off by ``LOWBIT_DECODE_ATTENTION=0``."""
    d = q.shape[-1]
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and k_cache.dtype == q.dtype
            and v_cache.dtype == q.dtype and 16 <= d <= 256 and d & (d - 1) == 0 and k_cache.is_contiguous()
            and v_cache.is_contiguous() and pos.numel() == 1
            and os.environ.get("LOWBIT_DECODE_ATTENTION", "1") != "0")
