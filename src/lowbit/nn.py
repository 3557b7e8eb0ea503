"""QuantLinear: a drop-in ``nn.Linear`` replacement holding packed intx buffers.

Buffers (the state dict): ``qweight`` int32 (Kp*bits//32, N), ``scales`` (G, N), ``zeros``
(G, N, only when asymmetric) and ``bias`` (N,) when the source layer had one. Layout:
``lowbit.formats.intx``. forward(x[..., K]) -> y[..., N] through ``lowbit.ops``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .formats.intx import IntxFormat, IntxWeight
from .ops import linear_wxa16_auto
from .tp import Shardable


class QuantLinear(Shardable, nn.Module):
    def __init__(self, weight: IntxWeight, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.bits = weight.bits
        self.group_size = weight.group_size
        self.register_buffer("qweight", weight.qweight)
        self.register_buffer("scales", weight.scales)
        self.register_buffer("zeros", weight.zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: IntxFormat) -> "QuantLinear":
        """Quantize ``linear.weight`` with ``fmt``; the bias is kept in the weight's dtype."""
        return cls(fmt.quantize(linear.weight.detach()), linear.bias)

    @property
    def weight(self) -> IntxWeight:
        return IntxWeight(self.qweight, self.scales, self.zeros, self.bits, self.group_size, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_wxa16_auto(
            x, self.qweight, self.scales, self.zeros, self.bias, self.bits, self.group_size or 0,
            self.in_features,
        )

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size is None else self.group_size
        kind = "sym" if self.zeros is None else ("int-zero" if self.zeros.dtype == torch.uint8 else "float-zero")
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={gs}, {kind}, bias={self.bias is not None}")
