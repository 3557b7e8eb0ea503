"""Quantized mixture-of-experts modules.

``QuantMoEExperts``: E experts' SwiGLU MLPs in stacked intx buffers (``lowbit.formats.intx_experts``):
``gate_up_*`` (E, ., 2I) with rows [0, I) = gate and [I, 2I) = up, ``down_*`` (E, ., H). forward(x (T, H),
topk_ids (T, k), topk_weights (T, k)) -> (T, H) = sum_j w_j * down_e(silu(gate_e x) * up_e x), e = ids[t, j]:
align (device sort), gate_up grouped GEMM gathering token rows (expert order out), SiLU * mul, down
grouped GEMM with the routing weights in the epilogue scattered to pair order, sum over k. No host sync.
The call signature is that of transformers 5.x ``MixtralExperts`` / ``Qwen2MoeExperts``.

``QuantMoE``: a sparse MoE block: the router (kept as is, bf16), ``QuantMoEExperts`` and, for
Qwen2-MoE, the shared expert and its sigmoid gate. ``QuantMoE.from_block`` converts a transformers
Mixtral / Qwen2-MoE sparse MoE block (5.x fused 3-D expert parameters, or 4.x ModuleList experts).
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnsupportedError
from .formats.intx import IntxFormat, mma_words_apply
from .formats.intx_experts import IntxExpertWeights, quantize_experts
from .nn import MmaWordsBuffer, QuantLinear
from .ops_moe import grouped_gemm_wxa16_auto, moe_align
from .tp import shard_weight

# names of the per-expert linear layers of 4.x ModuleList experts: (gate, up, down)
LEGACY_EXPERT_NAMES = (("w1", "w3", "w2"), ("gate_proj", "up_proj", "down_proj"))


def _is_silu(act: nn.Module) -> bool:
    return isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLUActivation", "SiLU")


class QuantMoEExperts(MmaWordsBuffer, nn.Module):
    def __init__(self, gate_up: IntxExpertWeights, down: IntxExpertWeights) -> None:
        super().__init__()
        if gate_up.num_experts != down.num_experts or gate_up.out_features != 2 * down.in_features \
                or down.out_features != gate_up.in_features:
            raise UnsupportedError(
                f"gate_up (E={gate_up.num_experts}, N={gate_up.out_features}, K={gate_up.in_features}) and down "
                f"(E={down.num_experts}, N={down.out_features}, K={down.in_features}) do not form SwiGLU experts")
        self.num_experts = gate_up.num_experts
        self.hidden_dim = gate_up.in_features
        self.intermediate_dim = down.in_features
        self.bits, self.group_size = gate_up.bits, gate_up.group_size
        self.down_bits, self.down_group_size = down.bits, down.group_size
        self.gate_up_k_order = self.down_k_order = 0  # word order of each qweight buffer (lowbit.nn)
        for name, w in (("gate_up", gate_up), ("down", down)):
            self.register_buffer(f"{name}_qweight", w.qweight)
            self.register_buffer(f"{name}_scales", w.scales)
            self.register_buffer(f"{name}_zeros", w.zeros)
        self.use_mma_words()

    def mma_word_buffers(self) -> dict:
        """Integer-zero experts of one bit-plane (1, 2, 4, 8 bits) run in the mma word order (as ``QuantLinear``;
        the grouped kernels read several planes in the natural order only)."""
        return {f"{name}_qweight": self.word_bits(name) in (1, 2, 4, 8)
                and mma_words_apply(self.word_bits(name), getattr(self, f"{name}_zeros"), kp, gs or kp)
                for name, kp, gs in (("gate_up", self._kp(self.gate_up_qweight, self.bits), self.group_size),
                                     ("down", self._kp(self.down_qweight, self.down_bits), self.down_group_size))}

    def word_bits(self, buffer: str) -> int:
        return self.down_bits if buffer.startswith("down") else self.bits

    @staticmethod
    def _kp(qweight: torch.Tensor, bits: int) -> int:
        return qweight.shape[-2] * 32 // bits

    @classmethod
    def from_dense(cls, gate_up: torch.Tensor, down: torch.Tensor, fmt: IntxFormat) -> "QuantMoEExperts":
        """Dense gate_up (E, 2I, H) and down (E, H, I) weights (transformers 5.x layout)."""
        return cls(quantize_experts(fmt, gate_up.detach()), quantize_experts(fmt, down.detach()))

    @property
    def gate_up(self) -> IntxExpertWeights:
        return IntxExpertWeights(self.natural("gate_up_qweight"), self.gate_up_scales, self.gate_up_zeros, self.bits,
                                 self.group_size, self.hidden_dim)

    @property
    def down(self) -> IntxExpertWeights:
        return IntxExpertWeights(self.natural("down_qweight"), self.down_scales, self.down_zeros, self.down_bits,
                                 self.down_group_size, self.intermediate_dim)

    def shard(self, rank: int, world_size: int) -> "QuantMoEExperts":
        """Rank's tensor-parallel shard of every expert: gate and up column-parallel (intermediate I split),
        down row-parallel; the output is a partial sum to all-reduce (``lowbit.tp.all_reduce_sum``)."""
        i = self.intermediate_dim
        return QuantMoEExperts(shard_weight(self.gate_up, rank, world_size, "column", (i, i)),
                               shard_weight(self.down, rank, world_size, "row"))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
        t, k = top_k_index.shape
        sorted_ids, offsets = moe_align(top_k_index, self.num_experts)
        h = grouped_gemm_wxa16_auto(hidden_states, self.gate_up_qweight, self.gate_up_scales, self.gate_up_zeros,
                                    None, self.bits, self.group_size or 0, self.hidden_dim, offsets, sorted_ids, k,
                                    True, False, None, self.gate_up_k_order)  # (T*k, 2I), expert order
        a = F.silu(h[:, : self.intermediate_dim]) * h[:, self.intermediate_dim:]
        rw = None if top_k_weights is None else top_k_weights.reshape(-1)
        y = grouped_gemm_wxa16_auto(a, self.down_qweight, self.down_scales, self.down_zeros, None, self.down_bits,
                                    self.down_group_size or 0, self.intermediate_dim, offsets, sorted_ids, k, False,
                                    True, rw, self.down_k_order)  # (T*k, H), pair order, routing weights applied
        return y.view(t, k, y.shape[-1]).sum(dim=1)

    def extra_repr(self) -> str:
        gs = "per-channel" if self.group_size is None else self.group_size
        return (f"num_experts={self.num_experts}, hidden={self.hidden_dim}, intermediate={self.intermediate_dim}, "
                f"bits={self.bits}, group_size={gs}")


class TopKRouter(nn.Module):
    """softmax(x W^T) in fp32, top-k, optional renormalisation; weight kept in the model dtype (bf16).
    Returns (logits, top-k weights, top-k ids) like transformers 5.x routers."""

    def __init__(self, weight: torch.Tensor, top_k: int, norm_topk_prob: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits.float(), dim=-1)
        w, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(dim=-1, keepdim=True)
        return logits, w.to(x.dtype), ids


class QuantMoE(nn.Module):
    """Sparse MoE block: router -> quantized experts (+ optional gated shared expert)."""

    def __init__(self, gate: nn.Module, experts: QuantMoEExperts, shared_expert: Optional[nn.Module] = None,
                 shared_expert_gate: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.gate = gate
        self.experts = experts
        self.shared_expert = shared_expert
        self.shared_expert_gate = shared_expert_gate

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        _, weights, ids = self.gate(x)
        y = self.experts(x, ids, weights)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            y = y + shared
        return y.reshape(shape)

    @classmethod
    def from_block(cls, block: nn.Module, fmt: IntxFormat) -> "QuantMoE":
        """Convert a transformers Mixtral / Qwen2-MoE sparse MoE block: experts quantized with ``fmt``,
        the router kept (bf16), the shared expert's linear layers quantized, its 1-output gate kept."""
        gate_up, down = expert_weights(block.experts)
        gate = block.gate
        if isinstance(gate, nn.Linear):  # 4.x: the router is a Linear and the block does softmax/top-k
            top_k = getattr(block, "top_k", None) or getattr(block, "num_experts_per_tok")
            gate = TopKRouter(gate.weight, top_k, getattr(block, "norm_topk_prob", True))
        shared = getattr(block, "shared_expert", None)
        if shared is not None:
            shared = copy.deepcopy(shared)  # the source block stays usable
            for name, child in list(shared.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(shared, name, QuantLinear.from_linear(child, fmt))
        return cls(gate, QuantMoEExperts.from_dense(gate_up, down, fmt), shared,
                   getattr(block, "shared_expert_gate", None))


def _layout(experts: nn.Module):
    """'fused' (5.x 3-D parameters), the (gate, up, down) names of 4.x ModuleList experts, or None."""
    gu, dn = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if isinstance(gu, torch.Tensor) and isinstance(dn, torch.Tensor) and gu.dim() == 3 and dn.dim() == 3:
        return "fused"
    if isinstance(experts, nn.ModuleList) and len(experts):
        for names in LEGACY_EXPERT_NAMES:
            if all(isinstance(getattr(experts[0], n, None), nn.Linear) for n in names):
                return names
    return None


def expert_weights(experts: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """Dense (gate_up (E, 2I, H), down (E, H, I)) of transformers experts: 5.x fused 3-D parameters
    (``gate_up_proj``, ``down_proj``) or 4.x ModuleList of MLPs (w1/w3/w2 or gate/up/down_proj)."""
    layout = _layout(experts)
    if layout is None:
        raise UnsupportedError(f"unrecognised experts module {type(experts).__name__}: expected fused 3-D "
                               "gate_up_proj / down_proj parameters or a ModuleList of w1/w3/w2 (gate/up/down_proj) MLPs")
    act = getattr(experts, "act_fn", None) if layout == "fused" else getattr(experts[0], "act_fn", None)
    if act is not None and not _is_silu(act):
        raise UnsupportedError(f"QuantMoE implements SiLU * mul experts, got activation {type(act).__name__}")
    if layout == "fused":
        for name in ("gate_up_proj_bias", "down_proj_bias"):
            if getattr(experts, name, None) is not None:
                raise UnsupportedError(f"experts with {name} are not supported")
        return experts.gate_up_proj.detach(), experts.down_proj.detach()
    g, u, d = layout
    gate_up = torch.stack([torch.cat([getattr(m, g).weight, getattr(m, u).weight]) for m in experts])
    return gate_up.detach(), torch.stack([getattr(m, d).weight for m in experts]).detach()


def is_moe_block(module: nn.Module) -> bool:
    """A transformers-style sparse MoE block QuantMoE can replace (router ``gate`` + recognised ``experts``)."""
    if isinstance(module, QuantMoE) or not hasattr(module, "gate") or not isinstance(getattr(module, "experts", None),
                                                                                      nn.Module):
        return False
    return _layout(module.experts) is not None
