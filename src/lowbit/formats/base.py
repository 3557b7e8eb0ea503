"""Format protocol and registry.

A *format* is data, not math: it quantizes a dense weight, packs/unpacks the integer codes and
dequantizes back to a dense tensor in pure torch. That pure-torch path is the CPU reference and
the oracle every kernel is tested against. Kernels live in ``lowbit.kernels``.
"""
from __future__ import annotations

from typing import Dict, Protocol, Type, runtime_checkable

import torch


@runtime_checkable
class QuantizedWeight(Protocol):
    """Packed weight of a ``nn.Linear`` of shape (out_features N, in_features K)."""

    format_name: str
    out_features: int
    in_features: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # (N, K)
        ...

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Name -> tensor of the packed data (what a state dict / safetensors file stores)."""
        ...

    def ideal_nbytes(self) -> int:
        """Bytes of the packed data as stored (values at bits/8 + scales + zeros)."""
        ...


@runtime_checkable
class Format(Protocol):
    name: str
    bits: int

    def quantize(self, weight: torch.Tensor) -> QuantizedWeight:
        ...


FORMATS: Dict[str, Type] = {}


def register_format(cls: Type) -> Type:
    """Class decorator: make a format constructible by name (``get_format``)."""
    FORMATS[cls.name] = cls
    return cls


def get_format(name: str, **params) -> Format:
    try:
        cls = FORMATS[name]
    except KeyError:
        raise KeyError(f"unknown lowbit format {name!r}; known: {sorted(FORMATS)}") from None
    return cls(**params)
