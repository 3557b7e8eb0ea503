"""fp8 e4m3 weights (format ``fp8``, layout version 1): per output channel or per 128 x 128 block.

Math: ``w[n, k] = q[n, k] * s[...]`` with q ``float8_e4m3fn`` (finite range +-448), s fp32.

* ``qweight``: float8_e4m3fn (N, K), row-major, K contiguous (each row is one output channel; a
  kernel's [BLOCK_N, BLOCK_K] tile is K-major, what Hopper's fp8 wgmma wants). K is not padded.
* granularity ``row``:   ``scales`` fp32 (N,),           s = amax(|w[n, :]|) / 448
* granularity ``block``: ``scales`` fp32 (ceil(N/B), ceil(K/B)), B = 128 (DeepSeek-V3 style):
  block (i, j) covers rows [iB, iB + B) x columns [jB, jB + B), s = amax over the block / 448;
  edge blocks are short.

Activations are quantized dynamically at run time (``lowbit.formats.act8``): per token (row) for
``row`` weights, per 1 x 128 block of each token for ``block`` weights; the GEMM applies
x ~= qx * sx and w ~= qw * sw, in the epilogue (row) or per K block of 128 inside the K loop (block).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import torch

from ..errors import FormatError
from .act8 import AMAX_FLOOR, FP8, FP8_MAX, quantize_rows, torch_dtype
from .base import register_format

LAYOUT_VERSION = 1
GRANULARITIES = ("row", "block")
BLOCK = 128


def check_weight(weight: torch.Tensor) -> None:
    if weight.dim() != 2 or not weight.is_floating_point():
        raise FormatError(f"weight must be a 2-D float tensor (N, K), got {tuple(weight.shape)} {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise FormatError("weight contains NaN or Inf; cannot quantize")


def quantize_blocks_2d(w: torch.Tensor, block: int = BLOCK):
    """(N, K) -> (q fp8 (N, K), s fp32 (ceil(N/B), ceil(K/B))), one scale per B x B block."""
    n, k = w.shape
    nb, kb = -(-n // block), -(-k // block)
    wp = torch.zeros(nb * block, kb * block, dtype=torch.float32, device=w.device)
    wp[:n, :k] = w.float()
    blocks = wp.view(nb, block, kb, block)
    s = blocks.abs().amax(dim=(1, 3)).clamp_min(AMAX_FLOOR) / FP8_MAX  # (nb, kb)
    q = (blocks / s[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch_dtype("fp8"))
    return q.view(nb * block, kb * block)[:n, :k].contiguous(), s


class DenseRowsWeight:
    """Shared by the (N, K) 8-bit weights: ``qweight`` rows are output channels."""

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1]

    def ideal_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


@dataclass
class Fp8Weight(DenseRowsWeight):
    """A quantized fp8 weight; see the module docstring for the layout."""

    qweight: torch.Tensor  # float8_e4m3fn (N, K)
    scales: torch.Tensor  # fp32 (N,) | (ceil(N/128), ceil(K/128))
    granularity: str = "row"
    format_name: str = field(default="fp8", init=False)

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise FormatError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.qweight.dtype != FP8 or self.qweight.dim() != 2:
            raise FormatError(f"qweight must be float8_e4m3fn (N, K), got {self.qweight.dtype} "
                              f"{tuple(self.qweight.shape)}")
        if self.scales.dtype != torch.float32 or tuple(self.scales.shape) != self.scale_shape:
            raise FormatError(f"scales must be fp32 of shape {self.scale_shape} for {self.granularity} "
                              f"granularity, got {self.scales.dtype} {tuple(self.scales.shape)}")

    @property
    def scale_shape(self):
        n, k = self.qweight.shape
        return (n,) if self.granularity == "row" else (-(-n // BLOCK), -(-k // BLOCK))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = self.qweight.float()
        if self.granularity == "row":
            return (q * self.scales[:, None]).to(dtype)
        n, k = q.shape
        s = self.scales.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:n, :k]
        return (q * s).to(dtype)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales}

    def meta(self) -> Dict[str, object]:
        return {"format": "fp8", "layout_version": LAYOUT_VERSION, "granularity": self.granularity,
                "in_features": self.in_features, "out_features": self.out_features}

    def to(self, device) -> "Fp8Weight":
        return Fp8Weight(self.qweight.to(device), self.scales.to(device), self.granularity)


@register_format
@dataclass(frozen=True)
class Fp8Format:
    """fp8 e4m3 weights, per-channel (``row``) or 128 x 128 ``block`` scales."""

    granularity: str = "row"
    name = "fp8"
    bits = 8

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise FormatError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    def quantize(self, weight: torch.Tensor) -> Fp8Weight:
        check_weight(weight)
        if self.granularity == "row":
            q, s = quantize_rows(weight, "fp8")
        else:
            q, s = quantize_blocks_2d(weight)
        return Fp8Weight(q, s.contiguous(), self.granularity)
