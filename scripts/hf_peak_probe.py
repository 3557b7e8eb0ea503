"""Which step sets the GPU peak of quantize-on-load (tests/test_hf.py::test_gpu_layer_by_layer_peak_memory's model):
the peak with the loader as shipped, with ``use_mma_words_`` skipped, and the allocated bytes before / after it.
    PYTHONPATH=src python scripts/hf_peak_probe.py"""
import tempfile

import torch
import transformers

import lowbit.hf.quantizer as hq
from lowbit import Int4WeightOnlyConfig
from lowbit.hf.measure import measure_quantize_on_load, write_random_checkpoint

cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=2048, intermediate_size=8192, num_hidden_layers=8,
                               num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False)
shipped = hq.use_mma_words_


def traced(model):
    print(f"  before use_mma_words_: allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB, "
          f"peak so far {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    out = shipped(model)
    print(f"  after: allocated {torch.cuda.memory_allocated() / 2**20:.0f} MiB, "
          f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return out


with tempfile.TemporaryDirectory() as d:
    write_random_checkpoint(cfg, d, device="cuda")
    for name, fn in (("shipped", traced), ("no use_mma_words_", lambda m: m)):
        hq.use_mma_words_ = fn
        torch.cuda.empty_cache()
        model, r = measure_quantize_on_load(d, Int4WeightOnlyConfig())
        print(name, {k: (round(v / 2**20) if isinstance(v, int) and v > 2**20 else v) for k, v in r.items()})
        del model
