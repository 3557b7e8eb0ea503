"""Models for end-to-end benchmarks: a Llama-3 style decoder built from a config (``lowbit bench e2e``)."""
from .llama import (
    PRESETS, Llama, LlamaConfig, build_model, from_hf_config, init_weights, load_config, load_hf_state_dict,
)

__all__ = ["PRESETS", "Llama", "LlamaConfig", "build_model", "from_hf_config", "init_weights", "load_config",
           "load_hf_state_dict"]
