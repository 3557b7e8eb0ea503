"""Module surgery for the transformers integration (pure torch): which layers to quantize, chunked
quantization of one weight, meta-device QuantLinears of recorded shapes, and staging modules that
hold a GPTQ / AWQ layer's tensors between loading and conversion."""
from __future__ import annotations

import math
import re
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..checkpoint import _DTYPES, _module_meta, _new_module, _quant_specs, _st_dtype
from ..errors import FormatError, UnsupportedError
from ..formats.intx import IntxFormat, IntxWeight
from ..nn import QuantLinear

DEFAULT_SKIPS = ("lm_head", "gate", "router")  # output head; MoE routers (``mlp.gate``, ``*.router``)
CHUNK_ELEMENTS = 1 << 22  # weights quantized at a time (rows of one layer): ~4M, ~160 MB of temporaries
STAGED = ("qweight", "qzeros", "scales", "g_idx", "bias")
REQUIRED = ("qweight", "qzeros", "scales")


def skip_matches(fqn: str, patterns: Optional[Iterable[str]]) -> bool:
    """A pattern matches whole dotted components of ``fqn`` anywhere (``lm_head``, ``mlp.gate``,
    ``layers.3``: not ``gate_proj``), or the whole ``fqn`` as a regex."""
    for p in patterns or ():
        if f".{p}." in f".{fqn}.":
            return True
        try:
            if re.fullmatch(p, fqn):
                return True
        except re.error:
            continue
    return False


def default_skips(model: nn.Module) -> List[str]:
    """lm_head (the output embedding, whatever its name), MoE routers, and the model's fp32 modules."""
    skips = list(DEFAULT_SKIPS)
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skips += [fqn for fqn, m in model.named_modules() if out is not None and m is out and fqn not in skips]
    skips += [m for m in (getattr(model, "_keep_in_fp32_modules", None) or []) if m not in skips]
    return skips


def linear_targets(model: nn.Module, skips: Iterable[str]) -> List[str]:
    skips = list(skips)
    return [fqn for fqn, m in model.named_modules() if fqn and isinstance(m, nn.Linear) and not skip_matches(fqn, skips)]


def set_module(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent, _, child = fqn.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    new._is_hf_initialized = True  # transformers must not re-initialise it


def quantize_weight(weight: torch.Tensor, fmt: IntxFormat, max_elements: int = CHUNK_ELEMENTS) -> IntxWeight:
    """``fmt.quantize(weight)`` computed a block of output rows at a time (rows are independent), so
    the fp32/int64 temporaries stay ~``max_elements`` wide whatever the layer size. Bit-identical."""
    n, k = weight.shape
    rows = max(1, max_elements // max(k, 1))
    if n <= rows:
        return fmt.quantize(weight)
    parts = [fmt.quantize(weight[r : r + rows]) for r in range(0, n, rows)]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts], dim=1)  # noqa: E731
    zeros = None if parts[0].zeros is None else cat("zeros")
    return IntxWeight(cat("qweight"), cat("scales"), zeros, fmt.bits, fmt.group_size, k)


def quant_linear_from(linear: nn.Linear, weight: torch.Tensor, fmt: IntxFormat) -> QuantLinear:
    """A QuantLinear for ``linear`` whose (loaded) dense weight is ``weight``; the bias is carried over
    (it may still be on the meta device: the loader fills it later)."""
    if tuple(weight.shape) != (linear.out_features, linear.in_features):
        raise FormatError(f"weight of shape {tuple(weight.shape)} for a {linear.in_features}->{linear.out_features} layer")
    bias = None if linear.bias is None else linear.bias.detach()
    module = QuantLinear(quantize_weight(weight, fmt), None)
    if bias is not None:
        module.bias = bias.to(device=weight.device) if bias.device.type != "meta" else bias
    return module


def module_entries(model: nn.Module) -> Dict[str, Dict]:
    """{fqn: meta} of every QuantLinear, as lowbit_config.json records them."""
    return {fqn: _module_meta(m) for fqn, m in model.named_modules() if isinstance(m, QuantLinear)}


def entry_for(linear: nn.Linear, fmt: IntxFormat) -> Dict:
    """The module entry a QuantLinear of ``fmt`` replacing ``linear`` would have."""
    return {"class": "QuantLinear", "bits": fmt.bits, "group_size": fmt.group_size,
            "in_features": linear.in_features, "out_features": linear.out_features,
            "zero_kind": None if fmt.symmetric else fmt.zero_kind,
            "scale_dtype": str(fmt.scale_dtype).replace("torch.", ""), "bias": linear.bias is not None}


def weight_bytes(linear: nn.Linear, fmt: IntxFormat) -> int:
    """Bytes of the buffers holding ``linear``'s weight once quantized to ``fmt`` (qweight, scales,
    zeros; K padding included, the bias not)."""
    specs = _quant_specs("", entry_for(linear, fmt))
    return sum(math.prod(shape) * dtype.itemsize for key, (shape, dtype) in specs.items() if key != "bias")


def meta_quant_module(fqn: str, meta: Mapping, bias_dtype: torch.dtype) -> Tuple[QuantLinear, Dict]:
    """A QuantLinear / PermutedQuantLinear of the recorded shapes on the meta device, and its
    expected {key: (shape, dtype)} (dtype None: any float)."""
    try:
        specs = _quant_specs(fqn, meta)
    except (KeyError, TypeError, ValueError, FormatError) as e:
        raise FormatError(f"{fqn}: bad module entry in quantization_config.modules ({e})") from None
    module = _new_module(meta, specs, fqn, torch.device("meta"))
    if module.bias is not None:
        module.bias = module.bias.to(bias_dtype)
    return module, specs


class PackedStage(nn.Module):
    """A GPTQ / AWQ layer's checkpoint tensors (``qweight``, ``qzeros``, ``scales``, optional ``g_idx``
    and ``bias``, shapes and dtypes as on disk) between loading and conversion to a QuantLinear.
    Not runnable: the quantizer converts it right after loading."""

    def __init__(self, in_features: int, out_features: int, specs: Mapping[str, Tuple[Tuple[int, ...], torch.dtype]],
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features, self.dtype = in_features, out_features, dtype
        self.source_dtypes = {name: d for name, (_, d) in specs.items()}
        for name, (shape, d) in specs.items():
            self.register_buffer(name, torch.empty(shape, dtype=d, device="meta"))

    def tensors(self) -> Dict[str, torch.Tensor]:
        """The loaded tensors in their on-disk dtypes (a loader that widened floats is undone exactly)."""
        return {name: getattr(self, name).to(d) for name, d in self.source_dtypes.items()}

    def forward(self, x):  # pragma: no cover - guarded by the quantizer
        raise UnsupportedError("PackedStage holds checkpoint tensors until conversion; it cannot run")


def read_headers(files: Iterable[str]) -> Dict[str, Tuple[Tuple[int, ...], Optional[torch.dtype]]]:
    """{tensor name: (shape, dtype)} from safetensors headers (no tensor data is read)."""
    from safetensors import safe_open

    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), _DTYPES.get(_st_dtype(sl.get_dtype())))
    return out


def checkpoint_key(name: str, headers: Mapping, prefix: str) -> Optional[str]:
    """The checkpoint's name for model key ``name``: as is, or without the base-model prefix."""
    if name in headers:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in headers:
        return name[len(prefix) + 1 :]
    return None
