"""E experts' intx weights stacked along a leading expert dim (format ``intx``, layout version 1).

Expert e is exactly an ``IntxWeight`` (``lowbit.formats.intx``, same bit-planes, same K padding,
same group axis) and lives at index e of every tensor::

    qweight  int32            (E, Kp * bits // 32, N)   N contiguous; qweight[e] = expert e's qweight
    scales   fp16/bf16/fp32   (E, G, N)
    zeros    None | uint8 | scale dtype  (E, G, N)       None = symmetric (implicit 2**(bits-1))

so ``qweight[e]``, ``scales[e]``, ``zeros[e]`` are views with the single-expert layout and every
single-expert helper (unpack, dequantize, the dense kernels) applies to them unchanged. All
experts share bits, group size, K and N. Kernels step from expert to expert by ``stride(0)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import FormatError
from .intx import IntxFormat, IntxWeight


@dataclass
class IntxExpertWeights:
    """Stacked intx weights of E experts; see the module docstring for the layout."""

    qweight: torch.Tensor  # int32 (E, Kp*bits//32, N)
    scales: torch.Tensor  # (E, G, N)
    zeros: Optional[torch.Tensor]  # None | (E, G, N)
    bits: int
    group_size: Optional[int]
    in_features: int
    format_name: str = field(default="intx_experts", init=False)

    def __post_init__(self) -> None:
        if self.qweight.dim() != 3 or self.scales.dim() != 3:
            raise FormatError(f"stacked expert weights need 3-D qweight (E, Kp*bits//32, N) and scales (E, G, N); "
                              f"got {tuple(self.qweight.shape)} and {tuple(self.scales.shape)}")
        if self.scales.shape[0] != self.num_experts or (self.zeros is not None and self.zeros.shape[0] != self.num_experts):
            raise FormatError(f"scales/zeros must have E={self.num_experts} experts on dim 0")
        self.expert(0)  # validates the per-expert layout (shapes, dtypes, bits, group size)

    @property
    def num_experts(self) -> int:
        return self.qweight.shape[0]

    @property
    def out_features(self) -> int:
        return self.qweight.shape[2]

    def expert(self, e: int) -> IntxWeight:
        """Expert e as an ``IntxWeight`` (views, no copy)."""
        return IntxWeight(self.qweight[e], self.scales[e], None if self.zeros is None else self.zeros[e],
                          self.bits, self.group_size, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense (E, N, K) weights."""
        return torch.stack([self.expert(e).dequantize(dtype) for e in range(self.num_experts)])

    def tensors(self):
        out = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def ideal_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "IntxExpertWeights":
        return IntxExpertWeights(self.qweight.to(device), self.scales.to(device),
                                 None if self.zeros is None else self.zeros.to(device),
                                 self.bits, self.group_size, self.in_features)

    @classmethod
    def stack(cls, experts: Sequence[IntxWeight]) -> "IntxExpertWeights":
        """Stack single-expert weights of one format (same bits, group size, K, N, zero kind)."""
        if not experts:
            raise FormatError("need at least one expert")
        first = experts[0]
        for w in experts[1:]:
            if (w.bits, w.group_size, w.in_features, w.out_features, w.zero_kind, w.scales.dtype) != (
                    first.bits, first.group_size, first.in_features, first.out_features, first.zero_kind,
                    first.scales.dtype):
                raise FormatError("all experts must share bits, group size, K, N, zero kind and scale dtype")
        zeros = None if first.zeros is None else torch.stack([w.zeros for w in experts])
        return cls(torch.stack([w.qweight for w in experts]), torch.stack([w.scales for w in experts]), zeros,
                   first.bits, first.group_size, first.in_features)


def quantize_experts(fmt: IntxFormat, weight: torch.Tensor) -> IntxExpertWeights:
    """Quantize dense expert weights (E, N, K) expert by expert with ``fmt``."""
    if weight.dim() != 3:
        raise FormatError(f"expert weights must be 3-D (E, N, K), got {tuple(weight.shape)}")
    return IntxExpertWeights.stack([fmt.quantize(weight[e]) for e in range(weight.shape[0])])
