"""Host-side helpers shared by the kernel launchers (output / split-K workspace handling)."""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch


MAX_SPLIT_K_TILES = 1 << 16
_COUNTERS: Dict[Tuple[str, int], torch.Tensor] = {}


def split_k_counters(device: torch.device) -> torch.Tensor:
    """Persistent zeroed int32 arrival counters (one per output tile) for in-kernel split-K.

    Kernels leave them at 0 again, so one buffer serves every launch on the device's stream order.
    """
    key = (device.type, device.index or 0)
    buf = _COUNTERS.get(key)
    if buf is None:
        buf = _COUNTERS[key] = torch.zeros(MAX_SPLIT_K_TILES, dtype=torch.int32, device=device)
    return buf


def output_buffers(m: int, n: int, split_k: int, tiles: int, like: torch.Tensor):
    """(Y (M, N) in x's dtype, fp32 workspace (SPLIT_K, M, N) or Y again, counters, split stride)."""
    if split_k > 1 and tiles > MAX_SPLIT_K_TILES:
        raise ValueError(f"split-K over {tiles} output tiles exceeds {MAX_SPLIT_K_TILES}")
    y = torch.empty((m, n), device=like.device, dtype=like.dtype)
    if split_k == 1:
        return y, y, y, 0
    ws = torch.empty((split_k, m, n), device=like.device, dtype=torch.float32)
    return y, ws, split_k_counters(like.device), ws.stride(0)


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
