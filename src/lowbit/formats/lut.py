"""Lookup-table (non-uniform) weights: NF4, FP4 e2m1 and learned codebooks (format ``lut``, layout v1).

Math (per output channel n, per group g of ``group_size`` consecutive input channels k)::

    w[n, k] = table[tg, tn, q[n, k]] * s[g, n]          q in [0, 2**bits)

computed in fp32 (``table`` and ``s`` converted to fp32, one multiply, then cast): the formula of
bitsandbytes' ``dequantize_4bit`` (``code[q] * absmax``), so imported NF4 tensors dequantize equal
bit for bit.

Tensors (N = out_features, K = in_features, Kp = K padded as in ``intx``, G = Kp // group_size)::

    qweight  int32 (Kp * bits // 32, N)   codes, packed exactly like ``lowbit.formats.intx`` (bit-planes
                                          along K in int32 words, N contiguous; 4 bits: 8 k per word,
                                          k = 8r + j at bits [4j, 4j + 4) of word-row r)
    scales   (G, N) fp16/bf16/fp32        one scale per group (absmax-style, see the formats below)
    table    (Gt, Nt, 2**bits) float      Gt in {1, G}, Nt in {1, N}: tg = g if Gt == G else 0,
                                          tn = n if Nt == N else 0; entries contiguous (last stride 1)

    table granularity   shape          bytes (E = 2**bits entries)
    tensor (NF4, FP4)   (1, 1, E)      E * 4, negligible
    row (codebook)      (1, N, E)      N * E * itemsize: 0.03 bit/weight at K=4096, fp32, E=16
    group (codebook)    (G, N, E)      E * itemsize / group_size per weight: 4 bit/weight for fp32
                                       at group 128 -- as big as the codes; only for large groups

Formats built here (all with per-group scales):

* **NF4** (QLoRA, Dettmers et al. 2023): 16 values = quantiles of N(0, 1) normalised to [-1, 1],
  8 positive (Phi^-1 of linspace(offset, 1/2, 9)[:-1]), 7 negative (-Phi^-1 of
  linspace(offset, 1/2, 8)[:-1]) and an exact 0, offset = 0.9677083 = (1 - 1/(2*15) + 1 - 1/(2*16))/2
  (``nf4_values_from_normal``). ``NF4_VALUES`` holds the fp32 constants bitsandbytes ships (our
  derivation agrees within 1e-7; the shipped constants are used so imports are exact).
  Scale: group absmax (rounded up to the scale dtype); codes = nearest value of w / s.
* **FP4 e2m1** (OCP MX v1.0 element type): code = sign << 3 | exponent << 1 | mantissa, values
  {0, .5, 1, 1.5, 2, 3, 4, 6} for codes 0..7 and their negatives for 8..15. Scales:
  ``scale_kind="float"``: absmax / 6 in the scale dtype, any group size (multiple of 32);
  ``scale_kind="e8m0"`` (MX-style, block 32): s = 2**(floor(log2(absmax)) - 2), a power of two
  (stored exactly in bf16/fp32; OCP's 1-byte e8m0 storage would save 8 bits per 32 weights).
  NV-style NVFP4 (block 16, fp8-e4m3 scales times a per-tensor fp32 scale) is **not** supported:
  groups are multiples of 32 here (the intx packing and kernels), and the e4m3 scale grid is not
  modelled. Values above 6 s saturate to 6 s (the MX conversion rule); rounding is to nearest
  (ties to the lower magnitude, not the spec's ties-to-even: a tie is measure zero on real weights).
* **Codebooks** of E = 2**bits entries, bits 2..4 (any 1..8 works): w / s (s = group absmax) is
  clustered by 1-D k-means (Lloyd, ``iters`` steps, deterministic quantile start, empty clusters
  re-seeded from a ``seed``-ed generator) per row or per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch

from ..errors import FormatError
from .base import register_format
from .intx import SCALE_DTYPES, IntxWeight, _check_bits, _round_scale_up, check_group_size, pack, padded_k

LAYOUT_VERSION = 1
TABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
GRANULARITIES = ("tensor", "row", "group")
FP4_SCALE_KINDS = ("float", "e8m0")

# bitsandbytes' NF4 table (functional.get_4bit_type("nf4")), fp32.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
FP4_MAX = 6.0
FP4_EMAX = 2  # exponent of the largest e2m1 binade (6 = 1.5 * 2**2)


def nf4_values_from_normal(offset: float = 0.9677083) -> torch.Tensor:
    """The NF4 table derived from the normal quantile function (float64, sorted, 16 entries)."""
    pos = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    v = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return v / v.abs().max()


def nf4_table() -> torch.Tensor:
    return torch.tensor(NF4_VALUES, dtype=torch.float32).view(1, 1, 16)


def fp4_table() -> torch.Tensor:
    return torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32).view(1, 1, 16)


def nearest_codes(u: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of a 1-D ``values`` (any order) for every element of ``u`` (int64)."""
    sv, order = torch.sort(values.float())
    mids = (sv[1:] + sv[:-1]) / 2
    return order[torch.bucketize(u.float().contiguous(), mids)]


def _grouped(weight: torch.Tensor, group_size: Optional[int]) -> Tuple[torch.Tensor, torch.Tensor, int, int]:
    """Zero-padded fp32 (N, G, gl) view of the weight, the matching validity mask, K and gl."""
    if weight.dim() != 2 or not weight.is_floating_point():
        raise FormatError(f"weight must be a 2-D float tensor (N, K), got {tuple(weight.shape)} {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise FormatError("weight contains NaN or Inf; cannot quantize")
    n, k = weight.shape
    kp = padded_k(k, group_size)
    gl = kp if group_size is None else group_size
    w = torch.zeros(n, kp, dtype=torch.float32, device=weight.device)
    w[:, :k] = weight.float()
    valid = torch.zeros(n, kp, dtype=torch.bool, device=weight.device)
    valid[:, :k] = True
    return w.view(n, kp // gl, gl), valid.view(n, kp // gl, gl), k, gl


def _absmax(wg: torch.Tensor) -> torch.Tensor:
    """(N, G) group absmax, never 0 (padding is 0 and does not change it)."""
    return wg.abs().amax(dim=2).clamp_min(torch.finfo(torch.float32).tiny)


@dataclass
class LutWeight:
    """A packed lookup-table weight. See the module docstring for the layout."""

    qweight: torch.Tensor  # int32 (Kp*bits//32, N)
    scales: torch.Tensor  # (G, N)
    table: torch.Tensor  # (Gt, Nt, 2**bits), Gt in {1, G}, Nt in {1, N}
    bits: int
    group_size: Optional[int]
    in_features: int
    format_name: str = field(default="lut", init=False)

    def __post_init__(self) -> None:
        check_lut_tensors(self.qweight, self.scales, self.table, self.bits, self.group_size, self.in_features)

    # the packed codes are intx's: same geometry and unpacking
    out_features = IntxWeight.out_features
    padded_in_features = IntxWeight.padded_in_features
    group_len = IntxWeight.group_len
    num_groups = IntxWeight.num_groups
    codes = IntxWeight.codes

    @property
    def granularity(self) -> str:
        return table_granularity(self.table, self.num_groups, self.out_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense (N, K): table[q] * s in fp32, then cast to ``dtype``."""
        n, g, gl = self.out_features, self.num_groups, self.group_len
        q = self.codes().view(n, g, gl).permute(1, 0, 2).long()  # (G, N, gl)
        t = self.table.float().expand(g, n, -1)
        v = torch.gather(t, 2, q) * self.scales.float().unsqueeze(2)
        return v.permute(1, 0, 2).reshape(n, g * gl)[:, : self.in_features].to(dtype)

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {"qweight": self.qweight, "scales": self.scales, "table": self.table}

    def meta(self) -> Dict[str, object]:
        return {"format": "lut", "layout_version": LAYOUT_VERSION, "bits": self.bits,
                "group_size": self.group_size, "in_features": self.in_features,
                "out_features": self.out_features, "table_granularity": self.granularity}

    def ideal_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "LutWeight":
        return LutWeight(self.qweight.to(device), self.scales.to(device), self.table.to(device), self.bits,
                         self.group_size, self.in_features)


def table_granularity(table: torch.Tensor, groups: int, n: int) -> str:
    gt, nt = table.shape[0], table.shape[1]
    if gt == groups and groups > 1:
        return "group"
    return "row" if nt == n and n > 1 else "tensor"


def check_lut_tensors(qweight, scales, table, bits: int, group_size: Optional[int], in_features: int) -> None:
    """FormatError naming the violated constraint, else None (shared by LutWeight and the op)."""
    _check_bits(bits)
    check_group_size(group_size)
    kp = padded_k(in_features, group_size)
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] != kp * bits // 32:
        raise FormatError(f"qweight must be int32 ({kp * bits // 32}, N) for K={in_features}, bits={bits}, "
                          f"group_size={group_size}; got {qweight.dtype} {tuple(qweight.shape)}")
    n = qweight.shape[1]
    g = kp // (group_size or kp)
    if scales.dtype not in SCALE_DTYPES or tuple(scales.shape) != (g, n):
        raise FormatError(f"scales must be fp16/bf16/fp32 of shape ({g}, {n}); got {scales.dtype} "
                          f"{tuple(scales.shape)}")
    e = 2**bits
    if table.dtype not in TABLE_DTYPES:
        raise FormatError(f"table must be fp16/bf16/fp32, got {table.dtype}")
    if table.dim() != 3 or table.shape[2] != e or table.shape[0] not in (1, g) or table.shape[1] not in (1, n):
        raise FormatError(f"table must have shape (1 or G={g}, 1 or N={n}, 2**bits={e}); got {tuple(table.shape)}")
    if table.stride(2) != 1:
        raise FormatError("table entries must be contiguous (table.stride(2) == 1)")


def _pack_weight(q: torch.Tensor, vg: torch.Tensor, s: torch.Tensor, table: torch.Tensor, bits: int,
                 group_size: Optional[int], k: int) -> LutWeight:
    n, g, gl = q.shape
    q = torch.where(vg, q, torch.zeros_like(q)).reshape(n, g * gl).to(torch.uint8)
    return LutWeight(pack(q, bits), s.t().contiguous(), table.contiguous(), bits, group_size, k)


def _check_scale_dtype(dtype: torch.dtype) -> None:
    if dtype not in SCALE_DTYPES:
        raise FormatError(f"scale_dtype must be fp16, bf16 or fp32, got {dtype}")


@register_format
@dataclass(frozen=True)
class NF4Format:
    """NF4 with absmax group scales (QLoRA / bitsandbytes ``quant_type="nf4"``)."""

    group_size: Optional[int] = 64
    scale_dtype: torch.dtype = torch.bfloat16
    name = "nf4"
    bits = 4

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        _check_scale_dtype(self.scale_dtype)

    def quantize(self, weight: torch.Tensor) -> LutWeight:
        wg, vg, k, _ = _grouped(weight, self.group_size)
        s = _round_scale_up(_absmax(wg), self.scale_dtype)
        table = nf4_table().to(weight.device)
        q = nearest_codes((wg / s.float().unsqueeze(2)).clamp(-1, 1), table.view(-1))
        return _pack_weight(q, vg, s, table, 4, self.group_size, k)


@register_format
@dataclass(frozen=True)
class Fp4Format:
    """FP4 e2m1 values with per-group scales (``scale_kind`` "float": absmax/6, "e8m0": MX power of two)."""

    group_size: Optional[int] = 32
    scale_kind: str = "e8m0"
    scale_dtype: torch.dtype = torch.bfloat16
    name = "fp4"
    bits = 4

    def __post_init__(self) -> None:
        check_group_size(self.group_size)
        _check_scale_dtype(self.scale_dtype)
        if self.scale_kind not in FP4_SCALE_KINDS:
            raise FormatError(f"scale_kind must be one of {FP4_SCALE_KINDS}, got {self.scale_kind!r}")
        if self.scale_kind == "e8m0" and self.scale_dtype == torch.float16:
            raise FormatError("e8m0 scales (powers of two down to 2**-127) need bf16 or fp32 storage, not fp16")

    def quantize(self, weight: torch.Tensor) -> LutWeight:
        wg, vg, k, _ = _grouped(weight, self.group_size)
        amax = _absmax(wg)
        if self.scale_kind == "e8m0":
            e = (torch.floor(torch.log2(amax)) - FP4_EMAX).clamp(-127, 127)
            s = torch.exp2(e).to(self.scale_dtype)  # exact: a power of two in bf16/fp32 range
        else:
            s = _round_scale_up(amax / FP4_MAX, self.scale_dtype)
        table = fp4_table().to(weight.device)
        u = (wg / s.float().unsqueeze(2)).clamp(-FP4_MAX, FP4_MAX)
        q = nearest_codes(u, table.view(-1))
        q = torch.where(q == 8, torch.zeros_like(q), q)  # -0 -> +0 (same value, one canonical code)
        return _pack_weight(q, vg, s, table, 4, self.group_size, k)


def kmeans_1d(x: torch.Tensor, entries: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Batched 1-D k-means (Lloyd): x (R, L) -> sorted centroids (R, entries) fp32, deterministic.

    Start: the (i + 1/2)/entries quantiles of each row. An empty cluster is re-seeded with a point of
    its row drawn by a ``seed``-ed generator. Assignment uses the midpoints of sorted centroids.
    """
    x = x.float()
    r, length = x.shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    pos = ((torch.arange(entries, device=x.device) + 0.5) * length / entries).long().clamp_max(length - 1)
    c = x.sort(dim=1).values[:, pos].contiguous()  # (i + 1/2)/entries quantiles (torch.quantile caps the size)
    rows = torch.arange(r, device=x.device).unsqueeze(1)
    for _ in range(iters):
        c = c.sort(dim=1).values
        mids = (c[:, 1:] + c[:, :-1]) / 2
        a = torch.searchsorted(mids.contiguous(), x.contiguous())  # (R, L) nearest centroid
        sums = torch.zeros_like(c).scatter_add_(1, a, x)
        counts = torch.zeros_like(c).scatter_add_(1, a, torch.ones_like(x))
        empty = counts == 0
        new = torch.where(empty, c, sums / counts.clamp_min(1))
        if bool(empty.any()):
            pick = torch.randint(0, length, (r, entries), generator=gen).to(x.device)
            new = torch.where(empty, x[rows, pick], new)
        if torch.equal(new, c):
            break
        c = new
    return c.sort(dim=1).values


@register_format
@dataclass(frozen=True)
class CodebookFormat:
    """Learned 2**bits-entry codebooks (per row or per group) on absmax-normalised weights."""

    bits: int = 4
    group_size: Optional[int] = 128
    granularity: str = "row"
    scale_dtype: torch.dtype = torch.bfloat16
    table_dtype: torch.dtype = torch.float32
    iters: int = 25
    seed: int = 0
    name = "codebook"

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        check_group_size(self.group_size)
        _check_scale_dtype(self.scale_dtype)
        if self.granularity not in ("row", "group"):
            raise FormatError(f"codebook granularity must be 'row' or 'group', got {self.granularity!r}")
        if self.table_dtype not in TABLE_DTYPES:
            raise FormatError(f"table_dtype must be fp16, bf16 or fp32, got {self.table_dtype}")
        if not isinstance(self.iters, int) or self.iters < 0:
            raise FormatError(f"iters must be a non-negative int, got {self.iters!r}")

    def quantize(self, weight: torch.Tensor) -> LutWeight:
        wg, vg, k, gl = _grouped(weight, self.group_size)
        n, g, _ = wg.shape
        s = _round_scale_up(_absmax(wg), self.scale_dtype)
        u = wg / s.float().unsqueeze(2)  # in [-1, 1]
        e = 2**self.bits
        if self.granularity == "row":
            data = u.reshape(n, g * gl)[:, :k]  # real weights only (padding excluded)
            c = kmeans_1d(data, e, self.iters, self.seed).to(self.table_dtype)  # (N, E)
            table = c.unsqueeze(0)  # (1, N, E)
            cf = c.float().unsqueeze(1).expand(n, g, e)
        else:
            data = u.permute(1, 0, 2).reshape(g * n, gl)  # padding (0) is clustered too: harmless
            c = kmeans_1d(data, e, self.iters, self.seed).to(self.table_dtype).view(g, n, e)
            table = c
            cf = c.float().permute(1, 0, 2)  # (N, G, E)
        # nearest entry of the stored (rounded) table, per (row, group)
        mids = (cf[..., 1:] + cf[..., :-1]) / 2
        q = torch.searchsorted(mids.contiguous(), u.contiguous())
        return _pack_weight(q, vg, s, table, self.bits, self.group_size, k)


def sqnr_db(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(|w|^2 / |w - w_hat|^2) in dB (fp64 sums)."""
    w, w_hat = w.double(), w_hat.double()
    noise = (w - w_hat).pow(2).sum()
    if float(noise) == 0:
        return math.inf
    return float(10 * torch.log10(w.pow(2).sum() / noise))
