"""LutLinear: the QuantLinear variant for lookup-table weights (``lowbit.formats.lut``).

Buffers (the state dict): ``qweight`` int32 (Kp*bits//32, N), ``scales`` (G, N), ``table``
(Gt, Nt, 2**bits) and ``bias`` (N,) when the source layer had one. forward(x[..., K]) -> y[..., N]
through ``lowbit::linear_luta16``. 4-bit codes run in the mma word order (``lowbit.nn.MmaWordsBuffer``);
the state dict and ``weight`` keep the natural order.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .formats.lut import LutWeight
from .nn import EagerLaunchPlanned, MmaWordsBuffer
from .ops_lut import linear_luta16, linear_luta16_eager
from .tp import Shardable


class LutLinear(EagerLaunchPlanned, MmaWordsBuffer, Shardable, nn.Module):
    OP, OP_EAGER = linear_luta16, staticmethod(linear_luta16_eager)
    WEIGHT_BUFFERS = ("qweight", "scales", "table", "bias")

    def __init__(self, weight: LutWeight, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.in_features = weight.in_features
        self.out_features = weight.out_features
        self.bits = weight.bits
        self.group_size = weight.group_size
        for name, t in {**weight.tensors(), "bias": None if bias is None else bias.detach().clone()}.items():
            self.register_buffer(name, t)
        self.use_mma_words()

    def mma_words_apply(self) -> bool:
        return self.bits == 4

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt) -> "LutLinear":
        """Quantize ``linear.weight`` with a LUT format (NF4Format, Fp4Format, CodebookFormat)."""
        return cls(fmt.quantize(linear.weight.detach()), linear.bias)

    @property
    def weight(self) -> LutWeight:
        return LutWeight(self.natural(), self.scales, self.table, self.bits, self.group_size,
                         self.in_features)

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size is None else self.group_size
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={gs}, table={tuple(self.table.shape)}, bias={self.bias is not None}")
