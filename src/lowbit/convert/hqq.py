"""HQQ checkpoints (``hqq`` ``Quantizer`` / ``HQQLinear``, transformers' HQQ integration) -> intx.

One linear layer: ``W_q`` plus ``meta`` (nbits, group_size, axis, shape = (N, K), scale, zero,
packing, view_as_float, channel_wise). HQQ quantizes the float weight W (N, K) after
``W.reshape(-1, group_size)`` (axis=1: every row is group_size consecutive k of one output channel,
row r = n * K/group_size + g) and keeps float zero points::

    w = (W_q_unpacked - zero) * scale,   scale and zero (N*K/group_size, 1), one per row

so the intx weight has float zeros (in the scale dtype), scales/zeros reshaped to (N, G) and
transposed to (G, N). axis=0 groups run along the output channels and cannot be represented.

Packing splits the rows (dim 0) of the unpacked (R, C) codes into equal slices, the first slice in
the highest bits: ``"4bit_u8"`` byte = q[r] << 4 | q[r + R/2]; ``"2bit_u8"`` four slices at shifts
6, 4, 2, 0; ``"1bit_u8"`` eight at 7..0; ``"8bit_u8"`` one code per byte (also nbits 5 and 6);
``"3bit_32"`` int32, ten slices at shifts 27, 24, ..., 0 over rows padded to a multiple of 10.
nbits 1.58 (ternary codes 0..2) is stored as 2 bits. ``view_as_float`` stores the packed bytes
viewed as the compute dtype; ``packing=None`` stores the codes unpacked.

Sources: hqq ``hqq/core/quantize.py`` (``Quantizer.quantize``/``dequantize``, ``HQQLinear.state_dict``),
``hqq/core/bitpack.py`` (``BitPack``), ``hqq/core/utils.py`` (``encode_safetensor_type``).
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Tuple

import torch

from ..errors import FormatError
from ..formats.intx import IntxWeight
from ._common import intx_from_codes, normalize_group_size

# packing -> (field bits, container dtype)
PACKINGS = {
    "8bit_u8": (8, torch.uint8),
    "4bit_u8": (4, torch.uint8),
    "2bit_u8": (2, torch.uint8),
    "1bit_u8": (1, torch.uint8),
    "3bit_32": (3, torch.int32),
}
NBITS_PACKING = {8: "8bit_u8", 6: "8bit_u8", 5: "8bit_u8", 4: "4bit_u8", 3: "3bit_32", 2: "2bit_u8",
                 1.58: "2bit_u8", 1: "1bit_u8"}


def _value(meta: Mapping, key: str, kind: str, default=None):
    """A meta entry as a Python value; accepts HQQ's tensor encoding (``encode_safetensor_type``)."""
    v = meta.get(key, default)
    if not isinstance(v, torch.Tensor):
        return v
    if kind == "str":
        return "".join(chr(int(c)) for c in v.flatten().tolist())
    if kind == "shape":
        return tuple(int(s) for s in v.flatten().tolist())
    if kind == "bool":
        return bool(v.item())
    if kind == "number":
        return v.item()
    raise AssertionError(kind)


def _unpack_rows(w_q: torch.Tensor, packing: str) -> torch.Tensor:
    """Packed (S, C) -> codes (S * slices, C) uint8, HQQ's row-slice order."""
    bits, container = PACKINGS[packing]
    if w_q.dtype != container or w_q.dim() != 2:
        raise FormatError(f"W_q for packing {packing!r} must be 2-D {container}, got {w_q.dtype} {tuple(w_q.shape)}")
    if packing == "3bit_32":
        slices, top = 10, 27
    else:
        slices, top = 8 // bits, 8 - bits
    w = w_q.to(torch.int64) & 0xFFFFFFFF
    mask = (1 << bits) - 1
    return torch.cat([((w >> (top - bits * i)) & mask).to(torch.uint8) for i in range(slices)], dim=0)


def hqq_to_intx(w_q: torch.Tensor, meta: Mapping) -> IntxWeight:
    """Repack one HQQ-quantized weight (``W_q``, ``meta``) into intx with float zero points.

    ``meta`` holds Python values (``Quantizer.quantize``'s meta) or HQQ's tensor encoding (the
    entries of ``HQQLinear.state_dict()``). ``scale``/``zero`` keep their dtype when both share one
    of fp16/bf16/fp32; otherwise both are widened to fp32 (exact).
    """
    if _value(meta, "quant_scale", "bool", False) or _value(meta, "quant_zero", "bool", False):
        raise FormatError("HQQ meta with quantized scale/zero (quant_scale/quant_zero) is not supported")
    if _value(meta, "offload_meta", "bool", False):
        raise FormatError("HQQ offload_meta=True is not supported")
    nbits = _value(meta, "nbits", "number")
    nbits = 1.58 if nbits is not None and abs(float(nbits) - 1.58) < 1e-3 else nbits
    if nbits not in NBITS_PACKING:
        raise FormatError(f"HQQ nbits must be one of {sorted(NBITS_PACKING)}, got {nbits!r}")
    bits = 2 if nbits == 1.58 else int(nbits)
    axis = int(_value(meta, "axis", "number", 1))
    if axis != 1:
        raise FormatError(
            "HQQ axis=0 groups run along the output channels; intx groups run along K (axis=1). "
            "This layer cannot be repacked without requantizing."
        )
    shape = _value(meta, "shape", "shape")
    if shape is None or len(shape) != 2:
        raise FormatError(f"HQQ meta 'shape' must be the 2-D weight shape (N, K), got {shape!r}")
    n, k = shape
    channel_wise = _value(meta, "channel_wise", "bool", True)
    gs_raw = _value(meta, "group_size", "number")
    gs = normalize_group_size(None if gs_raw is None else int(gs_raw), "HQQ group_size")
    if gs is not None and channel_wise and k % gs:
        raise FormatError(f"HQQ group_size={gs} does not divide K={k}: its groups would straddle output channels")
    rows, cols = (n * k // gs, gs) if (gs is not None and channel_wise) else (n, k)

    # An absent "packing" means HQQ's default for nbits; an explicit None means bitpack=False.
    packing = _value(meta, "packing", "str") if "packing" in meta else NBITS_PACKING[nbits]
    if packing is None:
        if w_q.is_floating_point() and not torch.equal(w_q, w_q.round()):
            raise FormatError("unpacked HQQ W_q (packing=None) must hold integer codes")
        codes = w_q.to(torch.int64)
    else:
        if packing not in PACKINGS:
            raise FormatError(f"unknown HQQ packing {packing!r}; known: {sorted(PACKINGS)}")
        if _value(meta, "view_as_float", "bool", False):
            w_q = w_q.view(PACKINGS[packing][1])
        codes = _unpack_rows(w_q, packing)
        if packing == "3bit_32":
            codes = codes[:rows]  # rows were padded to a multiple of 10
    if tuple(codes.shape) != (rows, cols):
        raise FormatError(
            f"HQQ W_q unpacks to {tuple(codes.shape)} codes, expected {(rows, cols)} for shape {(n, k)}, "
            f"group_size={gs}"
        )
    codes = codes.reshape(n, k)

    scale, zero = meta.get("scale"), meta.get("zero")
    if not isinstance(scale, torch.Tensor) or not isinstance(zero, torch.Tensor):
        raise FormatError("HQQ meta must hold 'scale' and 'zero' tensors")
    if scale.dtype != zero.dtype or scale.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        scale, zero = scale.float(), zero.float()
    g = 1 if gs is None else k // gs
    if not channel_wise:
        if scale.numel() != 1 or zero.numel() != 1:
            raise FormatError("HQQ channel_wise=False needs a single scale and zero")
        scales, zeros = scale.reshape(1, 1).expand(1, n), zero.reshape(1, 1).expand(1, n)
    else:
        if scale.numel() != n * g or zero.numel() != n * g:
            raise FormatError(
                f"HQQ scale/zero must hold one value per group ({n}*{g}), got {scale.numel()} and {zero.numel()}"
            )
        scales, zeros = scale.reshape(n, g).t(), zero.reshape(n, g).t()
    return intx_from_codes(codes, scales.contiguous(), zeros.contiguous(), bits, gs if channel_wise else None)


def hqq_state_dict_to_intx(state_dict: Mapping[str, torch.Tensor]) -> Tuple[IntxWeight, Optional[torch.Tensor]]:
    """``HQQLinear.state_dict()`` (keys W_q, scale, zero, nbits, ..., optional bias) -> (weight, bias)."""
    if "W_q" not in state_dict:
        raise FormatError(f"an HQQLinear state dict needs 'W_q'; got keys {sorted(state_dict)}")
    meta: Dict = {key: v for key, v in state_dict.items() if key not in ("W_q", "bias")}
    return hqq_to_intx(state_dict["W_q"], meta), state_dict.get("bias")
