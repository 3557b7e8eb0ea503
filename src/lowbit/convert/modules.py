"""Modules for converted layers: ``PermutedQuantLinear`` (act-order) and ``quant_linear``."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import FormatError
from ..formats.intx import IntxWeight
from ..nn import QuantLinear


class PermutedQuantLinear(QuantLinear):
    """A QuantLinear whose input features are permuted first: ``y = x[..., perm] @ W^T + bias``.

    For act-order checkpoints (GPTQ ``desc_act`` / g_idx): the converters store W with its K axis
    permuted so that groups are contiguous and return ``perm``. Buffers: those of QuantLinear plus
    ``perm`` (int64, (K,)).
    """

    def __init__(self, weight: IntxWeight, perm: torch.Tensor, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__(weight, bias)
        k = weight.in_features
        if not isinstance(perm, torch.Tensor) or perm.dim() != 1 or perm.shape[0] != k or perm.is_floating_point():
            raise FormatError(f"perm must be a 1-D integer tensor of length in_features={k}")
        p = perm.to(torch.int64)
        if p.device.type != "meta" and not torch.equal(torch.sort(p.cpu()).values, torch.arange(k)):
            raise FormatError("perm must be a permutation of range(in_features)")
        self.register_buffer("perm", p.to(weight.qweight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.index_select(-1, self.perm))

    def extra_repr(self) -> str:
        return super().extra_repr() + ", input permuted (act-order)"


def quant_linear(weight: IntxWeight, perm: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None) -> QuantLinear:
    """The module for a converted layer: ``PermutedQuantLinear`` when ``perm`` is given, else
    ``QuantLinear``."""
    if perm is None:
        return QuantLinear(weight, bias)
    return PermutedQuantLinear(weight, perm, bias)
