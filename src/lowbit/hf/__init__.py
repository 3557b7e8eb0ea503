"""Hugging Face transformers integration (``pip install 'lowbit[hf]'``); importing it registers
quant_method "lowbit" with transformers::

    import lowbit.hf
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=lowbit.hf.LowbitConfig(Int4WeightOnlyConfig()))
    model.save_pretrained(out)          # AutoModelForCausalLM.from_pretrained(out) reloads it as lowbit

GPTQ / AWQ checkpoints: ``lowbit.hf.load_gptq_awq(path)``. Peak-memory measurement of quantize on
load: ``lowbit.hf.measure``. See docs/hf.md.
"""
from ._compat import require_transformers

require_transformers()

from .config import LowbitConfig  # noqa: E402
from .foreign import load_gptq_awq  # noqa: E402
from .modules import PackedStage, quantize_weight  # noqa: E402
from .quantizer import LowbitHfQuantizer, register  # noqa: E402

register()

__all__ = ["LowbitConfig", "LowbitHfQuantizer", "load_gptq_awq", "quantize_weight", "PackedStage", "register"]
