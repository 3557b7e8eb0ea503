"""Sparse24Linear: the QuantLinear variant for 2:4-sparse int4 weights (``lowbit.formats.sparse24``).

Buffers (the state dict): ``qweight`` int32 (Kp/16, N), ``meta`` int32 (Kp/32, N), ``scales`` (G, N),
``zeros`` (G, N, only when asymmetric) and ``bias`` (N,) when the source layer had one.
forward(x[..., K]) -> y[..., N] through ``lowbit::linear_sparse24_wxa16``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .formats.sparse24 import Sparse24Format, Sparse24Weight
from .ops_sparse24 import linear_sparse24_wxa16_auto


class Sparse24Linear(nn.Module):
    def __init__(self, weight: Sparse24Weight, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.group_size = weight.group_size
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("meta", weight.meta)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: Sparse24Format) -> "Sparse24Linear":
        """Prune (``fmt.prune``) or check 2:4, then quantize ``linear.weight``; the bias is kept as is."""
        return cls(fmt.quantize(linear.weight.detach()), linear.bias)

    @property
    def weight(self) -> Sparse24Weight:
        return Sparse24Weight(self.qweight, self.meta, self.scales, self.zeros, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_sparse24_wxa16_auto(x, self.qweight, self.meta, self.scales, self.zeros, self.bias,
                                          self.group_size or 0, self.in_features)

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size is None else self.group_size
        kind = "sym" if self.zeros is None else ("int-zero" if self.zeros.dtype == torch.uint8 else "float-zero")
        return (f"in_features={self.in_features}, out_features={self.out_features}, 2:4 sparse int4, "
                f"group_size={gs}, {kind}, bias={self.bias is not None}")
