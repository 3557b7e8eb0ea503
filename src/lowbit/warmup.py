"""``lowbit.warmup(model, batch_sizes)``: compile every kernel a server will capture, ahead of time."""
from __future__ import annotations

import time
from typing import Dict, Iterable

import torch
from torch import nn

from .nn import QuantLinear


@torch.no_grad()
def warmup(model: nn.Module, batch_sizes: Iterable[int], dtype: torch.dtype = torch.bfloat16,
           verbose: bool = True) -> Dict[str, float]:
    """Run each distinct QuantLinear problem (shape, bits, group) once per batch size so Triton
    compiles (or loads from its disk cache) every kernel variant dispatch will pick; afterwards
    CUDA-graph capture of those batch sizes triggers no compilation. Returns timing stats."""
    sizes = sorted(set(int(b) for b in batch_sizes))
    layers = {}
    for module in model.modules():
        if isinstance(module, QuantLinear):
            key = (module.in_features, module.out_features, module.bits, module.group_size,
                   module.zeros is None, module.bias is not None, module.qweight.device)
            layers.setdefault(key, module)
    t0 = time.perf_counter()
    for module in layers.values():
        for m in sizes:
            x = torch.randn(m, module.in_features, device=module.qweight.device, dtype=dtype)
            module(x)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stats = {"seconds": seconds, "distinct_layers": len(layers), "batch_sizes": len(sizes)}
    if verbose:
        print(f"lowbit.warmup: {len(layers)} distinct layers x {len(sizes)} batch sizes in {seconds:.1f} s")
    return stats
