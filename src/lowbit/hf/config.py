"""``LowbitConfig``: the ``quantization_config`` of a lowbit model in transformers (quant_method "lowbit").

Serialized into config.json as::

    {"quant_method": "lowbit",
     "quant_config": {"type": "Int4WeightOnlyConfig", "bits": 4, ...},   # lowbit.api config, to_dict()
     "modules_to_not_convert": ["lm_head"],      # module names / suffixes / regexes left dense
     "checkpoint_format": "lowbit",              # layout of the tensors on disk: lowbit | gptq | awq
     "source_config": null,                      # the GPTQ/AWQ quantization_config it was converted from
     "modules": {"model.layers.0.self_attn.q_proj": {"class": "QuantLinear", "bits": 4, ...}},
     "layout_version": 1, "lowbit_version": "0.1.0"}

``modules`` (one entry per quantized layer, as lowbit_config.json of ``save_quantized``) is filled
in after loading, so a saved model reloads with exactly the recorded shapes and dtypes.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from transformers.utils.quantization_config import QuantizationConfigMixin

from ..api import IntxWeightOnlyConfig, config_from_dict
from ..convert._common import normalize_group_size
from ..convert.awq import AWQ_BITS
from ..convert.gptq import GPTQ_BITS, ZERO_OFFSET
from ..errors import FormatError, UnsupportedError
from ..formats.intx import LAYOUT_VERSION

QUANT_METHOD = "lowbit"
CHECKPOINT_FORMATS = ("lowbit", "gptq", "awq")
FOREIGN_METHODS = ("gptq", "awq")


class LowbitConfig(QuantizationConfigMixin):
    """``from_pretrained(path, quantization_config=LowbitConfig(Int4WeightOnlyConfig()))`` quantizes on load.

    quant_config: a weight-only lowbit config (``IntxWeightOnlyConfig`` / ``Int4WeightOnlyConfig``
    object or its ``to_dict()``). modules_to_not_convert: modules to keep dense, each a run of
    dotted name components matched anywhere (``lm_head``, ``mlp``, ``layers.0``) or a regex of the full name; None = the output embedding (lm_head) and MoE routers (``*.gate``, ``*.router``).
    """

    def __init__(
        self,
        quant_config=None,
        modules_to_not_convert: Optional[List[str]] = None,
        checkpoint_format: str = "lowbit",
        source_config: Optional[Dict[str, Any]] = None,
        modules: Optional[Dict[str, Dict[str, Any]]] = None,
        quant_method: str = QUANT_METHOD,
        layout_version: int = LAYOUT_VERSION,
        lowbit_version: Optional[str] = None,
        **unknown,
    ) -> None:
        if unknown:
            raise FormatError(f"LowbitConfig: unknown keys {sorted(unknown)}")
        if quant_method != QUANT_METHOD:
            raise FormatError(f"LowbitConfig has quant_method {QUANT_METHOD!r}, got {quant_method!r}")
        if layout_version != LAYOUT_VERSION:
            raise FormatError(f"intx layout version {layout_version!r}; this lowbit reads {LAYOUT_VERSION}")
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise FormatError(f"checkpoint_format must be one of {CHECKPOINT_FORMATS}, got {checkpoint_format!r}")
        if isinstance(quant_config, dict):
            quant_config = config_from_dict(quant_config)
        if quant_config is not None and not isinstance(quant_config, IntxWeightOnlyConfig):
            raise UnsupportedError(
                f"LowbitConfig takes a weight-only intx config (IntxWeightOnlyConfig, Int4WeightOnlyConfig), "
                f"got {type(quant_config).__name__}"
            )
        if modules_to_not_convert is not None and not (
            isinstance(modules_to_not_convert, (list, tuple)) and all(isinstance(m, str) for m in modules_to_not_convert)
        ):
            raise FormatError(f"modules_to_not_convert must be a list of strings, got {modules_to_not_convert!r}")
        self.quant_method = QUANT_METHOD
        self.quant_config = quant_config
        self.modules_to_not_convert = None if modules_to_not_convert is None else list(modules_to_not_convert)
        self.checkpoint_format = checkpoint_format
        self.source_config = copy.deepcopy(source_config)
        self.modules = copy.deepcopy(modules)
        self.layout_version = LAYOUT_VERSION
        if checkpoint_format in FOREIGN_METHODS:
            foreign_params(checkpoint_format, source_config or {})  # validate early

    def to_dict(self) -> Dict[str, Any]:
        from .. import __version__

        return {
            "quant_method": QUANT_METHOD,
            "quant_config": None if self.quant_config is None else self.quant_config.to_dict(),
            "modules_to_not_convert": copy.deepcopy(self.modules_to_not_convert),
            "checkpoint_format": self.checkpoint_format,
            "source_config": copy.deepcopy(self.source_config),
            "modules": copy.deepcopy(self.modules),
            "layout_version": self.layout_version,
            "lowbit_version": __version__,
        }

    def to_diff_dict(self) -> Dict[str, Any]:
        return self.to_dict()

    def __iter__(self):
        yield from self.to_dict().items()

    def __eq__(self, other) -> bool:
        if not isinstance(other, LowbitConfig):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        return a == b

    @classmethod
    def from_foreign(cls, quantization_config: Dict[str, Any]) -> "LowbitConfig":
        """The LowbitConfig that loads a GPTQ / AWQ checkpoint (its config.json ``quantization_config``)."""
        if not isinstance(quantization_config, dict):
            quantization_config = quantization_config.to_dict()
        method = str(quantization_config.get("quant_method", "")).lower()
        if method not in FOREIGN_METHODS:
            raise UnsupportedError(
                f"lowbit loads GPTQ and AWQ checkpoints (quant_method one of {FOREIGN_METHODS}), got "
                f"quant_method={quantization_config.get('quant_method')!r}"
            )
        return cls(checkpoint_format=method, source_config=quantization_config,
                   modules_to_not_convert=quantization_config.get("modules_to_not_convert"))


def foreign_params(method: str, qc: Dict[str, Any]) -> Dict[str, Any]:
    """Converter keyword arguments from a GPTQ / AWQ quantization_config; FormatError / UnsupportedError
    naming the unsupported field."""
    bits = qc.get("bits", qc.get("w_bit"))
    group_size = qc.get("group_size", qc.get("q_group_size", 128))
    group_size = normalize_group_size(group_size)
    if method == "gptq":
        if bits not in GPTQ_BITS:
            raise UnsupportedError(f"GPTQ bits must be one of {GPTQ_BITS}, got {bits!r}")
        fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
        if fmt not in ZERO_OFFSET:
            raise UnsupportedError(
                f"GPTQ checkpoint_format {fmt!r} is not supported (supported: {sorted(ZERO_OFFSET)}; "
                f"marlin / bitblas / exllama-repacked layouts are not)"
            )
        return {"bits": bits, "group_size": group_size, "sym": qc.get("sym"), "desc_act": qc.get("desc_act"),
                "checkpoint_format": fmt}
    if bits not in AWQ_BITS:
        raise UnsupportedError(f"AWQ bits must be one of {AWQ_BITS}, got {bits!r}")
    version = str(qc.get("version", qc.get("format", "gemm"))).lower()
    if version != "gemm":
        raise UnsupportedError(f"AWQ version {version!r} is not supported (only 'gemm'; gemv/marlin/exllama are not)")
    if qc.get("zero_point", True) is not True:
        raise UnsupportedError("AWQ checkpoints without zero points (zero_point=false) are not supported")
    return {"bits": bits, "group_size": group_size, "version": version}
