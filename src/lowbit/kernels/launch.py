"""Host-side helpers shared by the kernel launchers (output / split-K workspace handling)."""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import torch

from .unpack import plane_constexprs

try:  # Triton >= 3.3
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the pointer kernels serve every problem
    TensorDescriptor = None


def tma_rows_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors over these 2-D tensors can be made: contiguous last dim, 16-byte aligned base
    and row stride (in bytes)."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in tensors)


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


def output_buffers(m: int, n: int, split_k: int, tiles: int, like: torch.Tensor,
                   dtype: Optional[torch.dtype] = None):
    """(Y (M, N) in ``dtype`` (default x's), fp32 workspace (SPLIT_K, M, N) or Y again, counters, split stride)."""
    if split_k > 1 and tiles > MAX_SPLIT_K_TILES:
        raise ValueError(f"split-K over {tiles} output tiles exceeds {MAX_SPLIT_K_TILES}")
    y = torch.empty((m, n), device=like.device, dtype=dtype or like.dtype)
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


def resolve_config(kernel: str, config_cls, heuristic, m: int, n: int, k: int, bits: int, group_len: int,
                   x: torch.Tensor):
    """The shipped config for this GPU and problem, else the launcher's heuristic."""
    if x.is_cuda:
        shipped = shipped_config(kernel, bits, m, n, k, x.device.index or 0)
        if shipped is not None:
            return config_cls(**shipped)
    return heuristic(m, n, k, group_len)


def even_k(k: int, block_k: int, bits: int, k_order: int) -> bool:
    """EVEN_K of the intx kernels: every K tile the loop visits lies below K (no x mask along K); with
    mma-ordered words the loop runs to whole chunks (``unpack.stored_k_extent``), so K must fill them too."""
    return k % block_k == 0 and (not k_order or k % (128 // bits) == 0)


def launch_intx(kernel, grid, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int, group_len: int,
                sym_zero: float, out_features: int, split_k: int, table: Optional[torch.Tensor] = None,
                extra_ptrs: Tuple[torch.Tensor, ...] = (), out_dtype: Optional[torch.dtype] = None,
                **meta) -> torch.Tensor:
    """Allocate Y (+ split-K workspace) and launch an intx matmul kernel with the shared argument
    order: pointers, sizes, strides, format constexprs, then the kernel's own ``meta``. ``table``
    (Gt, Nt, E) switches the kernel to lookup-table codes (LUT=True, ``lowbit.formats.lut``).
    ``extra_ptrs`` follow the counters (kernels with more pointer arguments); ``out_dtype``: Y's dtype
    (default x's)."""
    m, k = x.shape
    n = out_features
    y, ws, counters, stride_ws = output_buffers(m, n, split_k, grid[0], x, out_dtype)
    stride_tg, stride_tn = table_strides(table)
    kernel[grid](
        x, qweight, scales, zeros if zeros is not None else scales, table if table is not None else scales,
        bias if bias is not None else scales, y, ws, counters, *extra_ptrs,
        m, n, k, qweight.shape[0] * 32 // bits,
        x.stride(0), x.stride(1), qweight.stride(0), scales.stride(0), stride_tg, stride_tn, stride_ws, y.stride(0),
        GROUP_LEN=group_len, **plane_constexprs(bits),
        HAS_ZEROS=zeros is not None, SYM_ZERO=sym_zero, HAS_BIAS=bias is not None, LUT=table is not None,
        SPLIT_K=split_k, **meta,
    )
    return y


def table_strides(table: Optional[torch.Tensor]) -> Tuple[int, int]:
    """Element strides of a (Gt, Nt, E) lookup table along groups and channels; 0 where it broadcasts."""
    if table is None:
        return 0, 0
    return (table.stride(0) if table.shape[0] > 1 else 0), (table.stride(1) if table.shape[1] > 1 else 0)
