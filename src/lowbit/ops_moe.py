"""Mixture-of-experts ops: grouped low-bit GEMM over experts (torch.library custom ops + fakes).

``grouped_gemm_wxa16(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets,
sorted_ids, topk, gather, scatter, row_weights)`` -> Y (P, N), for stacked expert weights
(``lowbit.formats.intx_experts``: qweight (E, Kp*bits/32, N), scales/zeros (E, G, N), bias (E, N)):

* ``sorted_ids`` None: x (P, K) is sorted by expert, expert e owns rows [offsets[e], offsets[e+1])
  (offsets (E+1,) int, offsets[0] = 0); Y[p] = (x[p] @ W_e^T + b_e) * row_weights[p]. Rows past
  offsets[E] are not written (undefined).
* ``sorted_ids`` (P = T*topk,): the sorted position p holds the pair id ``sorted_ids[p]`` of a
  (T, topk) routing (token ``sorted_ids[p] // topk``). ``gather`` True: x (T, K) in token order,
  row p reads x[sorted_ids[p] // topk]; False: x (P, K) already in sorted order. Y row p
  (``scatter`` False: expert-sorted) or row ``sorted_ids[p]`` (``scatter`` True: pair order);
  ``row_weights`` (P,) are indexed by pair id (``topk_weights.flatten()``). An MoE MLP is
  gate_up with gather (sorted output), activation, down with scatter + routing weights.

``moe_align(topk_ids, num_experts)`` -> (sorted_ids, expert_offsets): sort + searchsorted on the
device, no host sync. ``grouped_gemm(x, weights, expert_offsets=..., | topk_ids=..., topk_weights=...)``
is the convenience entry: with ``topk_ids`` (T, k) it aligns, runs the grouped GEMM with the
routing weights in the epilogue, scatters to pair order and sums the k outputs of each token.
Expert ids must lie in [0, E). Nothing here reads routing results on the host: CUDA-graph safe.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .dispatch import KERNEL_DTYPES, eager_unless_compiling, forced_family, triton_available
from .errors import FormatError, InputError, UnsupportedError
from .formats.intx import IntxWeight, natural_words, padded_k, symmetric_zero
from .formats.intx_experts import IntxExpertWeights
from .kernels.grouped import dequant_grouped_mm, expected_active, grouped_mm_available, grouped_wxa16
from .ops import PER_CHANNEL_GROUP_LEN, check_k_order

log = logging.getLogger("lowbit")
DEQUANT_GROUPED_MIN_ROWS = 256  # rows per active expert from which dequantize + torch._grouped_mm is used


def _validate_grouped(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets, sorted_ids,
                      topk, gather, row_weights, k_order=0) -> None:
    if not 1 <= bits <= 8:
        raise FormatError(f"bits must be in 1..8, got {bits}")
    if group_size < 0 or group_size % 32:
        raise FormatError(f"group_size must be 0 (per-channel) or a positive multiple of 32, got {group_size}")
    check_k_order(k_order, bits, padded_k(in_features, group_size or None),
                  group_size or padded_k(in_features, group_size or None))
    if k_order and bits not in (1, 2, 4, 8):
        raise FormatError(f"grouped_gemm: the mma word order (k_order=1) takes codes of one bit-plane (1, 2, 4 or 8 "
                          f"bits), got bits={bits}")
    if not x.is_floating_point() or x.dim() != 2 or x.shape[1] != in_features:
        raise InputError(f"x must be a 2-D float tensor (rows, in_features={in_features}), got {x.dtype} "
                         f"{tuple(x.shape)}")
    kp = padded_k(in_features, group_size or None)
    if qweight.dtype != torch.int32 or qweight.dim() != 3 or qweight.shape[1] != kp * bits // 32:
        raise FormatError(f"qweight must be int32 of shape (E, {kp * bits // 32}, N) for K={in_features}, "
                          f"bits={bits}, group_size={group_size}; got {qweight.dtype} {tuple(qweight.shape)}")
    e, _, n = qweight.shape
    g = kp // (group_size or kp)
    if tuple(scales.shape) != (e, g, n) or not scales.is_floating_point():
        raise FormatError(f"scales must be float of shape ({e}, {g}, {n}), got {scales.dtype} {tuple(scales.shape)}")
    if zeros is not None and tuple(zeros.shape) != (e, g, n):
        raise FormatError(f"zeros must have shape ({e}, {g}, {n}), got {tuple(zeros.shape)}")
    if qweight.stride(2) != 1 or scales.stride(2) != 1 or (zeros is not None and zeros.stride() != scales.stride()):
        raise FormatError("qweight/scales/zeros must be N-contiguous, zeros with the strides of scales "
                          "(stacked layout: lowbit.formats.intx_experts)")
    if bias is not None and tuple(bias.shape) != (e, n):
        raise InputError(f"bias must have shape (E, N) = ({e}, {n}), got {tuple(bias.shape)}")
    if expert_offsets.dim() != 1 or expert_offsets.numel() != e + 1 or expert_offsets.is_floating_point():
        raise InputError(f"expert_offsets must be an integer tensor of shape (E + 1,) = ({e + 1},), got "
                         f"{expert_offsets.dtype} {tuple(expert_offsets.shape)}")
    if topk < 1:
        raise InputError(f"topk must be >= 1, got {topk}")
    rows = x.shape[0]
    if gather and sorted_ids is None:
        raise InputError("gather=True needs sorted_ids")
    if sorted_ids is not None:
        pairs = x.shape[0] * topk if gather else x.shape[0]
        if sorted_ids.dim() != 1 or sorted_ids.is_floating_point() or sorted_ids.numel() != pairs:
            raise InputError(f"sorted_ids must be an integer tensor of shape ({'T * topk' if gather else 'P'},) = "
                             f"({pairs},), got {sorted_ids.dtype} {tuple(sorted_ids.shape)}")
        rows = sorted_ids.numel()
    if row_weights is not None and (row_weights.dim() != 1 or row_weights.numel() != rows
                                    or not row_weights.is_floating_point()):
        raise InputError(f"row_weights must be float of shape ({rows},), got {row_weights.dtype} "
                         f"{tuple(row_weights.shape)}")
    for name, t in (("qweight", qweight), ("scales", scales), ("zeros", zeros), ("bias", bias),
                    ("expert_offsets", expert_offsets), ("sorted_ids", sorted_ids), ("row_weights", row_weights)):
        if t is not None and t.device != x.device:
            raise UnsupportedError(f"{name} is on {t.device} but x is on {x.device}")


def reference_grouped(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets, sorted_ids,
                      topk, gather, scatter, row_weights) -> torch.Tensor:
    """Per-expert fp32 dequantize-then-matmul (the oracle and the CPU backend; reads offsets on the host).
    Rows no expert owns are 0."""
    rows = x.shape[0] if sorted_ids is None else sorted_ids.numel()
    ids = None if sorted_ids is None else sorted_ids.long()
    xs = x[ids // topk] if gather else x
    y = torch.zeros(rows, qweight.shape[2], dtype=torch.float32, device=x.device)
    offs = expert_offsets.tolist()
    for e in range(qweight.shape[0]):
        a, b = offs[e], offs[e + 1]
        if b <= a:
            continue
        w = IntxWeight(qweight[e], scales[e], None if zeros is None else zeros[e], bits, group_size or None,
                       in_features).dequantize(torch.float32)
        y[a:b] = xs[a:b].float() @ w.t()
        if bias is not None:
            y[a:b] += bias[e].float()
    if row_weights is not None:
        pair = torch.arange(rows, device=x.device) if ids is None else ids
        y *= row_weights.float()[pair][:, None]
    if scatter and ids is not None:
        y = torch.zeros_like(y).index_copy_(0, ids, y)
    return y.to(x.dtype)


@dataclass(frozen=True)
class GroupedProblem:
    rows: int
    experts: int
    n: int
    k: int
    bits: int
    topk: int
    dtype: torch.dtype
    device_type: str


def _fused_ok(p: GroupedProblem) -> Tuple[bool, str]:
    ok, why = triton_available(p.device_type)
    if ok and p.dtype not in KERNEL_DTYPES:
        return False, f"triton kernels take fp16/bf16 activations, got {p.dtype}"
    return ok, why


def _dequant_mm_ok(p: GroupedProblem) -> Tuple[bool, str]:
    if p.device_type != "cuda" or not grouped_mm_available():
        return False, "dequantize + torch._grouped_mm needs CUDA and a torch with torch._grouped_mm"
    if p.dtype != torch.bfloat16:
        return False, f"torch._grouped_mm takes bf16, got {p.dtype}"
    if p.n % 8 or p.k % 8:
        return False, f"torch._grouped_mm needs N and K multiples of 8 (16-byte rows), got N={p.n}, K={p.k}"
    if torch.cuda.get_device_capability()[0] < 9:
        return False, "torch._grouped_mm (bf16) needs sm_90+ here"
    return True, ""


GROUPED_BACKENDS = (("triton_dequant_grouped_mm", "triton", _dequant_mm_ok), ("triton_grouped", "triton", _fused_ok),
                    ("reference", "reference", lambda p: (True, "")))
_LAUNCHERS = {"triton_grouped": grouped_wxa16, "triton_dequant_grouped_mm": dequant_grouped_mm}
_logged: set = set()


def _preferred(p: GroupedProblem, fused_only: bool) -> str:
    per_expert = p.rows / max(1.0, expected_active(p.rows, p.experts, p.topk))
    if per_expert >= DEQUANT_GROUPED_MIN_ROWS and not fused_only:
        return "triton_dequant_grouped_mm"
    return "triton_grouped"


def fused_only() -> bool:
    """LOWBIT_GROUPED_FUSED=1: never dequantize + torch._grouped_mm (measure the fused kernel)."""
    return os.environ.get("LOWBIT_GROUPED_FUSED", "").strip() not in ("", "0")


@functools.lru_cache(maxsize=4096)
def select_grouped(p: GroupedProblem, family: str, fused: bool = False) -> str:
    """Backend for ``p`` (the preferred one first, then priority order); typed error listing reasons."""
    preferred = _preferred(p, fused)
    reasons = []
    for name, fam, can in sorted(GROUPED_BACKENDS, key=lambda b: b[0] != preferred):
        if family and fam != family:
            continue
        ok, why = can(p)
        if ok:
            if fam == "reference" and not family and tuple(reasons) not in _logged:
                _logged.add(tuple(reasons))
                log.warning("lowbit: grouped GEMM falls back to the reference backend: %s", "; ".join(reasons))
            return name
        reasons.append(f"{name}: {why}")
    raise UnsupportedError(f"no lowbit backend can run {p}: " + "; ".join(reasons))


def grouped_gemm_wxa16_eager(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets,
                             sorted_ids=None, topk=1, gather=False, scatter=False, row_weights=None,
                             k_order=0) -> torch.Tensor:
    """The op's implementation without the torch.library dispatch (eager fast path)."""
    _validate_grouped(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets, sorted_ids,
                      topk, gather, row_weights, k_order)
    rows = x.shape[0] if sorted_ids is None else sorted_ids.numel()
    n = qweight.shape[2]
    if rows == 0:
        return x.new_empty((0, n))
    p = GroupedProblem(rows, qweight.shape[0], n, in_features, bits, topk, x.dtype, x.device.type)
    backend = select_grouped(p, forced_family(), fused_only())
    if backend == "reference":
        return reference_grouped(x, natural_words(qweight, k_order, bits), scales, zeros, bias, bits,
                                 group_size, in_features, expert_offsets, sorted_ids, topk, gather, scatter, row_weights)
    return _LAUNCHERS[backend](x, qweight, scales, zeros, bias, bits, group_size or PER_CHANNEL_GROUP_LEN,
                               symmetric_zero(bits), expert_offsets, sorted_ids, topk, gather, scatter, row_weights,
                               k_order=k_order)


@torch.library.custom_op("lowbit::grouped_gemm_wxa16", mutates_args=())
def grouped_gemm_wxa16(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: Optional[torch.Tensor],
    bias: Optional[torch.Tensor], bits: int, group_size: int, in_features: int, expert_offsets: torch.Tensor,
    sorted_ids: Optional[torch.Tensor], topk: int, gather: bool, scatter: bool, row_weights: Optional[torch.Tensor],
    k_order: int = 0,
) -> torch.Tensor:
    return grouped_gemm_wxa16_eager(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets,
                                    sorted_ids, topk, gather, scatter, row_weights, k_order)


@grouped_gemm_wxa16.register_fake
def _(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets, sorted_ids, topk, gather,
      scatter, row_weights, k_order=0):
    _validate_grouped(x, qweight, scales, zeros, bias, bits, group_size, in_features, expert_offsets, sorted_ids,
                      topk, gather, row_weights, k_order)
    rows = x.shape[0] if sorted_ids is None else sorted_ids.numel()
    return x.new_empty((rows, qweight.shape[2]))


grouped_gemm_wxa16_auto = eager_unless_compiling(grouped_gemm_wxa16, grouped_gemm_wxa16_eager)


def moe_align(topk_ids: torch.Tensor, num_experts: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sorted_ids int32 (T*k,), expert_offsets int32 (E+1,)) of a (T, k) routing, on the device,
    no host sync. The sort is stable: pairs of one expert stay in token order (deterministic)."""
    if topk_ids.dim() != 2 or topk_ids.is_floating_point():
        raise InputError(f"topk_ids must be an integer tensor (T, k), got {topk_ids.dtype} {tuple(topk_ids.shape)}")
    flat = topk_ids.reshape(-1)
    experts_sorted, sorted_ids = torch.sort(flat, stable=True)
    bounds = torch.arange(num_experts + 1, device=flat.device, dtype=experts_sorted.dtype)
    offsets = torch.searchsorted(experts_sorted, bounds)
    return sorted_ids.to(torch.int32), offsets.to(torch.int32)


def _weights_args(w: IntxExpertWeights):
    return (w.qweight, w.scales, w.zeros)


def grouped_gemm(
    x: torch.Tensor, weights: IntxExpertWeights, expert_offsets: Optional[torch.Tensor] = None, *,
    topk_ids: Optional[torch.Tensor] = None, topk_weights: Optional[torch.Tensor] = None,
    row_weights: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None, k_order: int = 0,
) -> torch.Tensor:
    """Grouped low-bit GEMM over experts (one launch for all experts). ``k_order`` 1: ``weights.qweight``
    holds words of one bit-plane (1, 2, 4, 8 bits) in the mma word order (``formats.intx.to_mma_words``, what ``QuantMoE`` runs).

    * ``expert_offsets`` (E+1,): x (P, K) already sorted by expert -> (P, N); ``row_weights`` (P,)
      optionally scale each row in the epilogue.
    * ``topk_ids`` (T, k): x (T, K) in token order -> (T, N) = sum_j topk_weights[t, j] *
      (x[t] @ W_{topk_ids[t, j]}^T + b) (weights default to 1); sort, gather and scatter included.
    """
    if (expert_offsets is None) == (topk_ids is None):
        raise InputError("pass exactly one of expert_offsets (tokens sorted by expert) or topk_ids (T, k)")
    meta = (weights.bits, weights.group_size or 0, weights.in_features)
    if expert_offsets is not None:
        return grouped_gemm_wxa16_auto(x, *_weights_args(weights), bias, *meta, expert_offsets, None, 1, False,
                                       False, row_weights, k_order)
    if topk_ids.dim() != 2 or topk_ids.shape[0] != x.shape[0]:
        raise InputError(f"topk_ids must be (T, k) with T = x's rows {x.shape[0]}, got {tuple(topk_ids.shape)}")
    t, k = topk_ids.shape
    if topk_weights is not None and tuple(topk_weights.shape) != (t, k):
        raise InputError(f"topk_weights must have shape {(t, k)}, got {tuple(topk_weights.shape)}")
    sorted_ids, offsets = moe_align(topk_ids, weights.num_experts)
    rw = None if topk_weights is None else topk_weights.reshape(-1)
    y = grouped_gemm_wxa16_auto(x, *_weights_args(weights), bias, *meta, offsets, sorted_ids, k, True, True, rw,
                                k_order)
    return y.view(t, k, y.shape[-1]).sum(dim=1)
