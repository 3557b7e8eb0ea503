"""A synthetic Llama-shaped GPTQ-4bit and AWQ-4bit checkpoint, converted and run through the kernels.

Every projection of one Llama-3-8B decoder layer is packed by a real packer (AutoRound's GPTQ v1
packer, AutoAWQ's GEMM packer), converted, run through ``QuantLinear`` / ``PermutedQuantLinear`` and
compared with the packer project's own dequantization (fp32) times x. The full shapes run on the
GPU only; the CPU runs the same code at shapes scaled down 32x (Triton interpreter).
"""
import warnings

import pytest
import torch

from lowbit.convert import awq_to_intx, gptq_to_intx, quant_linear

from helpers import DEVICE, assert_close_matmul, gpu_only

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gptq_v1 = pytest.importorskip("auto_round_extension.torch.qlinear_torch_zp", reason="needs auto-round")
    awq_gemm = pytest.importorskip("awq.modules.linear.gemm", reason="needs autoawq")
    awq_packing = pytest.importorskip("awq.utils.packing_utils", reason="needs autoawq")

# Llama-3-8B decoder layer: name -> (N, K)
LLAMA3_8B = {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
             "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)}


def _scales_zeros(w, group_size):
    n, k = w.shape
    v = w.view(n, k // group_size, group_size)
    mn, mx = v.amin(-1), v.amax(-1)
    s = ((mx - mn) / 15).clamp_min(1e-4).half().float()
    return s, torch.round(-mn / s).clamp(0, 15)  # (N, G)


def gptq_oracle(layer, group_size):
    """The packer module's own fp32 dequantization (its forward on an identity), (N, K).

    Its forward slices the scales' columns by in_features (AutoGPTQ's g_idx loop), so it is only
    right for N <= K: run it on column blocks of at most K channels."""
    k, n = layer.infeatures, layer.outfeatures
    step = min(n, k // 32 * 32)
    blocks = []
    for c0 in range(0, n, step):
        c1 = min(n, c0 + step)
        sub = gptq_v1.QuantLinear(4, group_size, k, c1 - c0, False, g_idx=True)
        sub.qweight, sub.qzeros = layer.qweight[:, c0:c1], layer.qzeros[:, c0 // 8 : c1 // 8]
        sub.scales, sub.g_idx = layer.scales[:, c0:c1].float(), layer.g_idx
        with torch.no_grad():
            blocks.append(sub(torch.eye(k)).t())
    return torch.cat(blocks)


def gptq_layer(n, k, group_size, act_order, seed, exact=True):
    """(checkpoint tensors, oracle dense weight (N, K) fp32 or None) from the real GPTQ v1 packer."""
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02
    s, z = _scales_zeros(lin.weight.data, group_size)
    layer = gptq_v1.QuantLinear(4, group_size, k, n, False, g_idx=True)
    layer.pack(lin, s, z)
    if act_order:  # desc_act: column order[i] belongs to group i // group_size
        order = torch.randperm(k, generator=torch.Generator().manual_seed(seed + 1))
        layer.g_idx[order] = (torch.arange(k) // group_size).to(torch.int32)
    tensors = {"qweight": layer.qweight, "qzeros": layer.qzeros, "scales": layer.scales, "g_idx": layer.g_idx}
    return tensors, gptq_oracle(layer, group_size) if exact else None


def awq_layer(n, k, group_size, seed):
    lin = torch.nn.Linear(k, n, bias=False)
    lin.weight.data = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.02
    s, z = _scales_zeros(lin.weight.data, group_size)
    layer = awq_gemm.WQLinear_GEMM.from_linear(lin, 4, group_size, scales=s.t().contiguous(), zeros=z.t().contiguous())
    # the packer may leave its buffers on the GPU when there is one: compare on the CPU
    tensors = {"qweight": layer.qweight.cpu(), "qzeros": layer.qzeros.cpu(), "scales": layer.scales.cpu()}
    dense = awq_packing.dequantize_gemm(tensors["qweight"], tensors["qzeros"], tensors["scales"].float(), 4,
                                        group_size).t()
    return tensors, dense


def run_layer(fmt, n, k, ms, seed, device, exact=True):
    """Convert one packed layer; check it against the packer's dequantization (``exact``: the GPTQ
    oracle costs an N x K x K matmul, too slow on the CPU at full shapes, where the small-shape
    tests have already shown the conversion exact), then run the kernels against x @ W^T in fp32."""
    gs = 128
    if fmt == "awq":
        t, oracle = awq_layer(n, k, gs, seed)
        weight, perm = awq_to_intx(t["qweight"], t["qzeros"], t["scales"], bits=4, group_size=gs), None
    else:
        t, oracle = gptq_layer(n, k, gs, act_order=(fmt == "gptq-act-order"), seed=seed, exact=exact)
        weight, perm = gptq_to_intx(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits=4, group_size=gs,
                                    desc_act=fmt == "gptq-act-order")
    dense = weight.dequantize() if perm is None else weight.dequantize()[:, torch.argsort(perm)]
    if oracle is not None:
        assert torch.equal(dense, oracle)
    module = quant_linear(weight.to(device), None if perm is None else perm.to(device))
    dense = dense.to(device)
    for m in ms:
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).half().to(device)
        assert_close_matmul(module(x), x.float() @ dense.t(), x, dense, torch.float16)


FORMATS = ["gptq", "gptq-act-order", "awq"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_llama_layer_scaled_down(fmt, monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    for i, (name, (n, k)) in enumerate(LLAMA3_8B.items()):
        if name in ("q_proj", "gate_proj", "down_proj"):
            run_layer(fmt, n // 32, max(k // 32 // 128 * 128, 128), [1, 5], seed=i, device=DEVICE)


@gpu_only
@pytest.mark.parametrize("fmt", FORMATS)
def test_llama_layer_full_shapes_on_gpu(fmt):
    for i, (n, k) in enumerate(LLAMA3_8B.values()):
        run_layer(fmt, n, k, [1, 16, 128, 1024], seed=i, device="cuda", exact=False)
