"""``LowbitHfQuantizer``: transformers' ``HfQuantizer`` extension point for quant_method "lowbit".

Three ways in, one result (``QuantLinear`` modules and ``quantization_config.modules`` recording them):

* quantize on load (``LowbitConfig(quant_config)`` passed to ``from_pretrained``): the model is built
  on the meta device; each ``nn.Linear`` weight is handed over by the loader one tensor at a time,
  already on its target device, quantized there (``modules.quantize_weight``, row-chunked) and
  the layer swapped for a QuantLinear, so the bf16 copy of one layer is all that is ever resident
  beside the quantized model. transformers 5.x calls the ``ConversionOps`` of ``get_quantize_ops``
  (and loads sequentially while quantizing on the fly); 4.x calls ``create_quantized_param``.
* a saved lowbit model (config.json quant_method "lowbit", checkpoint_format "lowbit"): the
  recorded QuantLinears are created on the meta device before loading and receive the buffers.
  The safetensors headers are checked first; missing / malformed keys raise ``CheckpointError``.
* a GPTQ / AWQ checkpoint (``lowbit.hf.load_gptq_awq``, checkpoint_format "gptq" / "awq"): each packed
  layer gets a ``PackedStage`` holding its tensors as on disk; after loading they are repacked by
  ``lowbit.convert`` (no requantization) into QuantLinear / PermutedQuantLinear.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
from typing import Dict, List

import torch
from torch import nn
from transformers.quantizers.base import HfQuantizer

from ..checkpoint import CheckpointError
from ..convert import awq_to_intx, gptq_to_intx, quant_linear
from ..errors import FormatError, UnsupportedError
from ..nn import QuantLinear, use_mma_words_
from .config import LowbitConfig, QUANT_METHOD, foreign_params
from .modules import (
    REQUIRED, STAGED, PackedStage, checkpoint_key, default_skips, entry_for, linear_targets, meta_quant_module,
    module_entries, quant_linear_from, read_headers, set_module, weight_bytes,
)

log = logging.getLogger("lowbit")


def _checkpoint_files(model: nn.Module, kwargs: Dict) -> List[str]:
    """The checkpoint's safetensors files: given by transformers 5.x, found next to config.json on 4.x."""
    files = kwargs.get("checkpoint_files")
    if files:
        return [f for f in files if str(f).endswith(".safetensors")]
    path = getattr(model.config, "_name_or_path", None) or getattr(model.config, "name_or_path", None)
    if not path or not os.path.isdir(path):
        return []
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
    single = os.path.join(path, "model.safetensors")
    return [single] if os.path.isfile(single) else []


@functools.lru_cache(maxsize=None)
def _quantize_op_class():
    """transformers 5.x: the ConversionOps quantizing a loaded nn.Linear weight (imported lazily: 4.x lacks it)."""
    from transformers.core_model_loading import ConversionOps

    class LowbitQuantize(ConversionOps):
        def __init__(self, hf_quantizer: "LowbitHfQuantizer") -> None:
            self.hf_quantizer = hf_quantizer

        def convert(self, input_dict, model=None, full_layer_name=None, missing_keys=None, **kwargs):
            out = {}
            for key, value in input_dict.items():
                value = value[0] if isinstance(value, list) else value
                if self.hf_quantizer.param_needs_quantization(model, key):
                    self.hf_quantizer.quantize_loaded(model, key, value)
                    if missing_keys is not None:
                        missing_keys.discard(key)
                else:
                    out[key] = value
            return out

    return LowbitQuantize


class LowbitHfQuantizer(HfQuantizer):
    requires_calibration = False
    requires_parameters_quantization = True  # transformers 4.x: weights go through create_quantized_param
    quantization_config: LowbitConfig

    def __init__(self, quantization_config: LowbitConfig, **kwargs) -> None:
        super().__init__(quantization_config, **kwargs)
        self._targets: set = set()
        self._foreign = None
        self._warm_up_factor = 2

    # -- environment -----------------------------------------------------------------------------
    def validate_environment(self, *args, **kwargs) -> None:
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise UnsupportedError("lowbit models cannot be offloaded to disk (device_map contains 'disk')")
        qc = self.quantization_config
        if not self.pre_quantized and qc.quant_config is None:
            raise FormatError("LowbitConfig needs a quant_config (e.g. Int4WeightOnlyConfig()) to quantize on load")
        if not self.pre_quantized and qc.checkpoint_format != "lowbit":
            raise FormatError(f"checkpoint_format={qc.checkpoint_format!r} describes a quantized checkpoint, "
                              f"but this one has no quantization_config (use lowbit.hf.load_gptq_awq)")

    def param_element_size(self, model, param_name: str, param: torch.Tensor) -> float:
        """Bytes per element of ``param`` once loaded. transformers 5.x sizes its allocator warm-up
        (``caching_allocator_warmup`` -> ``get_total_byte_count``) and device_map="auto" placement
        (``compute_module_sizes``) as ``numel * this``; the base class answers the dense dtype's size
        (checked: 5.0.0, 5.17.0; 5.24 asks ``quantized_element_size`` first). For a weight quantized
        on load: the QuantLinear's qweight + scales (+ zeros) bytes, padding included, per dense weight."""
        if not self.param_needs_quantization(model, param_name):
            return param.element_size()
        fqn = param_name.rpartition(".")[0]
        return weight_bytes(model.get_submodule(fqn), self.quantization_config.quant_config.format()) / param.numel()

    def get_accelerator_warm_up_factor(self) -> int:
        """transformers 4.x warms the allocator up with (model bytes as built) * 2 / factor: for quantize
        on load the factor that makes this the quantized bytes (set when the model is prepared); a
        pre-quantized model is built with its final buffers, so 2 (its own bytes)."""
        return self._warm_up_factor

    def adjust_max_memory(self, max_memory: Dict) -> Dict:
        """device_map="auto" places modules by their quantized size (``param_element_size``); quantize on
        load also needs room for one dense weight and the quantizer's temporaries: keep 10% free."""
        return max_memory if self.pre_quantized else {k: v * 0.9 for k, v in max_memory.items()}

    def _loaded_bytes(self, model, quantized: bool) -> int:
        """Bytes of ``model``'s state dict as built (dense) or once loaded with quantize on load."""
        return sum(t.numel() * (self.param_element_size(model, k, t) if quantized else t.element_size())
                   for k, t in model.state_dict(keep_vars=True).items())

    # -- before loading --------------------------------------------------------------------------
    def _process_model_before_weight_loading(self, model, **kwargs):
        qc = self.quantization_config
        files = _checkpoint_files(model, kwargs)
        if not self.pre_quantized:
            if qc.modules_to_not_convert is None:
                qc.modules_to_not_convert = default_skips(model)
            skips = qc.modules_to_not_convert + list(kwargs.get("keep_in_fp32_modules") or [])
            self._targets = set(linear_targets(model, skips))
            if not self._targets:
                log.warning("lowbit: no nn.Linear to quantize (modules_to_not_convert=%s)", qc.modules_to_not_convert)
            quantized = self._loaded_bytes(model, quantized=True)
            self._warm_up_factor = max(2, math.ceil(2 * self._loaded_bytes(model, quantized=False) / max(quantized, 1)))
        elif qc.checkpoint_format == "lowbit":
            self._prepare_lowbit(model, files)
        else:
            self._prepare_foreign(model, files)
        return model

    def _prepare_lowbit(self, model, files: List[str]) -> None:
        qc = self.quantization_config
        entries = qc.modules
        if entries is None:  # a hand-written config: every targeted nn.Linear with quant_config's format
            if qc.quant_config is None:
                raise FormatError("quantization_config (lowbit) has neither 'modules' nor 'quant_config'")
            fmt = qc.quant_config.format()
            skips = qc.modules_to_not_convert if qc.modules_to_not_convert is not None else default_skips(model)
            entries = {fqn: entry_for(model.get_submodule(fqn), fmt) for fqn in linear_targets(model, skips)}
        headers = read_headers(files) if files else None
        missing, malformed, plan = [], [], {}
        for fqn, meta in entries.items():
            try:
                old = model.get_submodule(fqn)
            except AttributeError:
                malformed.append(f"{fqn}: recorded in quantization_config.modules, the model has no such module")
                continue
            if not isinstance(old, nn.Linear):
                malformed.append(f"{fqn}: expected nn.Linear, the model has {type(old).__name__}")
                continue
            if (old.in_features, old.out_features) != (meta.get("in_features"), meta.get("out_features")):
                malformed.append(f"{fqn}: the model's layer is {old.in_features}->{old.out_features}, the "
                                 f"checkpoint's {meta.get('in_features')}->{meta.get('out_features')}")
                continue
            new, specs = meta_quant_module(fqn, meta, old.weight.dtype)
            plan[fqn] = new
            for key, (shape, dtype) in (specs.items() if headers is not None else ()):
                ck = checkpoint_key(key, headers, model.base_model_prefix)
                if ck is None:
                    missing.append(key)
                    continue
                have_shape, have_dtype = headers[ck]
                ok_dtype = have_dtype is not None and (have_dtype == dtype if dtype is not None else have_dtype.is_floating_point)
                if have_shape != shape or not ok_dtype:
                    want = "a float dtype" if dtype is None else str(dtype)
                    malformed.append(f"{key}: checkpoint has {have_dtype} {have_shape}, expected {want} {shape}")
        if missing or malformed:
            raise CheckpointError(_where(files), missing, [], malformed)
        for fqn, new in plan.items():
            set_module(model, fqn, new)

    def _prepare_foreign(self, model, files: List[str]) -> None:
        qc = self.quantization_config
        params = foreign_params(qc.checkpoint_format, qc.source_config or {})
        if not files:
            raise CheckpointError("?", reason="loading GPTQ/AWQ tensors needs the checkpoint's safetensors files "
                                              "(on transformers 4.x: a local directory)")
        headers = read_headers(files)
        prefix = model.base_model_prefix
        packed = {k[: -len(".qweight")] for k in headers if k.endswith(".qweight")}
        missing, stages = [], {}
        for fqn, m in model.named_modules():
            if not isinstance(m, nn.Linear):
                continue
            keys = {name: checkpoint_key(f"{fqn}.{name}", headers, prefix) for name in STAGED}
            if keys["qweight"] is None:
                continue
            packed.discard(keys["qweight"][: -len(".qweight")])
            missing += [f"{fqn}.{n}" for n in REQUIRED if keys[n] is None]
            specs = {name: headers[ck] for name, ck in keys.items() if ck is not None}
            stages[fqn] = PackedStage(m.in_features, m.out_features, specs, m.weight.dtype)
        unexpected = [f"{p}.qweight (no nn.Linear of that name in the model)" for p in sorted(packed)]
        if not stages and not unexpected:
            raise CheckpointError(_where(files), reason=f"no packed {qc.checkpoint_format.upper()} layer (*.qweight) "
                                                          f"in the checkpoint")
        if missing or unexpected:
            raise CheckpointError(_where(files), missing, unexpected)
        for fqn, stage in stages.items():
            set_module(model, fqn, stage)
        self._foreign = params

    # -- loading (quantize on load) --------------------------------------------------------------
    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        if self.pre_quantized:
            return False
        fqn, _, name = param_name.rpartition(".")
        return name == "weight" and fqn in self._targets

    def check_quantized_param(self, model, param_value, param_name: str, state_dict=None, **kwargs) -> bool:
        """transformers 4.45-4.5x name of ``param_needs_quantization``."""
        return self.param_needs_quantization(model, param_name)

    def create_quantized_param(self, model, param_value, param_name: str, target_device, *args, **kwargs) -> None:
        """transformers 4.x: one loaded weight -> a QuantLinear on ``target_device``."""
        self.quantize_loaded(model, param_name, param_value.to(target_device))

    def get_quantize_ops(self):
        return _quantize_op_class()(self)

    def quantize_loaded(self, model, param_name: str, value: torch.Tensor) -> None:
        """Quantize the loaded dense ``value`` of ``param_name`` (an nn.Linear weight) and swap the layer."""
        fqn = param_name.rpartition(".")[0]
        linear = model.get_submodule(fqn)
        with torch.no_grad():
            new = quant_linear_from(linear, value.detach(), self.quantization_config.quant_config.format())
        set_module(model, fqn, new)
        self._targets.discard(fqn)

    def update_missing_keys(self, model, missing_keys: List[str], prefix: str) -> List[str]:
        """transformers 4.x: a pre-quantized checkpoint lacking a quantized layer's tensor is an error."""
        ours = [k for k in missing_keys if isinstance(_owner(model, k), (QuantLinear, PackedStage))]
        if ours:
            raise CheckpointError(getattr(model.config, "_name_or_path", "?"), missing=ours)
        return missing_keys

    # -- after loading ---------------------------------------------------------------------------
    def _process_model_after_weight_loading(self, model, **kwargs):
        qc = self.quantization_config
        if not self.pre_quantized:
            fmt = qc.quant_config.format()
            for fqn in sorted(self._targets):  # weights that reached the model without the quantize hook
                linear = model.get_submodule(fqn)
                if linear.weight.device.type == "meta":
                    raise CheckpointError(getattr(model.config, "_name_or_path", "?"), missing=[f"{fqn}.weight"])
                with torch.no_grad():
                    set_module(model, fqn, quant_linear_from(linear, linear.weight.detach(), fmt))
            self._targets.clear()
        elif self._foreign is not None:
            self._convert_stages(model)
        _restore_scale_dtypes(model, qc.modules if qc.checkpoint_format == "lowbit" else None)
        meta = [f"{fqn}.{name}" for fqn, m in model.named_modules() if isinstance(m, QuantLinear)
                for name, b in m.named_buffers(recurse=False) if b.device.type == "meta"]
        if meta:
            raise CheckpointError(getattr(model.config, "_name_or_path", "?"), missing=meta)
        use_mma_words_(model)  # QuantLinears filled on the meta device hold the natural word order
        qc.modules = module_entries(model)
        qc.checkpoint_format = "lowbit"
        model.config.quantization_config = qc  # transformers 4.x gave the model a copy made before loading
        return model

    def _convert_stages(self, model) -> None:
        method = self.quantization_config.checkpoint_format
        for fqn, stage in [(f, m) for f, m in model.named_modules() if isinstance(m, PackedStage)]:
            t = stage.tensors()
            try:
                if method == "gptq":
                    weight, perm = gptq_to_intx(t["qweight"], t["qzeros"], t["scales"], t.get("g_idx"),
                                                in_features=stage.in_features, **self._foreign)
                else:
                    weight, perm = awq_to_intx(t["qweight"], t["qzeros"], t["scales"], **self._foreign), None
                if (weight.in_features, weight.out_features) != (stage.in_features, stage.out_features):
                    raise FormatError(f"tensors describe a {weight.in_features}->{weight.out_features} layer, "
                                      f"the model's is {stage.in_features}->{stage.out_features}")
            except FormatError as e:
                raise FormatError(f"{fqn} ({method.upper()}): {e}") from e
            bias = t.get("bias")
            set_module(model, fqn, quant_linear(weight, perm, None if bias is None else bias.to(stage.dtype)))
        self._foreign = None

    # -- capabilities ----------------------------------------------------------------------------
    def is_serializable(self, *args, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    @property
    def is_compileable(self) -> bool:
        return True


def _owner(model, key: str):
    try:
        return model.get_submodule(key.rpartition(".")[0])
    except AttributeError:
        return None


def _restore_scale_dtypes(model, entries) -> None:
    """transformers 4.x casts every float tensor it loads to the model dtype: put recorded scale /
    float-zero dtypes back (exact when the cast widened, e.g. bf16 -> fp32)."""
    if not entries:
        return
    for fqn, meta in entries.items():
        m = model.get_submodule(fqn)
        want = getattr(torch, meta.get("scale_dtype", ""), None)
        if isinstance(m, QuantLinear) and isinstance(want, torch.dtype) and m.scales.dtype != want:
            m.scales = m.scales.to(want)
            if m.zeros is not None and m.zeros.is_floating_point():
                m.zeros = m.zeros.to(want)


def _where(files: List[str]) -> str:
    return os.path.dirname(files[0]) if files else "?"


def register() -> None:
    """Register quant_method "lowbit" with transformers (idempotent)."""
    from transformers.quantizers.auto import (
        AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, register_quantization_config, register_quantizer,
    )

    for mapping, cls, fn in ((AUTO_QUANTIZATION_CONFIG_MAPPING, LowbitConfig, register_quantization_config),
                             (AUTO_QUANTIZER_MAPPING, LowbitHfQuantizer, register_quantizer)):
        current = mapping.get(QUANT_METHOD)
        if current is cls:
            continue
        if current is not None and current.__module__ != cls.__module__:
            raise ImportError(f"quant_method {QUANT_METHOD!r} is already registered with transformers by {current!r}")
        mapping.pop(QUANT_METHOD, None)
        fn(QUANT_METHOD)(cls)
