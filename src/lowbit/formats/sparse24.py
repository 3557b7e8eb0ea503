"""2:4 structured-sparse weights with int4 kept values (format ``sparse24_intx``, layout version 1).

In every group of four consecutive input channels (k = 4c .. 4c+3) at most two weights are non-zero.
The two *kept* positions i0 < i1 (in 0..3) are stored as metadata, their values as 4-bit codes::

    w[n, 4c + i_j(n, c)] = (q[n, 2c + j] - z[g, n]) * s[g, n]      j in {0, 1}, g = 4c // group_size
    w[n, 4c + p]         = 0                                         p not in {i0, i1}

``group_size`` counts *dense* input channels (as in ``intx``): a group of 128 holds 64 kept values,
so scales/zeros have the same shape (G, N), G = Kp // group_size, as a dense intx weight of that
layer. Zero points as in ``intx``: uint8 (asymmetric, integer), the scale dtype (float) or none
(symmetric, z = 8). Kp = K padded exactly like ``intx`` (multiple of 32 and of the group size);
padded positions are never multiplied by real activations.

Tensors (N = out_features, N contiguous in every int32 tensor so loads coalesce along N)::

    qweight  int32 (Kp / 16, N)   kept codes, packed like a 4-bit intx weight over the *compressed*
                                  axis c' = 2c + j (Kp / 2 codes per row): word-row r holds the codes
                                  of dense k in [16r, 16r + 16):

        bit 31 ............................................................ bit 0
        [c=4r+3 j=1][c=4r+3 j=0][c=4r+2 j=1][c=4r+2 j=0] ... [c=4r j=1][c=4r j=0]   (4 bits each)

    meta     int32 (Kp / 32, N)   kept positions, one nibble per group of four (i0 in the low 2 bits,
                                  i1 in the high 2 bits, i0 < i1); word-row r covers dense k in
                                  [32r, 32r + 32), i.e. exactly value word-rows 2r and 2r + 1:

        bit 31 ............................................................ bit 0
        [i1 i0 of c=8r+7][i1 i0 of c=8r+6] ... [i1 i0 of c=8r+1][i1 i0 of c=8r]  (2 + 2 bits)

    scales   (G, N) fp16/bf16/fp32;  zeros  None | uint8 (G, N) | scale dtype (G, N)

Bits per dense weight: 2 (values) + 1 (metadata) + (scale + zero bits) / group_size,
e.g. 3.19 at group 128 with bf16 scales and uint8 zeros, vs 4.19 for dense int4 (1.31x fewer bytes).

Why 2-bit indices and not a 3-bit code of the 6 possible patterns (0.75 bit/weight, 2.94 in total,
1.42x fewer bytes): the GEMV at small M is bound by instruction issue on the H200, not by DRAM
(``kernels/gemv.py``). With indices, choosing the activation of a kept value is two bit tests *on the
packed word* (LOP3 into a predicate, no extraction) and two SELs; a 3-bit code (which has no power-of-two
packing: 10 per word, or split into a 2-bit and a 1-bit plane) must first be extracted and combined
(~3 instructions per group) and mapped to both positions with 4 compares. That is ~0.4 more SASS
instructions per dense weight against 8 % fewer bytes, and the byte saving only pays where the kernel
is bandwidth-bound. Measured counts: ``docs/sparse24.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..errors import FormatError
from .base import register_format
from .intx import (
    SCALE_DTYPES, ZERO_KINDS, check_group_size, pack, padded_k, quantize_groups, symmetric_zero, unpack,
)

LAYOUT_VERSION = 1
BITS = 4  # kept values are int4 (the kernels' unpack is specialised for 8 codes per word)


def _pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(N, C) codes in [0, 16), C % 8 == 0 -> (C / 8, N) int32 with intx's 4-bit packing (columns
    padded to intx's multiple of 32 and the padded word-rows dropped: row r holds columns 8r..8r+7)."""
    n, c = codes.shape
    padded = F.pad(codes.to(torch.int64), (0, -c % 32))
    return pack(padded, BITS)[: c // 8].contiguous()


def _unpack_nibbles(words: torch.Tensor, c: int) -> torch.Tensor:
    """Exact inverse of ``_pack_nibbles``: (C / 8, N) int32 -> (N, C) uint8."""
    rows = words.shape[0]
    padded = F.pad(words, (0, 0, 0, -rows % 4))
    return unpack(padded, BITS, padded.shape[0] * 8)[:, :c].contiguous()


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4 pruning: in every group of 4 consecutive k keep the 2 largest |w| (ties: the lower
    k). Returns the pruned (N, K) weight (same dtype); K need not be a multiple of 4."""
    mask = _kept_mask(_pad4(weight.float()))[:, : weight.shape[1]]
    return torch.where(mask, weight, torch.zeros_like(weight))


def _pad4(w: torch.Tensor) -> torch.Tensor:
    return F.pad(w, (0, -w.shape[1] % 4))


def _kept_positions(w4: torch.Tensor) -> torch.Tensor:
    """(N, K4) with K4 % 4 == 0 -> kept positions (N, K4 / 4, 2) int64, ascending: the two largest
    |w| of each group of four, ties broken towards the lower position (stable sort)."""
    n, k4 = w4.shape
    order = torch.sort(w4.abs().view(n, k4 // 4, 4), dim=2, descending=True, stable=True).indices
    return order[..., :2].sort(dim=2).values


def _kept_mask(w4: torch.Tensor) -> torch.Tensor:
    pos = _kept_positions(w4)
    mask = torch.zeros(*pos.shape[:2], 4, dtype=torch.bool, device=w4.device)
    mask.scatter_(2, pos, True)
    return mask.view(w4.shape)


def check_2_4(weight: torch.Tensor) -> None:
    """FormatError naming the first (row, group) with more than two non-zeros in a group of four."""
    w4 = _pad4(weight)
    n, k4 = w4.shape
    bad = (w4.view(n, k4 // 4, 4) != 0).sum(dim=2) > 2
    if bool(bad.any()):
        row, grp = (int(v) for v in bad.nonzero()[0])
        vals = [float(v) for v in w4[row, 4 * grp: 4 * grp + 4]]
        raise FormatError(
            f"weight is not 2:4 sparse: row {row}, k in [{4 * grp}, {4 * grp + 4}) has "
            f"{sum(v != 0 for v in vals)} non-zeros {vals} (at most 2 of every 4 consecutive k); "
            f"{int(bad.sum())} group(s) in total. Use prune=True to prune by magnitude"
        )


@dataclass
class Sparse24Weight:
    """A packed 2:4-sparse int4 weight. See the module docstring for the layout."""

    qweight: torch.Tensor  # int32 (Kp/16, N)
    meta: torch.Tensor  # int32 (Kp/32, N)
    scales: torch.Tensor  # (G, N)
    zeros: Optional[torch.Tensor]  # None | uint8 (G, N) | scale dtype (G, N)
    group_size: Optional[int]
    in_features: int
    bits: int = field(default=BITS, init=False)
    format_name: str = field(default="sparse24_intx", init=False)

    def __post_init__(self) -> None:
        check_sparse24_tensors(self.qweight, self.meta, self.scales, self.zeros, self.group_size, self.in_features)

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def padded_in_features(self) -> int:
        return self.qweight.shape[0] * 16

    @property
    def group_len(self) -> int:
        return self.padded_in_features if self.group_size is None else self.group_size

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    def codes(self) -> torch.Tensor:
        """Kept codes (N, Kp / 2) uint8, compressed order c' = 2c + j."""
        return _unpack_nibbles(self.qweight, self.padded_in_features // 2)

    def positions(self) -> torch.Tensor:
        """Kept positions (N, Kp / 4, 2) int64 in 0..3 (i0 < i1)."""
        nib = _unpack_nibbles(self.meta, self.padded_in_features // 4).to(torch.int64)
        return torch.stack([nib & 3, nib >> 2], dim=2)

    def zero_points(self) -> torch.Tensor:
        """(G, N) fp32 zero points (the implicit constant when symmetric)."""
        if self.zeros is None:
            return torch.full_like(self.scales, symmetric_zero(BITS), dtype=torch.float32)
        return self.zeros.float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense (N, K) weight with exact zeros at pruned positions; (q - z) * s in fp32, then cast."""
        n, kp = self.out_features, self.padded_in_features
        half = self.group_len // 2  # kept values per group
        q = self.codes().float()  # (N, Kp/2)
        s = self.scales.float().t().repeat_interleave(half, dim=1)
        z = self.zero_points().t().repeat_interleave(half, dim=1)
        vals = ((q - z) * s).view(n, kp // 4, 2)
        dense = torch.zeros(n, kp // 4, 4, dtype=torch.float32, device=q.device)
        dense.scatter_(2, self.positions(), vals)
        return dense.view(n, kp)[:, : self.in_features].to(dtype)

    def tensors(self) -> Dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "meta": self.meta, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def meta_dict(self) -> Dict[str, object]:
        return {"format": self.format_name, "layout_version": LAYOUT_VERSION, "bits": BITS,
                "group_size": self.group_size, "in_features": self.in_features, "out_features": self.out_features}

    def ideal_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "Sparse24Weight":
        return Sparse24Weight(self.qweight.to(device), self.meta.to(device), self.scales.to(device),
                              None if self.zeros is None else self.zeros.to(device), self.group_size, self.in_features)


def check_sparse24_tensors(qweight, meta, scales, zeros, group_size: Optional[int], in_features: int) -> None:
    """FormatError naming the first tensor whose dtype/shape does not match the layout."""
    check_group_size(group_size)
    if not isinstance(in_features, int) or in_features <= 0:
        raise FormatError(f"in_features must be a positive int, got {in_features!r}")
    kp = padded_k(in_features, group_size)
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] != kp // 16:
        raise FormatError(f"qweight must be int32 ({kp // 16}, N) for K={in_features}, group_size={group_size}; "
                          f"got {qweight.dtype} {tuple(qweight.shape)}")
    n = qweight.shape[1]
    if meta.dtype != torch.int32 or tuple(meta.shape) != (kp // 32, n):
        raise FormatError(f"meta must be int32 ({kp // 32}, {n}), got {meta.dtype} {tuple(meta.shape)}")
    g = kp // (group_size or kp)
    if scales.dtype not in SCALE_DTYPES or tuple(scales.shape) != (g, n):
        raise FormatError(f"scales must be fp16/bf16/fp32 of shape ({g}, {n}); got {scales.dtype} "
                          f"{tuple(scales.shape)}")
    if zeros is not None:
        if zeros.dtype not in (torch.uint8, scales.dtype):
            raise FormatError(f"zeros must be uint8 or {scales.dtype}, got {zeros.dtype}")
        if tuple(zeros.shape) != (g, n):
            raise FormatError(f"zeros must have shape ({g}, {n}), got {tuple(zeros.shape)}")


@register_format
@dataclass(frozen=True)
class Sparse24Format:
    """2:4 sparsity + int4 group-wise kept values. ``prune=True``: magnitude-prune a dense weight;
    ``prune=False``: the weight must already be 2:4 sparse (FormatError naming the first bad group)."""

    group_size: Optional[int] = 128
    symmetric: bool = False
    zero_kind: str = "int"
    scale_dtype: torch.dtype = torch.bfloat16
    prune: bool = True
    name = "sparse24_intx"
    bits = BITS

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        if self.zero_kind not in ZERO_KINDS:
            raise FormatError(f"zero_kind must be one of {ZERO_KINDS}, got {self.zero_kind!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise FormatError(f"scale_dtype must be fp16, bf16 or fp32, got {self.scale_dtype}")

    def quantize(self, weight: torch.Tensor) -> Sparse24Weight:
        """Dense (N, K) float weight -> Sparse24Weight; kept values rounded to nearest (|err| <= s/2)."""
        if weight.dim() != 2 or not weight.is_floating_point():
            raise FormatError(f"weight must be a 2-D float tensor (N, K), got {tuple(weight.shape)} {weight.dtype}")
        if not torch.isfinite(weight).all():
            raise FormatError("weight contains NaN or Inf; cannot quantize")
        if not self.prune:
            check_2_4(weight)
        n, k = weight.shape
        kp = padded_k(k, self.group_size)
        gl = kp if self.group_size is None else self.group_size
        w = F.pad(weight.float(), (0, kp - k))
        pos = _kept_positions(w)  # (N, Kp/4, 2)
        vals = torch.gather(w.view(n, kp // 4, 4), 2, pos).view(n, kp // 2)
        k_of = (torch.arange(kp // 4, device=w.device).view(1, -1, 1) * 4 + pos).view(n, kp // 2)
        q, s, z_store = quantize_groups(vals.view(n, kp // gl, gl // 2), (k_of < k).view(n, kp // gl, gl // 2),
                                        BITS, self.symmetric, self.zero_kind, self.scale_dtype)
        nib = (pos[..., 0] | (pos[..., 1] << 2))  # (N, Kp/4)
        return Sparse24Weight(_pack_nibbles(q.view(n, kp // 2)), _pack_nibbles(nib), s.t().contiguous(),
                              None if z_store is None else z_store.t().contiguous(), self.group_size, k)
