"""Which transformers is installed, and what its quantizer extension point offers.

transformers 4.45-4.57 loads weights through ``create_quantized_param`` (one call per checkpoint
tensor); 5.x through ``ConversionOps`` returned by ``get_quantize_ops``. ``lowbit.hf`` implements
both; this module finds out which one applies and refuses clearly when neither does.
"""
from __future__ import annotations

import re

MIN_TRANSFORMERS = (4, 45)


def _version_tuple(v: str):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def require_transformers():
    """Import transformers and its quantizer registry; ImportError naming what is missing."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError("lowbit.hf needs transformers >= 4.45: pip install 'lowbit[hf]'") from e
    if _version_tuple(transformers.__version__) < MIN_TRANSFORMERS:
        raise ImportError(f"lowbit.hf needs transformers >= 4.45, found {transformers.__version__}")
    try:
        from transformers.quantizers.auto import (  # noqa: F401
            AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING, register_quantization_config,
            register_quantizer,
        )
        from transformers.quantizers.base import HfQuantizer  # noqa: F401
        from transformers.utils.quantization_config import QuantizationConfigMixin  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"transformers {transformers.__version__} lacks the quantizer extension point lowbit.hf uses "
            f"(transformers.quantizers.auto.register_quantizer / register_quantization_config): {e}"
        ) from e
    return transformers


def uses_conversion_ops() -> bool:
    """True on transformers 5.x (weights pass through ``get_quantize_ops``), False on 4.x."""
    from transformers.quantizers.base import HfQuantizer

    return hasattr(HfQuantizer, "get_quantize_ops")
