"""QuantMoE / QuantMoEExperts and quantize_ on transformers sparse MoE blocks (small configs).

Exactness: the quantized block must equal the *same* transformers block whose expert weights are
replaced by their dequantized values (kernel error only); against the original bf16/fp16 block the
outputs are only close (quantization error, checked as SQNR).
"""
import copy
import math

import pytest
import torch
from torch import nn

import lowbit
from lowbit import IntxFormat, QuantLinear
from lowbit.errors import UnsupportedError
from lowbit.nn_moe import QuantMoE, QuantMoEExperts, TopKRouter, expert_weights, is_moe_block

from helpers import DEVICE

transformers = pytest.importorskip("transformers")
DTYPE = torch.float16  # the interpreter's bf16 dot is wrong; bf16 runs in the GPU test below


def _init(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 2 and p.shape[0] <= 8 else 0.05))
    return module


def mixtral_block(dtype=DTYPE, experts=4, hidden=64, inter=96):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=2)
    return _init(MixtralSparseMoeBlock(cfg)).to(DEVICE, dtype).eval()


def qwen_block(dtype=DTYPE):
    from transformers import Qwen2MoeConfig
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock

    cfg = Qwen2MoeConfig(hidden_size=64, moe_intermediate_size=32, shared_expert_intermediate_size=80, num_experts=6,
                         num_experts_per_tok=3, norm_topk_prob=False)
    return _init(Qwen2MoeSparseMoeBlock(cfg), seed=1).to(DEVICE, dtype).eval()


def _dequantized_copy(block, qmoe: QuantMoE):
    """The transformers block with every quantized weight replaced by its dequantized value."""
    ref = copy.deepcopy(block)
    with torch.no_grad():
        ref.experts.gate_up_proj.copy_(qmoe.experts.gate_up.dequantize())
        ref.experts.down_proj.copy_(qmoe.experts.down.dequantize())
        if getattr(ref, "shared_expert", None) is not None:
            for name, child in ref.shared_expert.named_children():
                q = getattr(qmoe.shared_expert, name)
                if isinstance(q, QuantLinear):
                    child.weight.copy_(q.weight.dequantize())
    return ref


def _assert_close(y, ref, dtype):
    """Two fp16/bf16 GEMMs in a row plus the fp16 intermediate: a few eps of the output scale."""
    eps = torch.finfo(dtype).eps
    scale = ref.float().abs().max()
    err = (y.float() - ref.float()).abs().max()
    assert err <= 8 * eps * scale, f"max err {err:.3g} vs scale {scale:.3g}"


def _sqnr_db(y, ref):
    return float(10 * torch.log10(ref.float().pow(2).sum() / (y.float() - ref.float()).pow(2).sum()))


class _Wrap(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.mlp = block
        self.proj = nn.Linear(64, 64, bias=False)


@pytest.mark.parametrize("make", [mixtral_block, qwen_block], ids=["mixtral", "qwen2-moe"])
def test_quantize_replaces_the_block_and_matches(make):
    block = make()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2)).to(DEVICE, DTYPE)
    with torch.no_grad():
        y_orig = block(x)
    model = _Wrap(copy.deepcopy(block)).to(DEVICE, DTYPE)
    assert is_moe_block(model.mlp)
    lowbit.quantize_(model, lowbit.IntxWeightOnlyConfig(bits=4, group_size=32, scale_dtype="float16"))
    assert isinstance(model.mlp, QuantMoE) and isinstance(model.proj, QuantLinear)
    assert model.mlp.gate.weight.dtype == DTYPE  # router kept
    assert model.mlp.gate.weight.data_ptr() != 0 and type(model.mlp.gate).__name__.endswith("Router")
    if make is qwen_block:
        assert isinstance(model.mlp.shared_expert.gate_proj, QuantLinear)
        assert isinstance(model.mlp.shared_expert_gate, nn.Linear)  # the 1-output gate stays dense
    with torch.no_grad():
        y = model.mlp(x)
        y_deq = _dequantized_copy(block, model.mlp)(x)
    assert y.shape == x.shape and y.dtype == DTYPE
    _assert_close(y, y_deq, DTYPE)
    assert _sqnr_db(y, y_orig) > 14  # 4-bit, group 32: ~19 dB on these random weights


def test_experts_module_matches_transformers_experts_with_empty_experts():
    block = mixtral_block(experts=8)
    qe = QuantMoEExperts.from_dense(block.experts.gate_up_proj, block.experts.down_proj,
                                    IntxFormat(3, 32, True, "int", DTYPE))
    deq = copy.deepcopy(block.experts)
    with torch.no_grad():
        deq.gate_up_proj.copy_(qe.gate_up.dequantize())
        deq.down_proj.copy_(qe.down.dequantize())
        x = torch.randn(3, 64, generator=torch.Generator().manual_seed(3)).to(DEVICE, DTYPE)
        ids = torch.tensor([[1, 6], [6, 1], [1, 2]], device=DEVICE)  # 5 of 8 experts get no token
        w = torch.softmax(torch.randn(3, 2, generator=torch.Generator().manual_seed(4)), -1).to(DEVICE, DTYPE)
        _assert_close(qe(x, ids, w), deq(x, ids, w), DTYPE)


class LegacyMixtralBlock(nn.Module):
    """transformers 4.x layout: Linear router, ModuleList of w1/w3/w2 MLPs, softmax/top-k in the block."""

    def __init__(self, hidden=64, inter=48, experts=4, top_k=2):
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList()
        for _ in range(experts):
            m = nn.Module()
            m.w1, m.w3 = nn.Linear(hidden, inter, bias=False), nn.Linear(hidden, inter, bias=False)
            m.w2, m.act_fn = nn.Linear(inter, hidden, bias=False), nn.SiLU()
            self.experts.append(m)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        w, ids = torch.topk(torch.softmax(self.gate(x).float(), -1), self.top_k, -1)
        w = (w / w.sum(-1, keepdim=True)).to(x.dtype)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(self.top_k):
                e = self.experts[int(ids[t, j])]
                out[t] += w[t, j] * e.w2(e.act_fn(e.w1(x[t])) * e.w3(x[t]))
        return out.reshape(shape)


def test_legacy_modulelist_block():
    block = _init(LegacyMixtralBlock(), seed=5).to(DEVICE, DTYPE)
    q = QuantMoE.from_block(block, IntxFormat(8, 32, False, "int", DTYPE))
    assert isinstance(q.gate, TopKRouter)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(6)).to(DEVICE, DTYPE)
    with torch.no_grad():
        deq = copy.deepcopy(block)
        gu, dn = q.experts.gate_up.dequantize(), q.experts.down.dequantize()
        for e, m in enumerate(deq.experts):
            m.w1.weight.copy_(gu[e, :48])
            m.w3.weight.copy_(gu[e, 48:])
            m.w2.weight.copy_(dn[e])
        _assert_close(q(x), deq(x), DTYPE)


def test_unsupported_experts_are_typed():
    class Gelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_up_proj = nn.Parameter(torch.zeros(2, 8, 4))
            self.down_proj = nn.Parameter(torch.zeros(2, 4, 4))
            self.act_fn = nn.GELU()

    with pytest.raises(UnsupportedError, match="SiLU"):
        expert_weights(Gelu())
    with pytest.raises(UnsupportedError, match="unrecognised"):
        expert_weights(nn.Linear(2, 2))
    with pytest.raises(UnsupportedError, match="SwiGLU"):
        QuantMoEExperts.from_dense(torch.randn(2, 8, 32), torch.randn(2, 32, 8), IntxFormat(4, 32))


def test_state_dict_round_trip_and_compile():
    block = mixtral_block()
    q = QuantMoE.from_block(block, IntxFormat(4, 32, False, "int", DTYPE))
    names = set(q.state_dict())
    assert {"experts.gate_up_qweight", "experts.gate_up_scales", "experts.down_qweight", "gate.weight"} <= names
    q2 = QuantMoE.from_block(mixtral_block(), IntxFormat(4, 32, False, "int", DTYPE))
    q2.load_state_dict(q.state_dict())
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(7)).to(DEVICE, DTYPE)
    with torch.no_grad():
        torch.testing.assert_close(q2(x), q(x), rtol=0, atol=0)
        torch._dynamo.reset()
        compiled = torch.compile(q, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
        # inductor fuses the router's softmax / top-k differently from eager: a few eps of the output scale
        _assert_close(compiled(x), q(x), DTYPE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("tokens", [1, 7, 300])
def test_gpu_bf16_blocks(tokens):
    for make in (mixtral_block, qwen_block):
        block = make(torch.bfloat16)
        q = QuantMoE.from_block(block, IntxFormat(4, 32, False, "int", torch.bfloat16))
        x = torch.randn(1, tokens, 64, device="cuda", dtype=torch.bfloat16)  # transformers' blocks take (B, T, H)
        with torch.no_grad():
            _assert_close(q(x), _dequantized_copy(block, q)(x), torch.bfloat16)


def test_experts_runtime_word_order_and_natural_state_dict():
    """QuantMoEExperts runs 4-bit integer-zero experts in the mma word order; its state dict, gate_up /
    down properties and a reload keep the natural order."""
    from lowbit.formats.intx import to_mma_words
    from lowbit.formats.intx_experts import quantize_experts
    from lowbit.nn_moe import QuantMoEExperts

    fmt = lowbit.IntxFormat(4, 64)
    gu = quantize_experts(fmt, torch.randn(3, 64, 96) * 0.05)
    dn = quantize_experts(fmt, torch.randn(3, 96, 32) * 0.05)
    m = QuantMoEExperts(gu, dn)
    assert m.gate_up_k_order == m.down_k_order == 1
    assert torch.equal(m.gate_up_qweight, to_mma_words(gu.qweight)) and torch.equal(m.gate_up.qweight, gu.qweight)
    sd = m.state_dict()
    assert torch.equal(sd["gate_up_qweight"], gu.qweight) and torch.equal(sd["down_qweight"], dn.qweight)
    other = QuantMoEExperts(quantize_experts(fmt, torch.randn(3, 64, 96)), quantize_experts(fmt, torch.randn(3, 96, 32)))
    other.load_state_dict(sd)
    assert torch.equal(other.down_qweight, m.down_qweight) and torch.equal(sd["down_qweight"], dn.qweight)
