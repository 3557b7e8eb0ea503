"""int8 weights, per output channel, symmetric, optionally SmoothQuant-smoothed (format ``int8``).

Math: ``w[n, k] = q[n, k] * s[n] / m[k]`` with q int8 in [-127, 127], s fp32 and m the optional
SmoothQuant factor. Tensors:

* ``qweight``: int8 (N, K), row-major, K contiguous (no padding);
* ``scales``: fp32 (N,), s = amax(|w'[n, :]|) / 127 of the smoothed weight w' = w * m;
* ``inv_smooth``: fp32 (K,) = 1 / m, or absent. The activation is multiplied by it before the
  dynamic per-token quantization (fused into ``quantize_act``), so (x / m) @ (w * m)^T = x @ w^T.

SmoothQuant (``smooth_alpha`` = a in [0, 1]) moves activation outliers into the weights::

    m_k = amax_x(k)^a / amax_w(k)^(1-a)        amax_w(k) = max_n |w[n, k]|

It needs activation statistics: pass either ``act_amax`` (K,) (per input channel max |x| over
calibration data) or ``calib`` (..., K) calibration inputs to ``Int8Format.quantize``. Channels
with amax_x = 0 or amax_w = 0 keep m = 1; m is clamped to [1e-5, 1e5].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch

from ..errors import FormatError
from .act8 import quantize_rows
from .base import register_format
from .fp8 import DenseRowsWeight, check_weight

LAYOUT_VERSION = 1


def smooth_factors(weight: torch.Tensor, act_amax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant m (K,) fp32 from the weight (N, K) and the activations' per-channel amax (K,)."""
    ax = act_amax.float().abs()
    aw = weight.float().abs().amax(dim=0)
    m = ax.pow(alpha) / aw.pow(1 - alpha)
    ok = (ax > 0) & (aw > 0) & torch.isfinite(m)
    return torch.where(ok, m, torch.ones_like(m)).clamp(1e-5, 1e5)


@dataclass
class Int8Weight(DenseRowsWeight):
    """A quantized int8 weight; see the module docstring for the layout."""

    qweight: torch.Tensor  # int8 (N, K)
    scales: torch.Tensor  # fp32 (N,)
    inv_smooth: Optional[torch.Tensor] = None  # fp32 (K,) or None
    format_name: str = field(default="int8", init=False)

    def __post_init__(self) -> None:
        if self.qweight.dtype != torch.int8 or self.qweight.dim() != 2:
            raise FormatError(f"qweight must be int8 (N, K), got {self.qweight.dtype} {tuple(self.qweight.shape)}")
        n, k = self.qweight.shape
        if self.scales.dtype != torch.float32 or tuple(self.scales.shape) != (n,):
            raise FormatError(f"scales must be fp32 ({n},), got {self.scales.dtype} {tuple(self.scales.shape)}")
        if self.inv_smooth is not None and (self.inv_smooth.dtype != torch.float32
                                            or tuple(self.inv_smooth.shape) != (k,)):
            raise FormatError(f"inv_smooth must be fp32 ({k},), got {self.inv_smooth.dtype} "
                              f"{tuple(self.inv_smooth.shape)}")

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The original-space weight q * s / m (N, K)."""
        w = self.qweight.float() * self.scales[:, None]
        if self.inv_smooth is not None:
            w = w * self.inv_smooth[None, :]
        return w.to(dtype)

    def tensors(self) -> Dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "scales": self.scales}
        if self.inv_smooth is not None:
            out["inv_smooth"] = self.inv_smooth
        return out

    def meta(self) -> Dict[str, object]:
        return {"format": "int8", "layout_version": LAYOUT_VERSION, "smoothed": self.inv_smooth is not None,
                "in_features": self.in_features, "out_features": self.out_features}

    def to(self, device) -> "Int8Weight":
        inv = None if self.inv_smooth is None else self.inv_smooth.to(device)
        return Int8Weight(self.qweight.to(device), self.scales.to(device), inv)


@register_format
@dataclass(frozen=True)
class Int8Format:
    """int8 per-channel symmetric weights; ``smooth_alpha`` enables SmoothQuant (needs statistics)."""

    smooth_alpha: Optional[float] = None
    name = "int8"
    bits = 8

    def __post_init__(self) -> None:
        a = self.smooth_alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise FormatError(f"smooth_alpha must be None or a number in [0, 1], got {a!r}")

    def quantize(self, weight: torch.Tensor, act_amax: Optional[torch.Tensor] = None,
                 calib: Optional[torch.Tensor] = None) -> Int8Weight:
        """Quantize (N, K); with ``smooth_alpha`` give ``act_amax`` (K,) or ``calib`` (..., K)."""
        check_weight(weight)
        k = weight.shape[1]
        inv = None
        if self.smooth_alpha is not None:
            if act_amax is None and calib is not None:
                if calib.shape[-1] != k:
                    raise FormatError(f"calib's last dim must be in_features={k}, got {tuple(calib.shape)}")
                act_amax = calib.detach().reshape(-1, k).float().abs().amax(dim=0)
            if act_amax is None or tuple(act_amax.shape) != (k,):
                raise FormatError(
                    f"smooth_alpha={self.smooth_alpha} needs activation statistics: act_amax of shape ({k},) "
                    f"or calib inputs (..., {k}); got act_amax="
                    f"{None if act_amax is None else tuple(act_amax.shape)}")
            m = smooth_factors(weight, act_amax.to(weight.device), float(self.smooth_alpha))
            weight = weight.float() * m[None, :]
            inv = (1.0 / m).contiguous()
        q, s = quantize_rows(weight, "int8")
        return Int8Weight(q, s.contiguous(), inv)
