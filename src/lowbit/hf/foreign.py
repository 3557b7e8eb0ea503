"""Load a GPTQ or AWQ checkpoint directory onto lowbit kernels (repacking, no requantization)."""
from __future__ import annotations

from ..errors import UnsupportedError
from .config import LowbitConfig


def load_gptq_awq(path: str, model_class=None, **kwargs):
    """``from_pretrained`` of a GPTQ / AWQ checkpoint (config.json ``quantization_config`` with
    quant_method "gptq" or "awq"; ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx`` tensors in
    safetensors) with every packed layer converted to a lowbit QuantLinear.

    ``model_class`` defaults to ``AutoModelForCausalLM``; ``kwargs`` go to ``from_pretrained``
    (``device_map="cuda"``, ``dtype=torch.float16``, ...). The returned model saves with
    ``save_pretrained`` as a lowbit checkpoint (reload it with plain ``from_pretrained``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if "quantization_config" in kwargs:
        raise TypeError("load_gptq_awq takes the quantization settings from the checkpoint; drop quantization_config")
    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path, **_config_kwargs(kwargs))
    source = getattr(config, "quantization_config", None)
    if source is None:
        raise UnsupportedError(f"{path}: config.json has no quantization_config (not a GPTQ/AWQ checkpoint)")
    config.quantization_config = LowbitConfig.from_foreign(source).to_dict()
    return (model_class or AutoModelForCausalLM).from_pretrained(path, config=config, **kwargs)


def _config_kwargs(kwargs):
    return {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only", "trust_remote_code") if k in kwargs}
