"""Group-wise integer weights, n = 1..8 bits (format ``intx``, layout version 1).

Math (per output channel n, per group g of ``group_size`` consecutive input channels k)::

    w[n, k] = (q[n, k] - z[g, n]) * s[g, n]         q in [0, 2**bits - 1]

* asymmetric, integer zeros (GPTQ/AWQ style): ``zeros`` uint8 (G, N), z in [0, 2**bits - 1];
* asymmetric, float zeros (HQQ style): ``zeros`` in the scale dtype (G, N), any real z;
* symmetric: ``zeros`` is None and z is the constant ``2**(bits-1)`` (0.5 for bits=1).

K is padded to ``Kp`` (a multiple of the group size and of 32). The padded tail of the last group
holds q = 0 and is ignored by quantize's statistics; kernels never multiply it by real activations.
Per-channel quantization is ``group_size=None`` (one group of ``Kp``).

Packed codes ``qweight``: int32, shape (Kp * bits // 32, N), packed along K, N contiguous
(adjacent threads read adjacent output channels: coalesced). A code is split into power-of-two
*bit-planes* so no value straddles a word: planes(3)=[2,1], 5=[4,1], 6=[4,2], 7=[4,2,1], others
one plane. Plane i (width p, holding bits [off_i, off_i + p) of q, lowest bits in plane 0) starts
at word-row ``Kp * off_i // 32``; inside it, word-row ``k // (32 // p)`` holds k at bit
``(k % (32 // p)) * p``. Bits 4 word (one plane), 8 consecutive k per word::

    row r = k // 8:  bit 31 ........................................ bit 0
                     [k=8r+7][k=8r+6][k=8r+5] ... [k=8r+1][k=8r+0]   (4 bits each)

Bits 3: rows [0, Kp/16) hold the low 2 bits (16 k per word), rows [Kp/16, 3Kp/32) the high bit
(32 k per word). Bytes per weight: exactly bits/8, plus scales/zeros per group.
For 4 bits the layout equals GPTQ's ``qweight``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from ..errors import FormatError
from .base import register_format

LAYOUT_VERSION = 1
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ZERO_KINDS = ("int", "float")


def bit_planes(bits: int) -> List[int]:
    """Power-of-two plane widths of a ``bits``-bit code, low bits first."""
    _check_bits(bits)
    planes, rest = [], bits
    for p in (8, 4, 2, 1):
        if rest >= p:
            planes.append(p)
            rest -= p
    return planes


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise FormatError(f"bits must be an integer in 1..8, got {bits!r}")


def check_group_size(group_size: Optional[int]) -> None:
    if group_size is None:
        return
    if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
        raise FormatError(
            f"group_size must be None (per-channel) or a positive multiple of 32, got {group_size!r}"
        )


def padded_k(in_features: int, group_size: Optional[int]) -> int:
    """Kp: K rounded up to a multiple of 32 and of the group size."""
    unit = 32 if group_size is None else group_size
    return max(unit, -(-in_features // unit) * unit)


def symmetric_zero(bits: int) -> float:
    """Implicit zero point of symmetric codes."""
    return 0.5 if bits == 1 else float(2 ** (bits - 1))


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    """int64 holding uint32 bit patterns -> int32 with the same bits."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (N, Kp) integer in [0, 2**bits) with Kp % 32 == 0 -> qweight (Kp*bits//32, N) int32."""
    _check_bits(bits)
    n, kp = codes.shape
    if kp % 32:
        raise FormatError(f"pack needs Kp % 32 == 0, got Kp={kp}")
    q = codes.to(torch.int64).t()  # (Kp, N)
    if int(q.min()) < 0 or int(q.max()) >= 2**bits:
        raise FormatError(f"codes out of range for {bits} bits")
    rows, off = [], 0
    for p in bit_planes(bits):
        per_word = 32 // p
        plane = (q >> off) & ((1 << p) - 1)  # (Kp, N)
        plane = plane.reshape(kp // per_word, per_word, n)
        shifts = (torch.arange(per_word, device=q.device, dtype=torch.int64) * p).view(1, -1, 1)
        rows.append((plane << shifts).sum(dim=1))
        off += p
    return _to_int32(torch.cat(rows, dim=0)).contiguous()


def unpack(qweight: torch.Tensor, bits: int, kp: int) -> torch.Tensor:
    """qweight (Kp*bits//32, N) int32 -> codes (N, Kp) uint8. Exact inverse of ``pack``."""
    _check_bits(bits)
    if qweight.dtype != torch.int32 or qweight.dim() != 2 or qweight.shape[0] * 32 != kp * bits:
        raise FormatError(
            f"qweight must be int32 of shape (Kp*bits//32, N) = ({kp * bits // 32}, N), "
            f"got {tuple(qweight.shape)} {qweight.dtype}"
        )
    w = qweight.to(torch.int64) & 0xFFFFFFFF
    n = w.shape[1]
    q = torch.zeros(kp, n, dtype=torch.int64, device=w.device)
    row, off = 0, 0
    for p in bit_planes(bits):
        per_word = 32 // p
        nrows = kp // per_word
        plane = w[row : row + nrows]
        shifts = (torch.arange(per_word, device=w.device, dtype=torch.int64) * p).view(1, -1, 1)
        vals = (plane.unsqueeze(1) >> shifts) & ((1 << p) - 1)  # (nrows, per_word, N)
        q |= vals.reshape(kp, n) << off
        row += nrows
        off += p
    return q.t().to(torch.uint8).contiguous()


# --- the "mma" word order (a runtime layout of ``QuantLinear``, never stored) ---
#
# The codes of every bit-plane of width p are permuted inside each chunk of 4 words (128 / p input
# channels; ``mma_chunk(bits)``: the longest plane chunk) so that the packed GEMM's dequantization
# (``kernels.unpack.dequant_packed``) yields the Hopper MMA A-fragment in natural k order: lane c of a
# quad holds k-pairs (2c, 2c+1) and (2c+8, 2c+9) of every 16-k step, all of them from word c of the chunk,
# and the activations need no per-tile permutation (``kernels.unpack.mma_k_order`` undone offline, as
# Marlin does). Storage slot s = CH*p + (32/bits)*c + j (chunk p, word c, field j at bit bits*j) holds
# natural k = CH*p + 16*st + 8*a + 2*c + b with the fields paired by 16-bit half: j = H*b + 2*st + a,
# H = 16 / bits (field e and field H + e of a word are one k-pair: one shift + lop3 puts both under the
# magic number). Until stop 27, 4-bit words paired the two nibbles of a byte instead (j = 4*st + 2*a + b,
# a prmt per pair): 13 instead of 11 instructions per word.
# Several bit-planes (3, 5, 6, 7 bits): each plane in the order of its own width, so each plane's packed
# dequantization yields the fragment in natural k order and the planes add up register by register.

def mma_chunk(bits: int) -> int:
    """Input channels per mma word-order chunk: 4 words of the narrowest plane (128 / its width)."""
    return 128 // min(bit_planes(bits))


def mma_natural_k(k, bits: int = 4):
    """Input channel whose code storage slot k holds in the mma word order (int or integer tensor)."""
    vpw = 32 // bits
    h = vpw // 2
    j = k % vpw
    c = (k // vpw) % 4
    b, e = j // h, j % h
    return (k // (4 * vpw)) * (4 * vpw) + 16 * (e // 2) + 8 * (e % 2) + 2 * c + b


def mma_words_layout_ok(bits: int, kp: int, group_len: int) -> bool:
    """Whether codes of ``bits`` bits with padded K ``kp`` and groups of ``group_len`` can take the mma
    word order: whole chunks of every plane, no chunk split by a group boundary."""
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        return False
    ch = mma_chunk(bits)
    return kp % ch == 0 and group_len % ch == 0


def mma_words_apply(bits: int, zeros: Optional[torch.Tensor], kp: int, group_len: int) -> bool:
    """Whether lowbit runs this weight in the mma word order (``mma_words_layout_ok``): integer (uint8) or
    integer symmetric zero points, the formats of the packed GEMM path."""
    int_zero = zeros.dtype == torch.uint8 if zeros is not None else symmetric_zero(bits).is_integer()
    return int_zero and mma_words_layout_ok(bits, kp, group_len)


def runs_mma_words(w) -> bool:
    """``mma_words_apply`` of a packed weight (``IntxWeight`` or stacked experts: qweight [..., Kp*bits/32, N])."""
    kp = w.qweight.shape[-2] * 32 // w.bits
    return mma_words_apply(w.bits, w.zeros, kp, w.group_size or kp)


# Words per column chunk of a word-order conversion: its int64 code temporaries stay at a few MB (whole-matrix
# conversions of an 8192 x 2048 layer took ~0.5 GB at once, on the GPU while quantizing on load)
CONVERT_CHUNK_WORDS = 1 << 18


def _words_2d(convert, qweight: torch.Tensor) -> torch.Tensor:
    """Apply a (Kp*bits/32, N) word conversion to qweight [..., Kp*bits/32, N] (stacked experts: E leading),
    one chunk of columns at a time (the conversions are per column)."""
    if qweight.dim() != 2:
        flat = qweight.movedim(-2, 0)
        out = _words_2d(convert, flat.reshape(flat.shape[0], -1)).reshape(flat.shape)
        return out.movedim(0, -2).contiguous()
    rows, n = qweight.shape
    step = max(1, CONVERT_CHUNK_WORDS // max(rows, 1))
    if step >= n:
        return convert(qweight)
    out = torch.empty_like(qweight)
    for n0 in range(0, n, step):
        out[:, n0:n0 + step] = convert(qweight[:, n0:n0 + step])
    return out


def _plane_slots(q: torch.Tensor, bits: int):
    """(Kp, [(bit offset, width, natural k of each storage slot)] per plane) of a (Kp*bits/32, N) qweight."""
    kp = q.shape[0] * 32 // bits
    if kp % mma_chunk(bits):
        raise FormatError(f"the mma word order of {bits}-bit codes needs Kp % {mma_chunk(bits)} == 0, got Kp={kp}")
    out, off = [], 0
    for p in bit_planes(bits):
        out.append((off, p, mma_natural_k(torch.arange(kp, device=q.device), p)))
        off += p
    return kp, out


def to_mma_words(qweight: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """qweight [..., Kp*bits/32, N] in the natural order -> the same codes in the mma word order."""
    def convert(q):
        kp, planes = _plane_slots(q, bits)
        codes = unpack(q, bits, kp).to(torch.int32)
        out = torch.zeros_like(codes)
        for off, p, natural in planes:  # slot s of plane i holds plane i's bits of channel natural[s]
            out |= ((codes[:, natural] >> off) & ((1 << p) - 1)) << off
        return pack(out, bits)
    return _words_2d(convert, qweight)


def from_mma_words(qweight: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Inverse of ``to_mma_words``."""
    def convert(q):
        kp, planes = _plane_slots(q, bits)
        codes = unpack(q, bits, kp).to(torch.int32)
        natural = torch.zeros_like(codes)
        for off, p, nat in planes:
            natural[:, nat] |= ((codes >> off) & ((1 << p) - 1)) << off
        return pack(natural, bits)
    return _words_2d(convert, qweight)


def natural_words(qweight: torch.Tensor, k_order: int, bits: int = 4) -> torch.Tensor:
    """qweight held in word order ``k_order`` (0 natural, 1 mma) -> the natural order."""
    return from_mma_words(qweight, bits) if k_order else qweight


def runtime_words(qweight: torch.Tensor, applies: bool, bits: int = 4):
    """(qweight in the order lowbit runs, its k_order): the mma word order when ``applies``."""
    return (to_mma_words(qweight, bits), 1) if applies else (qweight, 0)


def _round_scale_up(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast fp32 scales to ``dtype`` never rounding down (so the code range still covers the group)."""
    st = s.to(dtype)
    low = st.float() < s
    if bool(low.any()):
        st = torch.where(low, (s * (1 + torch.finfo(dtype).eps)).to(dtype), st)
    return st


def quantize_groups(wg: torch.Tensor, vg: torch.Tensor, bits: int, symmetric: bool, zero_kind: str,
                    scale_dtype: torch.dtype):
    """Round-to-nearest codes of grouped values: wg (N, G, L) fp32, vg (N, G, L) bool (False = padding,
    ignored by the statistics, code 0) -> (q uint8 (N, G, L), scales (N, G) in ``scale_dtype``,
    stored zeros (N, G) or None). |w - (q - z) * s| <= s / 2 for every valid value."""
    mx = torch.where(vg, wg, -math.inf).amax(dim=2)  # (N, G)
    mn = torch.where(vg, wg, math.inf).amin(dim=2)
    qmax = 2**bits - 1
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        amax = torch.maximum(mx.abs(), mn.abs())
        zero = symmetric_zero(bits)
        s = amax / (qmax - zero) if bits > 1 else 2 * amax
        s = _round_scale_up(s.clamp_min(tiny), scale_dtype)
        z_store, z = None, torch.full_like(mx, zero)
    elif zero_kind == "int":
        mn, mx = mn.clamp(max=0), mx.clamp(min=0)  # keeps z in [0, qmax]
        s = _round_scale_up(((mx - mn) / qmax).clamp_min(tiny), scale_dtype)
        z = torch.round(-mn / s.float()).clamp(0, qmax)
        z_store = z.to(torch.uint8)
    else:
        s = (mx - mn) / qmax
        s = torch.where(s > 0, s, mx.abs().clamp_min(1.0) / qmax)
        s = _round_scale_up(s, scale_dtype)
        z_store = (-mn / s.float()).to(scale_dtype)
        z = z_store.float()
    sf = s.float()
    q = torch.round(wg / sf.unsqueeze(2) + z.unsqueeze(2)).clamp(0, qmax)
    q = torch.where(vg, q, torch.zeros_like(q)).to(torch.uint8)
    return q, s, z_store


@dataclass
class IntxWeight:
    """A packed intx weight. See the module docstring for the layout."""

    qweight: torch.Tensor  # int32 (Kp*bits//32, N)
    scales: torch.Tensor  # (G, N) fp16/bf16/fp32
    zeros: Optional[torch.Tensor]  # None (symmetric) | uint8 (G, N) | scale dtype (G, N)
    bits: int
    group_size: Optional[int]
    in_features: int
    format_name: str = field(default="intx", init=False)

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        check_group_size(self.group_size)
        kp, n = self.padded_in_features, self.out_features
        if self.qweight.dtype != torch.int32 or tuple(self.qweight.shape) != (kp * self.bits // 32, n):
            raise FormatError(
                f"qweight must be int32 ({kp * self.bits // 32}, {n}) for K={self.in_features}, "
                f"bits={self.bits}, group_size={self.group_size}; got "
                f"{self.qweight.dtype} {tuple(self.qweight.shape)}"
            )
        if self.scales.dtype not in SCALE_DTYPES or tuple(self.scales.shape) != (self.num_groups, n):
            raise FormatError(
                f"scales must be fp16/bf16/fp32 of shape ({self.num_groups}, {n}); got "
                f"{self.scales.dtype} {tuple(self.scales.shape)}"
            )
        if self.zeros is not None:
            if self.zeros.dtype not in (torch.uint8, self.scales.dtype):
                raise FormatError(
                    f"zeros must be uint8 (integer zero points) or {self.scales.dtype} (float zero "
                    f"points), got {self.zeros.dtype}"
                )
            if tuple(self.zeros.shape) != tuple(self.scales.shape):
                raise FormatError(f"zeros shape {tuple(self.zeros.shape)} != scales shape")

    @property
    def out_features(self) -> int:
        return self.qweight.shape[1]

    @property
    def padded_in_features(self) -> int:
        return self.qweight.shape[0] * 32 // self.bits

    @property
    def group_len(self) -> int:
        """Number of k per group (Kp for per-channel)."""
        return self.padded_in_features if self.group_size is None else self.group_size

    @property
    def num_groups(self) -> int:
        return self.padded_in_features // self.group_len

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def zero_kind(self) -> Optional[str]:
        if self.zeros is None:
            return None
        return "int" if self.zeros.dtype == torch.uint8 else "float"

    def codes(self) -> torch.Tensor:
        """Unpacked codes (N, Kp) uint8."""
        return unpack(self.qweight, self.bits, self.padded_in_features)

    def zero_points(self) -> torch.Tensor:
        """Zero points (G, N) fp32 (the implicit constant for symmetric)."""
        if self.zeros is None:
            return torch.full_like(self.scales, symmetric_zero(self.bits), dtype=torch.float32)
        return self.zeros.float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Dense (N, K) weight: (q - z) * s in fp32, then cast to ``dtype``."""
        q = self.codes().float()  # (N, Kp)
        gl = self.group_len
        s = self.scales.float().t().repeat_interleave(gl, dim=1)  # (N, Kp)
        z = self.zero_points().t().repeat_interleave(gl, dim=1)
        return ((q - z) * s)[:, : self.in_features].to(dtype)

    def tensors(self) -> Dict[str, torch.Tensor]:
        out = {"qweight": self.qweight, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def meta(self) -> Dict[str, object]:
        return {
            "format": "intx",
            "layout_version": LAYOUT_VERSION,
            "bits": self.bits,
            "group_size": self.group_size,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def ideal_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> "IntxWeight":
        return IntxWeight(
            self.qweight.to(device),
            self.scales.to(device),
            None if self.zeros is None else self.zeros.to(device),
            self.bits,
            self.group_size,
            self.in_features,
        )


@register_format
@dataclass(frozen=True)
class IntxFormat:
    """Group-wise n-bit integer quantization; see the module docstring."""

    bits: int = 4
    group_size: Optional[int] = 128
    symmetric: bool = False
    zero_kind: str = "int"
    scale_dtype: torch.dtype = torch.bfloat16
    name = "intx"

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        check_group_size(self.group_size)
        if self.zero_kind not in ZERO_KINDS:
            raise FormatError(f"zero_kind must be one of {ZERO_KINDS}, got {self.zero_kind!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise FormatError(f"scale_dtype must be fp16, bf16 or fp32, got {self.scale_dtype}")

    def quantize(self, weight: torch.Tensor) -> IntxWeight:
        """Round-to-nearest quantization of a dense (N, K) weight; |w - dequant| <= s/2."""
        if weight.dim() != 2 or not weight.is_floating_point():
            raise FormatError(f"weight must be a 2-D float tensor (N, K), got {tuple(weight.shape)} {weight.dtype}")
        if not torch.isfinite(weight).all():
            raise FormatError("weight contains NaN or Inf; cannot quantize")
        n, k = weight.shape
        kp = padded_k(k, self.group_size)
        gl = kp if self.group_size is None else self.group_size
        g = kp // gl
        w = torch.zeros(n, kp, dtype=torch.float32, device=weight.device)
        w[:, :k] = weight.float()
        valid = torch.zeros(n, kp, dtype=torch.bool, device=weight.device)
        valid[:, :k] = True
        wg, vg = w.view(n, g, gl), valid.view(n, g, gl)
        q, s, z_store = quantize_groups(wg, vg, self.bits, self.symmetric, self.zero_kind, self.scale_dtype)
        q = q.view(n, kp)
        return IntxWeight(
            pack(q, self.bits),
            s.t().contiguous(),
            None if z_store is None else z_store.t().contiguous(),
            self.bits,
            self.group_size,
            k,
        )
