"""compressed-tensors ``pack-quantized`` checkpoints (llm-compressor W4A16/W8A16 etc.) -> intx.

Tensors of one linear layer (K = in_features, N = out_features; ``weight_shape`` = [N, K])::

    weight_packed      int32 (N, words(K))   signed codes q in [-2**(b-1), 2**(b-1)) stored as
                                             u = q + 2**(b-1), packed along K (row-major, per row)
    weight_scale       (N, G) group | (N, 1) channel | (1,) tensor strategy
    weight_zero_point  asymmetric only: signed zp, packed like the codes but along N
                       (int32 (words(N), G)); very old versions store it unpacked (int8 (N, G))
    weight_g_idx       optional (K,): group of input column k (``actorder: group``)

    w[n, k] = (q - zp) * scale = (u - (zp + 2**(b-1))) * scale

so intx codes are the stored fields u, the integer zero point is zp + 2**(b-1) (symmetric: the
implicit 2**(b-1)), and scales are transposed to (G, N).

Packing (``packing=``): ``"dense"`` (compressed-tensors >= 0.18): a little-endian bit stream, 32
values in exactly ``b`` words; ``"legacy"`` (<= 0.17): ``32 // b`` values per word, value i at bit
(i % per) * b, unused top bits. They differ only for b = 3, 5, 6, 7; ``"auto"`` tells them apart by
the number of words (and refuses when both fit). ``packing_for_version`` maps the ``version`` of a
checkpoint's quantization_config.

Sources: compressed-tensors ``compressed_tensors/compressors/pack_quantized/{base,helpers}.py``
(0.18-0.20; ``quantized_compressors/pack_quantized.py`` and the 0.15-0.17 helpers for the legacy
layout), ``compressed_tensors/quantization/lifecycle/forward_helpers.py`` (``_dequantize``; the
0.17 ``_process_group`` for g_idx), vLLM ``.../compressed_tensors/schemes/compressed_tensors_wNa16.py``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from ..errors import FormatError
from ..formats.intx import IntxWeight
from ._common import (
    check_scales, check_shape, group_permutation, intx_from_codes, normalize_group_size, num_groups,
    unpack_bitstream, unpack_word_aligned,
)

PACKINGS = ("auto", "dense", "legacy")
STRATEGIES = ("group", "channel", "tensor")


def packing_for_version(version: Optional[str]) -> str:
    """compressed-tensors version string (quantization_config["version"]) -> "dense" | "legacy"."""
    if not version:
        return "auto"
    parts = []
    for p in str(version).split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return "dense" if tuple(parts) >= (0, 18) else "legacy"


def _words(count: int, bits: int, packing: str) -> int:
    return -(-count * bits // 32) if packing == "dense" else -(-count // (32 // bits))


def _resolve_packing(packing: str, bits: int, count: int, have: int, name: str) -> str:
    if packing not in PACKINGS:
        raise FormatError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if bits in (1, 2, 4, 8):
        return "dense"  # both layouts coincide
    if packing != "auto":
        return packing
    fits = [p for p in ("dense", "legacy") if _words(count, bits, p) == have]
    if len(fits) != 1:
        raise FormatError(
            f"cannot tell the {bits}-bit packing of {name} from its shape ({have} words for {count} values); "
            f"pass packing='dense' (compressed-tensors >= 0.18) or 'legacy'"
        )
    return fits[0]


def _unpack(words: torch.Tensor, bits: int, count: int, packing: str) -> torch.Tensor:
    fn = unpack_bitstream if packing == "dense" else unpack_word_aligned
    return fn(words, bits, count)


def compressed_tensors_to_intx(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_shape: Union[torch.Tensor, Sequence[int]],
    weight_zero_point: Optional[torch.Tensor] = None,
    weight_g_idx: Optional[torch.Tensor] = None,
    *,
    num_bits: int,
    strategy: str = "group",
    group_size: Optional[int] = None,
    symmetric: bool = True,
    packing: str = "auto",
) -> Tuple[IntxWeight, Optional[torch.Tensor]]:
    """Repack one ``pack-quantized`` layer into intx. The keyword arguments are the layer's
    ``weights`` quantization args (``num_bits``, ``strategy``, ``group_size``, ``symmetric``).

    Returns ``(weight, perm)``; ``perm`` is None unless ``weight_g_idx`` reorders K (act-order),
    in which case the caller must feed ``x[..., perm]``.
    """
    if not isinstance(num_bits, int) or not 1 <= num_bits <= 8:
        raise FormatError(f"num_bits must be an integer in 1..8, got {num_bits!r}")
    bits = num_bits
    if strategy not in STRATEGIES:
        raise FormatError(f"strategy must be one of {STRATEGIES} for int weights, got {strategy!r}")
    shape = tuple(int(s) for s in (weight_shape.tolist() if isinstance(weight_shape, torch.Tensor) else weight_shape))
    if len(shape) != 2:
        raise FormatError(f"weight_shape must be [N, K], got {shape}")
    n, k = shape
    gs = normalize_group_size(group_size, "group_size") if strategy == "group" else None
    if strategy == "group" and gs is None:
        raise FormatError("strategy='group' needs a group_size")
    g = num_groups(k, gs)
    if not isinstance(weight_packed, torch.Tensor) or weight_packed.dtype != torch.int32 or weight_packed.dim() != 2:
        raise FormatError("weight_packed must be a 2-D int32 tensor")
    if weight_packed.shape[0] != n:
        raise FormatError(f"weight_packed must have N={n} rows, got {tuple(weight_packed.shape)}")
    wpack = _resolve_packing(packing, bits, k, weight_packed.shape[1], "weight_packed")
    check_shape(weight_packed, (n, _words(k, bits, wpack)), "weight_packed")
    check_scales(weight_scale, "weight_scale")

    if strategy == "tensor":
        if weight_scale.numel() != 1:
            raise FormatError(f"strategy='tensor' needs one scale, got shape {tuple(weight_scale.shape)}")
        scales = weight_scale.reshape(1, 1).expand(1, n)
    else:
        if weight_scale.dim() == 1 and strategy == "channel":
            weight_scale = weight_scale.reshape(n, 1)
        check_shape(weight_scale, (n, g), "weight_scale")
        scales = weight_scale.t()

    offset = 2 ** (bits - 1)
    if symmetric:
        if weight_zero_point is not None and bool((weight_zero_point.to(torch.int64) != 0).any()):
            raise FormatError("symmetric=True but weight_zero_point holds non-zero values")
        # intx's implicit symmetric zero is 2**(b-1) except for b = 1 (0.5): store 1 explicitly there.
        zeros = None if bits > 1 else torch.ones(g, n, dtype=torch.int64)
    else:
        if weight_zero_point is None:
            raise FormatError("symmetric=False needs weight_zero_point")
        zeros = _zero_points(weight_zero_point, bits, n, g, strategy, packing) + offset

    perm = None
    if weight_g_idx is not None:
        g_idx = weight_g_idx
        if bool((g_idx.to(torch.int64) == -1).all()):
            g_idx = None  # compressed-tensors' placeholder for column order
        if strategy != "group" and g_idx is not None:
            raise FormatError(f"weight_g_idx only makes sense with strategy='group', got {strategy!r}")
        perm = group_permutation(g_idx, k, gs)

    codes = _unpack(weight_packed, bits, k, wpack)  # (N, K)
    if perm is not None:
        codes = codes[:, perm]
    return intx_from_codes(codes, scales.contiguous(), zeros, bits, gs), perm


def _zero_points(zp: torch.Tensor, bits: int, n: int, g: int, strategy: str, packing: str) -> torch.Tensor:
    """Signed zero points (G, N) int64 from the stored tensor."""
    if strategy == "tensor":
        if zp.numel() != 1:
            raise FormatError(f"strategy='tensor' needs one zero point, got shape {tuple(zp.shape)}")
        return zp.reshape(1, 1).to(torch.int64).expand(1, n)
    if zp.dim() == 1 and strategy == "channel":
        zp = zp.reshape(-1, 1)
    if zp.dtype == torch.int32 and zp.dim() == 2 and zp.shape[0] != n:
        zpack = _resolve_packing(packing, bits, n, zp.shape[0], "weight_zero_point")
        check_shape(zp, (_words(n, bits, zpack), g), "weight_zero_point")
        u = _unpack(zp.t().contiguous(), bits, n, zpack).to(torch.int64)  # (G, N), offset included
        return u - 2 ** (bits - 1)
    if zp.is_floating_point():
        raise FormatError(f"weight_zero_point must be integer, got {zp.dtype}")
    check_shape(zp, (n, g), "weight_zero_point (unpacked)")
    return zp.t().to(torch.int64)
