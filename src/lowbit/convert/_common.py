"""Shared pieces of the converters: unpacking foreign int32 words, act-order permutations, and
building an ``IntxWeight`` from unpacked codes without touching their values."""
from __future__ import annotations

from typing import Optional

import torch

from ..errors import FormatError
from ..formats.intx import SCALE_DTYPES, IntxWeight, pack, padded_k

_CHUNK = 1 << 22  # elements per chunk of the unpack/pack loops (bounds the int64 temporaries)


def as_int32(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dtype != torch.int32 or t.dim() != 2:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise FormatError(f"{name} must be a 2-D int32 tensor, got {got}")
    return t


def check_shape(t: torch.Tensor, shape, name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def check_scales(scales: torch.Tensor, name: str = "scales") -> torch.Tensor:
    if not isinstance(scales, torch.Tensor) or scales.dtype not in SCALE_DTYPES:
        got = scales.dtype if isinstance(scales, torch.Tensor) else type(scales).__name__
        raise FormatError(f"{name} must be fp16, bf16 or fp32, got {got}")
    return scales


def normalize_group_size(group_size: Optional[int], name: str = "group_size") -> Optional[int]:
    """-1 / None / 0 -> None (per-channel); otherwise a positive multiple of 32 (intx groups)."""
    if group_size is None or group_size in (-1, 0):
        return None
    if not isinstance(group_size, int) or group_size <= 0:
        raise FormatError(f"{name} must be a positive int or -1 (per-channel), got {group_size!r}")
    if group_size % 32:
        raise FormatError(
            f"{name}={group_size} is not a multiple of 32; lowbit's intx groups must be (the "
            f"checkpoint cannot be represented without requantizing)"
        )
    return group_size


def num_groups(in_features: int, group_size: Optional[int]) -> int:
    return 1 if group_size is None else -(-in_features // group_size)


def unpack_bitstream(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """int32 words (R, W) -> uint8 values (R, count), unpacked along the last dim.

    The words of a row form one little-endian bit stream: value i occupies stream bits
    [i*bits, (i+1)*bits), stream bit p is bit p % 32 of word p // 32, so a value may straddle two
    words (bits 3, 5, 6, 7). For bits 1, 2, 4, 8 this is the plain "32 // bits values per word,
    lowest value in the lowest bits" layout.
    """
    need = -(-count * bits // 32)
    if words.shape[-1] < need:
        raise FormatError(f"{words.shape[-1]} int32 words per row cannot hold {count} {bits}-bit values")
    pos = torch.arange(count, device=words.device, dtype=torch.int64) * bits
    lo_word, off = pos // 32, pos % 32
    hi_word = (lo_word + 1).clamp(max=words.shape[-1] - 1)
    mask = (1 << bits) - 1
    out = torch.empty(words.shape[0], count, dtype=torch.uint8, device=words.device)
    step = max(1, _CHUNK // max(count, 1))
    for r0 in range(0, words.shape[0], step):
        w = words[r0 : r0 + step].to(torch.int64) & 0xFFFFFFFF
        # The high part only matters when the value straddles; otherwise the mask drops it.
        vals = (w[:, lo_word] >> off) | (w[:, hi_word] << (32 - off))
        out[r0 : r0 + step] = (vals & mask).to(torch.uint8)
    return out


def unpack_word_aligned(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """int32 words (R, W) -> uint8 values (R, count): ``32 // bits`` values per word, value i in
    word i // per at bit (i % per) * bits, the top ``32 % bits`` bits of each word unused."""
    per = 32 // bits
    if words.shape[-1] < -(-count // per):
        raise FormatError(f"{words.shape[-1]} int32 words per row cannot hold {count} {bits}-bit values")
    idx = torch.arange(count, device=words.device, dtype=torch.int64)
    word, shift = idx // per, (idx % per) * bits
    mask = (1 << bits) - 1
    out = torch.empty(words.shape[0], count, dtype=torch.uint8, device=words.device)
    step = max(1, _CHUNK // max(count, 1))
    for r0 in range(0, words.shape[0], step):
        w = words[r0 : r0 + step].to(torch.int64) & 0xFFFFFFFF
        out[r0 : r0 + step] = ((w[:, word] >> shift) & mask).to(torch.uint8)
    return out


def group_permutation(
    g_idx: Optional[torch.Tensor], in_features: int, group_size: Optional[int]
) -> Optional[torch.Tensor]:
    """Act-order: column k belongs to group ``g_idx[k]``. Returns ``perm`` (int64, (K,)) such that
    column ``perm[i]`` belongs to group ``i // group_size`` (groups contiguous, as intx needs), or
    None when g_idx is already ``k // group_size``. The layer then computes ``x[..., perm] @ W'^T``
    with ``W' = W[:, perm]``. Raises when some group does not hold exactly ``group_size`` columns
    (the last may hold fewer): such a g_idx has no contiguous-group equivalent."""
    if g_idx is None:
        return None
    if not isinstance(g_idx, torch.Tensor) or g_idx.dim() != 1 or g_idx.shape[0] != in_features:
        got = tuple(g_idx.shape) if isinstance(g_idx, torch.Tensor) else type(g_idx).__name__
        raise FormatError(f"g_idx must be a 1-D integer tensor of length in_features={in_features}, got {got}")
    if g_idx.is_floating_point() or g_idx.is_complex():
        raise FormatError(f"g_idx must be integer, got {g_idx.dtype}")
    g = g_idx.to(torch.int64).cpu()
    gl = in_features if group_size is None else group_size
    expected = torch.arange(in_features, dtype=torch.int64) // gl
    if torch.equal(g, expected):
        return None
    groups = num_groups(in_features, group_size)
    if int(g.min()) < 0 or int(g.max()) >= groups:
        raise FormatError(f"g_idx values must lie in [0, {groups}), got [{int(g.min())}, {int(g.max())}]")
    perm = torch.argsort(g, stable=True)
    if not torch.equal(g[perm], expected):
        counts = torch.bincount(g, minlength=groups).tolist()
        raise FormatError(
            f"g_idx does not give every group exactly group_size={gl} columns (counts {counts}); "
            f"it cannot be turned into contiguous groups by a permutation"
        )
    return perm.to(g_idx.device)


def intx_from_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: Optional[torch.Tensor],
    bits: int,
    group_size: Optional[int],
) -> IntxWeight:
    """Pack codes (N, K) into intx with scales (G, N) and zero points (G, N).

    ``zeros``: None (symmetric, implicit 2**(bits-1)), an integer tensor (stored uint8 when every
    value lies in [0, 2**bits - 1]; otherwise, e.g. GPTQ v1's wrapped zero 2**bits, as exact
    floats in the scale dtype) or a float tensor (cast to the scale dtype, which must be exact).
    """
    n, k = codes.shape
    kp = padded_k(k, group_size)
    check_scales(scales)
    g = num_groups(k, group_size)
    check_shape(scales, (g, n), "scales")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise FormatError(f"codes out of range for {bits} bits")
    words = []
    step = max(1, _CHUNK // kp)
    for n0 in range(0, n, step):
        chunk = torch.zeros(min(step, n - n0), kp, dtype=torch.uint8, device=codes.device)
        chunk[:, :k] = codes[n0 : n0 + step]
        words.append(pack(chunk, bits))
    qweight = torch.cat(words, dim=1) if len(words) > 1 else words[0]
    return IntxWeight(qweight, scales.contiguous(), _store_zeros(zeros, scales, bits), bits, group_size, k)


def _store_zeros(zeros: Optional[torch.Tensor], scales: torch.Tensor, bits: int) -> Optional[torch.Tensor]:
    if zeros is None:
        return None
    check_shape(zeros, scales.shape, "zero points")
    if zeros.is_floating_point():
        z = zeros.to(scales.dtype)
        if not torch.equal(z.to(zeros.dtype), zeros):
            raise FormatError(f"float zero points are not exactly representable in {scales.dtype}")
        return z.contiguous()
    z = zeros.to(torch.int64)
    if int(z.min()) >= 0 and int(z.max()) < 2**bits:
        return z.to(torch.uint8).contiguous()
    zf = z.to(scales.dtype)
    if not torch.equal(zf.to(torch.int64), z):
        raise FormatError(
            f"integer zero points in [{int(z.min())}, {int(z.max())}] are outside [0, {2**bits - 1}] and "
            f"not exactly representable as {scales.dtype} floats"
        )
    return zf.contiguous()
