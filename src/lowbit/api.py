"""``quantize_(model, config, filter_fn)`` and the config dataclasses (torchao vocabulary).

Configs are small validated dataclasses that round-trip through JSON (``to_dict`` /
``config_from_dict``). ``quantize_`` dispatches on the config's type through ``_HANDLERS``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Dict, Optional, Type

import torch
from torch import nn

from .formats.intx import SCALE_DTYPES, ZERO_KINDS, IntxFormat, check_group_size
from .errors import FormatError
from .nn import QuantLinear

_DTYPE_NAMES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _dtype(name_or_dtype) -> torch.dtype:
    if isinstance(name_or_dtype, torch.dtype):
        return name_or_dtype
    try:
        return _DTYPE_NAMES[str(name_or_dtype).replace("torch.", "")]
    except KeyError:
        raise FormatError(f"scale_dtype must be one of {list(_DTYPE_NAMES)}, got {name_or_dtype!r}") from None


@dataclass
class IntxWeightOnlyConfig:
    """Weight-only n-bit group-wise quantization (activations stay fp16/bf16)."""

    bits: int = 4
    group_size: Optional[int] = 128
    symmetric: bool = False
    zero_kind: str = "int"
    scale_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or not 1 <= self.bits <= 8:
            raise FormatError(f"bits must be an integer in 1..8, got {self.bits!r}")
        check_group_size(self.group_size)
        if self.zero_kind not in ZERO_KINDS:
            raise FormatError(f"zero_kind must be one of {ZERO_KINDS}, got {self.zero_kind!r}")
        self.scale_dtype = str(self.scale_dtype).replace("torch.", "")
        if _dtype(self.scale_dtype) not in SCALE_DTYPES:
            raise FormatError(f"unsupported scale_dtype {self.scale_dtype}")

    def format(self) -> IntxFormat:
        return IntxFormat(self.bits, self.group_size, self.symmetric, self.zero_kind, _dtype(self.scale_dtype))

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class Int4WeightOnlyConfig(IntxWeightOnlyConfig):
    """W4A16: 4-bit weights, asymmetric with integer zeros, group 128 by default."""

    bits: int = 4

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise FormatError("Int4WeightOnlyConfig has bits=4; use IntxWeightOnlyConfig for other widths")
        super().__post_init__()


CONFIGS: Dict[str, Type] = {c.__name__: c for c in (IntxWeightOnlyConfig, Int4WeightOnlyConfig)}


def config_from_dict(d: Dict):
    d = dict(d)
    name = d.pop("type", None)
    if name not in CONFIGS:
        raise FormatError(f"unknown config type {name!r}; known: {sorted(CONFIGS)}")
    return CONFIGS[name](**d)


def _quantize_linear_weight_only(module: nn.Linear, config: IntxWeightOnlyConfig) -> nn.Module:
    return QuantLinear.from_linear(module, config.format())


_HANDLERS: Dict[Type, Callable[[nn.Linear, object], nn.Module]] = {
    IntxWeightOnlyConfig: _quantize_linear_weight_only,
    Int4WeightOnlyConfig: _quantize_linear_weight_only,
}


def _default_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) or _is_moe_block(module)


def _is_moe_block(module: nn.Module) -> bool:
    from .nn_moe import is_moe_block

    return is_moe_block(module)


def _quantize_moe_block(module: nn.Module, config) -> nn.Module:
    """Sparse MoE block -> ``QuantMoE`` (weight-only intx configs); what it contains is handled here."""
    from .nn_moe import QuantMoE

    if not isinstance(config, IntxWeightOnlyConfig):
        raise FormatError(f"no MoE handler for config type {type(config).__name__}")
    return QuantMoE.from_block(module, config.format())


def quantize_(
    model: nn.Module, config, filter_fn: Optional[Callable[[nn.Module, str], bool]] = None
) -> nn.Module:
    """Replace, in place, every module selected by ``filter_fn(module, fqn)`` (default: all
    ``nn.Linear`` and transformers sparse MoE blocks) with its quantized counterpart for ``config``
    (MoE blocks -> ``QuantMoE``: experts and shared-expert linears quantized, router kept). Returns ``model``."""
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise FormatError(f"no quantize_ handler for config type {type(config).__name__}")
    filter_fn = filter_fn or _default_filter
    targets = [(fqn, m) for fqn, m in model.named_modules() if fqn and filter_fn(m, fqn)]
    moe_blocks: list = []  # modules inside a replaced MoE block were converted with it
    for fqn, module in targets:
        if any(fqn.startswith(b + ".") for b in moe_blocks):
            continue
        if _is_moe_block(module):
            moe_blocks.append(fqn)
            parent_name, _, child = fqn.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, _quantize_moe_block(module, config))
            continue
        if not isinstance(module, nn.Linear):
            raise FormatError(f"{fqn}: quantize_ replaces nn.Linear modules, got {type(module).__name__}")
        parent_name, _, child = fqn.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, handler(module, config))
    return model
