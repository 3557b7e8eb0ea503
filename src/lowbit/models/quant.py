"""The weight formats of the end-to-end benchmark and how each is applied to a model.

``parse_formats("bf16,tinygemm,w4a16,w3a16-g64,w2a16-sym")``:

* ``bf16`` — the unquantized model (in the run's dtype; the accuracy reference);
* ``tinygemm`` — int4 g128 through ``aten._weight_int4pack_mm`` (CUDA, bf16), the baseline to beat;
* ``w{n}a16[-g{size}|-pc][-sym]`` — lowbit weight-only n-bit (n = 1..8) via ``lowbit.quantize_``;
  group 128 and asymmetric integer zeros unless told otherwise;
* ``fp8`` (W8A8-fp8 row-wise), ``fp8-block`` (128 x 128 block scales), ``int8`` (W8A8-int8), ``w4a8``
  (int4 g128 weights x fp8 activations): lowbit's 8-bit-activation configs (activations quantized per
  token inside each linear); fp8 and W4A8 need sm_89+ for the kernels.

Embeddings stay dense; the lm_head too unless ``quantize_lm_head``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ..api import (Float8DynamicActivationFloat8WeightConfig, Int4WeightFloat8ActivationConfig,
                   Int8DynamicActivationInt8WeightConfig, IntxWeightOnlyConfig, quantize_)
from ..formats.intx import IntxFormat

DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
A8_FORMATS = {"fp8": "fp8", "w8a8-fp8": "fp8", "fp8-block": "fp8-block", "int8": "int8", "w8a8": "int8",
              "w8a8-int8": "int8", "w4a8": "w4a8"}
_INTX = re.compile(r"^w([1-8])a16(?:-?g(\d+)|-?(pc))?(-?sym)?$")


@dataclass(frozen=True)
class E2EFormat:
    name: str
    kind: str  # "dense" | "tinygemm" | "intx" | "fp8" | "fp8-block" | "int8" | "w4a8"
    bits: int = 16
    group_size: Optional[int] = 128
    symmetric: bool = False

    def available(self, device: torch.device, dtype: torch.dtype) -> Tuple[bool, str]:
        if self.kind != "tinygemm":
            return True, ""
        if device.type != "cuda":
            return False, "tinygemm (aten._weight_int4pack_mm) runs on CUDA only"
        if dtype != torch.bfloat16:
            return False, "tinygemm takes bf16 activations only"
        if not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
            return False, "this torch has no aten._weight_int4pack_mm"
        return True, ""

    def label(self, dtype: torch.dtype) -> str:
        if self.kind == "dense":
            return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
        if self.kind == "tinygemm":
            return "tinygemm w4 g128"
        if self.kind in A8_LABELS:
            return A8_LABELS[self.kind]
        g = "pc" if self.group_size is None else f"g{self.group_size}"
        return f"w{self.bits}a16 {g}{' sym' if self.symmetric else ''}"


A8_LABELS = {"fp8": "w8a8-fp8 row", "fp8-block": "w8a8-fp8 block", "int8": "w8a8-int8", "w4a8": "w4a8-fp8 g128"}


def a8_config(kind: str, dtype: torch.dtype):
    """The ``lowbit.quantize_`` config of an 8-bit-activation e2e format."""
    if kind == "w4a8":
        return Int4WeightFloat8ActivationConfig(group_size=128, scale_dtype=DTYPE_NAMES.get(dtype, "bfloat16"))
    if kind == "int8":
        return Int8DynamicActivationInt8WeightConfig()
    return Float8DynamicActivationFloat8WeightConfig(granularity="block" if kind == "fp8-block" else "row")


def parse_format(token: str) -> E2EFormat:
    t = token.strip().lower()
    if t in ("bf16", "fp16", "fp32", "dense"):
        return E2EFormat("bf16", "dense")
    if t == "tinygemm":
        return E2EFormat("tinygemm", "tinygemm", 4, 128)
    m = _INTX.match(t)
    if m:
        gs = None if m.group(3) else (128 if m.group(2) is None else int(m.group(2)))
        return E2EFormat(t, "intx", int(m.group(1)), gs, bool(m.group(4)))
    if t in A8_FORMATS:
        kind = A8_FORMATS[t]
        return E2EFormat(kind, kind, 4 if kind == "w4a8" else 8, 128 if kind == "w4a8" else None)
    raise ValueError(f"unknown format {token!r}: bf16, tinygemm, w<n>a16[-g<size>|-pc][-sym] (n = 1..8), "
                     f"{', '.join(sorted(set(A8_FORMATS.values())))}")


def parse_formats(text: str) -> List[E2EFormat]:
    out: List[E2EFormat] = []
    for tok in text.split(","):
        if tok.strip():
            f = parse_format(tok)
            if f.name not in [o.name for o in out]:
                out.append(f)
    if not out:
        raise ValueError(f"no formats in {text!r}")
    return out


def linear_filter(quantize_lm_head: bool) -> Callable[[nn.Module, str], bool]:
    def keep(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and (quantize_lm_head or fqn != "lm_head")

    return keep


def _inner_k_tiles(k: int) -> Optional[int]:
    return next((t for t in (8, 4, 2) if k % (16 * t) == 0), None)


class TinygemmLinear(nn.Module):
    """``nn.Linear`` replacement on tinygemm's int4 kernel (``aten._weight_int4pack_mm``), CUDA + bf16.

    The weight is quantized by lowbit's own int4 g128 format (the same codes as ``w4a16``) and
    repacked as in ``lowbit.bench.cases_wxa16.Tinygemm``.
    """

    def __init__(self, linear: nn.Linear, group_size: int = 128) -> None:
        super().__init__()
        from ..bench.cases_wxa16 import tinygemm_nibbles, tinygemm_scales_and_zeros

        n, k = linear.weight.shape
        inner = _inner_k_tiles(k)
        if linear.bias is not None or n % 8 or k % group_size or inner is None:
            raise ValueError(f"tinygemm needs no bias, N % 8 == 0, K % {group_size} == 0; got {n}x{k}")
        qw = IntxFormat(4, group_size, False, "int", torch.bfloat16).quantize(linear.weight.detach())
        self.in_features, self.out_features, self.group_size = k, n, group_size
        packed = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(qw.codes()[:, :k]), inner)
        self.register_buffer("weight_packed", packed)
        self.register_buffer("scales_and_zeros", tinygemm_scales_and_zeros(qw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, self.in_features), self.weight_packed,
                                               self.group_size, self.scales_and_zeros)
        return y.reshape(*x.shape[:-1], self.out_features)


def apply_format(model: nn.Module, fmt: E2EFormat, quantize_lm_head: bool = False) -> nn.Module:
    """Quantize ``model``'s linears in place for ``fmt`` (``bf16``: unchanged). Returns ``model``."""
    keep = linear_filter(quantize_lm_head)
    if fmt.kind == "dense":
        return model
    if fmt.kind == "tinygemm":
        targets = [(fqn, m) for fqn, m in model.named_modules() if fqn and keep(m, fqn)]
        for fqn, module in targets:
            parent, _, child = fqn.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, TinygemmLinear(module, fmt.group_size))
        return model
    dtype = next(model.parameters()).dtype
    if fmt.kind in A8_LABELS:
        return quantize_(model, a8_config(fmt.kind, dtype), filter_fn=keep)
    cfg = IntxWeightOnlyConfig(bits=fmt.bits, group_size=fmt.group_size, symmetric=fmt.symmetric,
                               scale_dtype=DTYPE_NAMES.get(dtype, "bfloat16"))
    return quantize_(model, cfg, filter_fn=keep)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's saved tensors (parameters + persistent buffers), a tied tensor counted once."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
