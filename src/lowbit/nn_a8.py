"""Linear modules with 8-bit activations (dynamic per-token quantization inside the op).

* ``Float8Linear``: buffers ``qweight`` float8_e4m3fn (N, K), ``scales`` fp32 (N,) (row) or
  (ceil(N/128), ceil(K/128)) (block), ``bias``; layout ``lowbit.formats.fp8``.
* ``Int8Linear``: ``qweight`` int8 (N, K), ``scales`` fp32 (N,), ``inv_smooth`` fp32 (K,) when
  SmoothQuant-smoothed, ``bias``; layout ``lowbit.formats.int8``.
* ``W4A8Linear``: the ``QuantLinear`` buffers (intx, bits <= 4), forward on fp8 tensor cores.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .formats.fp8 import BLOCK, Fp8Format, Fp8Weight
from .formats.int8 import Int8Format, Int8Weight
from .nn import QuantLinear
from .ops_a8 import linear_w4a8_fp8_auto, linear_w8a8_auto
from .tp import Shardable


class _W8A8Linear(Shardable, nn.Module):
    def __init__(self, qweight, scales, inv_smooth, bias: Optional[torch.Tensor], block: int) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.shape
        self.block = block
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("inv_smooth", inv_smooth)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_w8a8_auto(x, self.qweight, self.scales, self.inv_smooth, self.bias, self.block)


class Float8Linear(_W8A8Linear):
    """W8A8-fp8: fp8 e4m3 weights (row or 128x128 block scales), fp8 activations quantized per call."""

    def __init__(self, weight: Fp8Weight, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__(weight.qweight, weight.scales, None, bias, BLOCK if weight.granularity == "block" else 0)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: Fp8Format) -> "Float8Linear":
        return cls(fmt.quantize(linear.weight.detach()), linear.bias)

    @property
    def weight(self) -> Fp8Weight:
        return Fp8Weight(self.qweight, self.scales, "block" if self.block else "row")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3, "
                f"{'block 128x128' if self.block else 'per-channel'}, bias={self.bias is not None}")


class Int8Linear(_W8A8Linear):
    """W8A8-int8: int8 per-channel weights (optionally SmoothQuant-smoothed), int8 per-token activations."""

    def __init__(self, weight: Int8Weight, bias: Optional[torch.Tensor] = None) -> None:
        super().__init__(weight.qweight, weight.scales, weight.inv_smooth, bias, 0)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: Int8Format, act_amax: Optional[torch.Tensor] = None) -> "Int8Linear":
        return cls(fmt.quantize(linear.weight.detach(), act_amax=act_amax), linear.bias)

    @property
    def weight(self) -> Int8Weight:
        return Int8Weight(self.qweight, self.scales, self.inv_smooth)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8, "
                f"smoothquant={self.inv_smooth is not None}, bias={self.bias is not None}")


class W4A8Linear(QuantLinear):
    """intx weights (bits <= 4, integer or symmetric zeros) x fp8 per-token activations."""

    RUNTIME_MMA_WORDS = False  # the fp8 kernel reads the natural word order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear_w4a8_fp8_auto(x, self.qweight, self.scales, self.zeros, self.bias, self.bits,
                                    self.group_size or 0, self.in_features)
