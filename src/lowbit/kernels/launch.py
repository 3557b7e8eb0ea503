"""Host-side helpers shared by the kernel launchers (output / split-K workspace handling)."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch


def alloc_output(m: int, n: int, split_k: int, like: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Y (M, N) in x's dtype, or an fp32 split-K workspace (SPLIT_K, M, N); returns (tensor, split stride)."""
    if split_k == 1:
        return torch.empty((m, n), device=like.device, dtype=like.dtype), 0
    ws = torch.empty((split_k, m, n), device=like.device, dtype=torch.float32)
    return ws, ws.stride(0)


def finish_output(y: torch.Tensor, split_k: int, bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Reduce split-K partials in a fixed order (deterministic) and add the bias in fp32."""
    if split_k == 1:
        return y
    y = y.sum(dim=0)
    if bias is not None:
        y += bias.float()
    return y.to(dtype)


@functools.lru_cache(maxsize=4096)
def shipped_config(kernel: str, bits: int, m: int, n: int, k: int, device_index: int) -> Optional[dict]:
    """Config from the shipped table of this GPU (cached per problem: no lookup cost per call)."""
    from ..tuning import lookup, m_bucket

    name = torch.cuda.get_device_name(device_index)
    return lookup(kernel, bits, m_bucket(m), n, k, name)


@functools.lru_cache(maxsize=4096)
def shipped_best(bits: int, m: int, n: int, k: int, device_index: int) -> Optional[str]:
    """Kernel family ('gemv' | 'gemm' | 'dequant_mm') measured fastest for the nearest problem."""
    from ..tuning import best_kernel, m_bucket

    return best_kernel(bits, m_bucket(m), n, k, torch.cuda.get_device_name(device_index))
