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


# ---- 8-bit activation configs (modules in ``lowbit.nn_a8``) -----------------------------------------

@dataclass
class Float8DynamicActivationFloat8WeightConfig:
    """W8A8-fp8: e4m3 weights with per-channel (``row``) or 128x128 ``block`` scales; activations
    quantized per token (row) or per 1x128 block (block) at run time. Needs sm_89+ for the kernels."""

    granularity: str = "row"

    def __post_init__(self) -> None:
        from .formats.fp8 import GRANULARITIES

        if self.granularity not in GRANULARITIES:
            raise FormatError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class Int8DynamicActivationInt8WeightConfig:
    """W8A8-int8: int8 per-channel weights, int8 per-token activations (sm_80+). ``smooth_alpha``
    enables SmoothQuant and needs ``act_amax`` statistics: pass ``act_amax={fqn: (K,) tensor}`` to
    ``quantize_`` (the amax is not part of the config, so it does not go to JSON)."""

    smooth_alpha: Optional[float] = None

    def __post_init__(self) -> None:
        from .formats.int8 import Int8Format

        Int8Format(self.smooth_alpha)

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class Int4WeightFloat8ActivationConfig:
    """W4A8-fp8: 4-bit group-wise weights (asymmetric integer zeros unless ``symmetric``), fp8
    per-token activations. ``group_size`` a multiple of 32 or None (per-channel)."""

    group_size: Optional[int] = 128
    symmetric: bool = False
    scale_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        self._weight_only = IntxWeightOnlyConfig(4, self.group_size, self.symmetric, "int", self.scale_dtype)
        self.scale_dtype = self._weight_only.scale_dtype

    def format(self) -> IntxFormat:
        return self._weight_only.format()

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, "group_size": self.group_size, "symmetric": self.symmetric,
                "scale_dtype": self.scale_dtype}


def _quantize_fp8(module: nn.Linear, config: Float8DynamicActivationFloat8WeightConfig) -> nn.Module:
    from .formats.fp8 import Fp8Format
    from .nn_a8 import Float8Linear

    return Float8Linear.from_linear(module, Fp8Format(config.granularity))


def _quantize_int8(module: nn.Linear, config: Int8DynamicActivationInt8WeightConfig) -> nn.Module:
    from .formats.int8 import Int8Format
    from .nn_a8 import Int8Linear

    amax = getattr(config, "_act_amax_by_module", {}).get(id(module))
    if config.smooth_alpha is not None and amax is None:
        raise FormatError(f"smooth_alpha={config.smooth_alpha} needs the layer's activation amax (per input "
                          "channel max |x| over calibration data): use quantize_smooth_(model, config, act_amax)")
    return Int8Linear.from_linear(module, Int8Format(config.smooth_alpha), act_amax=amax)


def _quantize_w4a8(module: nn.Linear, config: Int4WeightFloat8ActivationConfig) -> nn.Module:
    from .nn_a8 import W4A8Linear

    return W4A8Linear.from_linear(module, config.format())


_A8_HANDLERS = {
    Float8DynamicActivationFloat8WeightConfig: _quantize_fp8,
    Int8DynamicActivationInt8WeightConfig: _quantize_int8,
    Int4WeightFloat8ActivationConfig: _quantize_w4a8,
}
CONFIGS.update({c.__name__: c for c in _A8_HANDLERS})
_HANDLERS.update(_A8_HANDLERS)


def quantize_smooth_(model: nn.Module, config: Int8DynamicActivationInt8WeightConfig,
                     act_amax: Dict[str, torch.Tensor],
                     filter_fn: Optional[Callable[[nn.Module, str], bool]] = None) -> nn.Module:
    """``quantize_`` with SmoothQuant statistics: ``act_amax[fqn]`` (K,) = max |x| per input channel of
    that layer's inputs over calibration data. The statistics are not part of the config (or its JSON)."""
    cfg = Int8DynamicActivationInt8WeightConfig(config.smooth_alpha)
    cfg._act_amax_by_module = {id(m): act_amax[f] for f, m in model.named_modules() if f in act_amax}
    return quantize_(model, cfg, filter_fn)


# --- lookup-table (non-uniform) weight-only formats: lowbit.formats.lut, LutLinear ---

def _lut_dtype(name_or_dtype, what: str, allowed) -> str:
    name = str(name_or_dtype).replace("torch.", "")
    if _DTYPE_NAMES.get(name) not in allowed:
        raise FormatError(f"{what} must be one of {list(_DTYPE_NAMES)}, got {name_or_dtype!r}")
    return name


@dataclass
class NF4WeightOnlyConfig:
    """NF4 (QLoRA normal-float 4-bit table) with absmax group scales; activations stay 16-bit."""

    group_size: Optional[int] = 64
    scale_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        self.scale_dtype = _lut_dtype(self.scale_dtype, "scale_dtype", SCALE_DTYPES)

    def format(self):
        from .formats.lut import NF4Format

        return NF4Format(self.group_size, _dtype(self.scale_dtype))

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, **asdict(self)}


@dataclass
class Fp4WeightOnlyConfig(NF4WeightOnlyConfig):
    """FP4 e2m1 with group scales: ``scale_kind`` "e8m0" (MX-style power of two, block 32) or "float"."""

    group_size: Optional[int] = 32
    scale_kind: str = "e8m0"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.format()  # validates scale_kind and its storage dtype

    def format(self):
        from .formats.lut import Fp4Format

        return Fp4Format(self.group_size, self.scale_kind, _dtype(self.scale_dtype))


@dataclass
class CodebookWeightOnlyConfig(NF4WeightOnlyConfig):
    """Learned 2**bits-entry codebooks (k-means, seeded) per row or per group, with group scales."""

    bits: int = 4
    group_size: Optional[int] = 128
    granularity: str = "row"
    table_dtype: str = "float32"
    iters: int = 25
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.table_dtype = _lut_dtype(self.table_dtype, "table_dtype", SCALE_DTYPES)
        self.format()  # validates bits, granularity, iters

    def format(self):
        from .formats.lut import CodebookFormat

        return CodebookFormat(self.bits, self.group_size, self.granularity, _dtype(self.scale_dtype),
                              _dtype(self.table_dtype), self.iters, self.seed)


def _quantize_linear_lut(module: nn.Linear, config) -> nn.Module:
    from .nn_lut import LutLinear

    return LutLinear.from_linear(module, config.format())


for _cls in (NF4WeightOnlyConfig, Fp4WeightOnlyConfig, CodebookWeightOnlyConfig):
    CONFIGS[_cls.__name__] = _cls
    _HANDLERS[_cls] = _quantize_linear_lut


# --- 2:4-sparse int4 weights: lowbit.formats.sparse24, Sparse24Linear ---

@dataclass
class Int4Sparse24WeightConfig:
    """2:4 structured sparsity with int4 kept values (group-wise, like ``Int4WeightOnlyConfig``).
    ``prune=True`` magnitude-prunes every layer (keep the 2 largest |w| of each 4 consecutive k);
    ``prune=False`` requires weights that are already 2:4 sparse (FormatError naming the first bad group)."""

    group_size: Optional[int] = 128
    symmetric: bool = False
    zero_kind: str = "int"
    scale_dtype: str = "bfloat16"
    prune: bool = True

    def __post_init__(self) -> None:
        self.scale_dtype = _lut_dtype(self.scale_dtype, "scale_dtype", SCALE_DTYPES)
        self.format()  # validates group_size and zero_kind

    def format(self):
        from .formats.sparse24 import Sparse24Format

        return Sparse24Format(self.group_size, self.symmetric, self.zero_kind, _dtype(self.scale_dtype), self.prune)

    def to_dict(self) -> Dict:
        return {"type": type(self).__name__, **asdict(self)}


def _quantize_linear_sparse24(module: nn.Linear, config: Int4Sparse24WeightConfig) -> nn.Module:
    from .nn_sparse24 import Sparse24Linear

    return Sparse24Linear.from_linear(module, config.format())


CONFIGS[Int4Sparse24WeightConfig.__name__] = Int4Sparse24WeightConfig
_HANDLERS[Int4Sparse24WeightConfig] = _quantize_linear_sparse24
