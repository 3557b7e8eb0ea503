"""Quantize on load, measured: a random-weight checkpoint built from a config, then
``from_pretrained(..., quantization_config=LowbitConfig(...), device_map="cuda")`` with peak GPU
memory (``torch.cuda.max_memory_allocated``) and load time.

    python -m lowbit.hf.measure --model llama3-8b --dir /tmp/llama8b --out result.json [--layers 8]

The checkpoint is written one shard at a time (random bf16 tensors made on the GPU, norms = 1), so
host memory stays ~one shard; a model larger than the GPU can be written and then quantized on load.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional

import torch

from ..api import Int4WeightOnlyConfig, IntxWeightOnlyConfig
from ..nn import QuantLinear
from .config import LowbitConfig

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
                 max_position_embeddings=8192, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
MODELS = {"llama3-8b": LLAMA3_8B}
GIB = 2**30


def write_random_checkpoint(config, path: str, dtype: torch.dtype = torch.bfloat16, shard_bytes: int = 2 * GIB,
                            device: Optional[str] = None, seed: int = 0) -> Dict:
    """Save a random-weight model of ``config`` (a transformers config) to ``path`` as safetensors
    shards + index + config.json, never holding more than one shard on the host. Weights N(0, 0.02²),
    1-D ``*norm*`` weights 1, other 1-D tensors 0. Returns {"bytes", "tensors", "shards", "seconds"}."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    specs = [(k, tuple(v.shape)) for k, v in skeleton.state_dict().items()]
    del skeleton
    os.makedirs(path, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    shards, part, size, total = [], {}, 0, 0

    def flush():
        nonlocal part, size
        if part:
            shards.append(part)
            save_file(part, os.path.join(path, f"part-{len(shards):05d}.safetensors"), metadata={"format": "pt"})
            part, size = {}, 0

    for name, shape in specs:
        if len(shape) == 1:
            t = torch.ones(shape, dtype=dtype) if "norm" in name else torch.zeros(shape, dtype=dtype)
        else:
            t = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02).to(dtype).cpu()
        nbytes = t.numel() * t.element_size()
        if part and size + nbytes > shard_bytes:
            flush()
        part[name], size, total = t, size + nbytes, total + nbytes
    flush()
    n = len(shards)
    weight_map = {}
    for i, names in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        os.replace(os.path.join(path, f"part-{i + 1:05d}.safetensors"), os.path.join(path, final))
        weight_map.update({k: final for k in names})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    import transformers

    setattr(config, "dtype" if transformers.__version__ >= "4.56" else "torch_dtype", dtype)
    config.save_pretrained(path)
    return {"bytes": total, "tensors": len(specs), "shards": n, "seconds": time.perf_counter() - t0}


def measure_quantize_on_load(path: str, quant_config=None, device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                             **from_pretrained_kwargs):
    """Load ``path`` quantizing on load onto ``device``; returns (model, report). Report bytes:
    ``peak`` (max_memory_allocated during from_pretrained, above what was allocated before),
    ``resident`` (after loading), ``dense_checkpoint`` (the checkpoint's tensors), ``largest_layer_dense``
    (the biggest quantized layer's weight in ``dtype``), ``quantized_linears`` (their buffers)."""
    from transformers import AutoModelForCausalLM

    quant_config = quant_config or Int4WeightOnlyConfig()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=LowbitConfig(quant_config), dtype=dtype,
                                                 device_map=device, **from_pretrained_kwargs)
    if cuda:
        torch.cuda.synchronize()
    load_s = time.perf_counter() - t0
    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]
    elem = torch.empty(0, dtype=dtype).element_size()
    report = {
        "load_s": load_s,
        "quantized_layers": len(quant),
        "quantized_linears": sum(b.numel() * b.element_size() for m in quant for b in m.buffers()),
        "largest_layer_dense": max((m.in_features * m.out_features * elem for m in quant), default=0),
        "dense_checkpoint": _checkpoint_bytes(path),
    }
    if cuda:
        report["peak"] = torch.cuda.max_memory_allocated() - base
        report["resident"] = torch.cuda.memory_allocated() - base
    return model, report


def _checkpoint_bytes(path: str) -> int:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            return int(json.load(f)["metadata"]["total_size"])
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".safetensors"))


def generate(model, new_tokens: int = 8, prompt_len: int = 16, seed: int = 0) -> Dict:
    """Greedy generation from a random prompt; returns token ids and the wall time (first call: JIT)."""
    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed)).to(dev)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"tokens": out[0, prompt_len:].tolist(), "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama3-8b", help=f"{', '.join(MODELS)} or a config.json path")
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    p.add_argument("--dir", default="/tmp/lowbit_hf_model", help="where the random checkpoint is written")
    p.add_argument("--reuse", action="store_true", help="reuse an existing checkpoint in --dir")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--tokens", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--gpu-cap-gib", type=float, default=None,
                   help="cap this process's GPU memory (torch.cuda.set_per_process_memory_fraction), e.g. below "
                        "the bf16 model size, to show the model is quantized without ever fitting in bf16")
    p.add_argument("--out", default=None, help="write the JSON report here")
    a = p.parse_args(argv)
    import transformers

    cfg_kwargs = MODELS.get(a.model)
    if cfg_kwargs is None:
        with open(a.model) as f:
            cfg_kwargs = json.load(f)
    cfg_kwargs = dict(cfg_kwargs, **({"num_hidden_layers": a.layers} if a.layers else {}))
    config = transformers.LlamaConfig(**cfg_kwargs) if "model_type" not in cfg_kwargs else \
        transformers.AutoConfig.for_model(**cfg_kwargs)
    report = {"model": a.model, "num_hidden_layers": config.num_hidden_layers, "bits": a.bits,
              "group_size": a.group_size, "transformers": transformers.__version__, "torch": torch.__version__}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name()
    if not (a.reuse and os.path.isfile(os.path.join(a.dir, "model.safetensors.index.json"))):
        report["write"] = write_random_checkpoint(config, a.dir, device=a.device)
    if a.gpu_cap_gib:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.gpu_cap_gib * GIB / total))
        report["gpu_cap_gib"] = a.gpu_cap_gib
    qc = IntxWeightOnlyConfig(bits=a.bits, group_size=a.group_size) if a.bits != 4 else Int4WeightOnlyConfig(group_size=a.group_size)
    model, load = measure_quantize_on_load(a.dir, qc, device=a.device)
    report["load"] = load
    report["generate"] = generate(model, a.tokens)
    report["generate_again"] = generate(model, a.tokens)
    gib = {k: round(v / GIB, 3) for k, v in load.items() if k in ("peak", "resident", "dense_checkpoint",
                                                                    "largest_layer_dense", "quantized_linears")}
    report["gib"] = gib
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
