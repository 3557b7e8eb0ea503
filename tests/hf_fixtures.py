"""Tiny transformers models built from configs, and GPTQ / AWQ checkpoint directories packed by the
real packers (AutoRound's port of AutoGPTQ's v1 packer, AutoAWQ's WQLinear_GEMM), for the lowbit.hf tests."""
import json
import os
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs transformers (the [hf] extra)")

VOCAB = 96


def tiny_llama(seed=0, dtype=torch.float32, **kw):
    """2 layers, hidden 64, GQA (4 heads, 2 KV heads): every linear has K, N multiples of 32."""
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False, **kw)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_mixtral(seed=0, dtype=torch.float32):
    cfg = transformers.MixtralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.MixtralForCausalLM(cfg).to(dtype).eval()


def tokens(n=9, seed=1):
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


def logits(model, x):
    with torch.no_grad():
        return model(x).logits.float()


def packed_linears(model):
    return [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, torch.nn.Linear) and fqn != "lm_head"]


def _min_max(w, group_size, bits):
    """Asymmetric min-max scales (rounded to fp16) and zeros, (G, N) as both packers take them."""
    n, k = w.shape
    v = w.float().view(n, k // group_size, group_size)
    mn, mx = v.amin(-1).clamp(max=0), v.amax(-1).clamp(min=0)
    s = ((mx - mn) / (2**bits - 1)).clamp_min(1e-6).half().float()
    z = torch.round(-mn / s).clamp(0, 2**bits - 1)
    return s.t().contiguous(), z.t().contiguous()


def _act_order_g_idx(k, group_size, seed):
    order = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    return g_idx


def write_checkpoint(model, path, tensors, quantization_config):
    """config.json (with ``quantization_config``) + model.safetensors holding ``tensors``."""
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    cfg = model.config.to_dict()
    cfg["quantization_config"] = quantization_config
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(path, "model.safetensors"),
              metadata={"format": "pt"})


def gptq_checkpoint(model, path, bits=4, group_size=32, act_order_layer=None):
    """Pack every linear but lm_head with the real GPTQ v1 packer; returns the oracle: ``model`` with
    each packed weight replaced by the packer module's own (g_idx-aware) dequantization."""
    qlinear = pytest.importorskip("auto_round_extension.torch.qlinear_torch_zp", reason="needs auto-round (test extra)")
    tensors = {k: v for k, v in model.state_dict().items()}
    for fqn, lin in packed_linears(model):
        w = lin.weight.detach().float()
        n, k = w.shape
        s, z = _min_max(w, group_size, bits)
        dense = torch.nn.Linear(k, n, bias=False)
        dense.weight.data = w.clone()
        layer = qlinear.QuantLinear(bits, group_size, k, n, False, g_idx=True)
        layer.pack(dense, s.t(), z.t())  # this packer takes (N, G)
        if fqn == act_order_layer:  # our act-order g_idx on the real packed tensors (the packer ignores g_idx)
            layer.g_idx = _act_order_g_idx(k, group_size, seed=3)
        packed = {name: getattr(layer, name) for name in ("qweight", "qzeros", "scales", "g_idx")}
        layer.scales = packed["scales"].float()
        if fqn != act_order_layer:
            # its g_idx-aware forward slices scales by K (wrong when N > K): use its group-order formula
            del layer.g_idx
        with torch.no_grad():
            lin.weight.data = layer(torch.eye(k)).t().to(lin.weight.dtype)
        del tensors[f"{fqn}.weight"]
        tensors.update({f"{fqn}.{name}": t for name, t in packed.items()})
    qc = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": act_order_layer is not None,
          "sym": False, "checkpoint_format": "gptq", "damp_percent": 0.1, "true_sequential": True}
    write_checkpoint(model, path, tensors, qc)
    return model


def awq_checkpoint(model, path, group_size=32):
    """Pack every linear but lm_head with AutoAWQ's WQLinear_GEMM; the oracle uses its dequantize_gemm."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gemm = pytest.importorskip("awq.modules.linear.gemm", reason="needs autoawq (test extra)")
        packing = pytest.importorskip("awq.utils.packing_utils", reason="needs autoawq (test extra)")
    tensors = {k: v for k, v in model.state_dict().items()}
    for fqn, lin in packed_linears(model):
        w = lin.weight.detach().float()
        n, k = w.shape
        s, z = _min_max(w, group_size, 4)
        dense = torch.nn.Linear(k, n, bias=False)
        dense.weight.data = w.clone()
        layer = gemm.WQLinear_GEMM.from_linear(dense, 4, group_size, scales=s, zeros=z)
        q = {name: getattr(layer, name).cpu() for name in ("qweight", "qzeros", "scales")}
        lin.weight.data = packing.dequantize_gemm(q["qweight"], q["qzeros"], q["scales"].float(), 4, group_size).t().to(lin.weight.dtype)
        del tensors[f"{fqn}.weight"]
        tensors.update({f"{fqn}.{name}": t for name, t in q.items()})
    qc = {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True, "version": "gemm",
          "modules_to_not_convert": None}
    write_checkpoint(model, path, tensors, qc)
    return model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def within(a, b, tol):
    """Elementwise |a - b| <= tol * (|b| + rms(b)): a dense-vs-dequantized check, not a quantization bound."""
    scale = b.pow(2).mean().sqrt()
    return bool(((a - b).abs() <= tol * (b.abs() + scale)).all())
