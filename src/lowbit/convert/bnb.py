"""bitsandbytes 4-bit (NF4 / FP4) tensors -> ``LutWeight`` without requantizing.

bitsandbytes' ``functional.quantize_4bit`` flattens W (N, K) row-major, cuts it into blocks of
``blocksize`` consecutive values with one fp32 ``absmax`` each, and packs two 4-bit codes per uint8,
element 2i in the **high** nibble and 2i+1 in the low one (``packed`` is (N*K/2, 1), possibly viewed as
another ``quant_storage`` dtype). ``dequantize_4bit`` computes ``code[q] * absmax`` in fp32, ``code``
being the 16-entry ``quant_map`` (QuantState.code). With ``compress_statistics`` (double
quantization, QuantState.nested) absmax itself is stored as uint8 codes of an 8-bit blockwise format:
``absmax = dequantize_blockwise(qabsmax, state2) + offset``, i.e.
``code2[qabsmax] * absmax2[block of blocksize2]`` in fp32, then ``+ offset`` (fp32).

Here: blocks become groups (group_size = blocksize, which needs K % blocksize == 0 so no block
straddles two rows, and blocksize % 32 == 0), the codes are repacked into the intx bit layout, the
fp32 absmax (after undoing the double quantization exactly as above) are the scales and
``quant_map`` is a global table, so ``LutWeight.dequantize()`` equals bitsandbytes' formula bit for bit.
Read from bitsandbytes 0.50 (``backends/default/ops.py``: ``quantize_4bit``, ``dequantize_4bit``,
``dequantize_blockwise``; ``functional.dequantize_4bit``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..errors import FormatError
from ..formats.intx import pack
from ..formats.lut import LutWeight


def bnb_absmax(absmax: torch.Tensor, code2: Optional[torch.Tensor] = None, absmax2: Optional[torch.Tensor] = None,
               blocksize2: int = 256, offset: Optional[float] = None) -> torch.Tensor:
    """fp32 absmax per block, undoing bitsandbytes' double quantization when ``code2`` is given."""
    if code2 is None:
        if absmax.dtype != torch.float32:
            raise FormatError(f"absmax must be float32 (or uint8 with code2/absmax2/offset), got {absmax.dtype}")
        return absmax.reshape(-1)
    if absmax.dtype != torch.uint8 or absmax2 is None or offset is None:
        raise FormatError("double-quantized absmax needs uint8 absmax, code2, absmax2 and offset")
    if code2.dtype != torch.float32 or code2.numel() != 256 or absmax2.dtype != torch.float32:
        raise FormatError(f"code2 must be 256 float32 values and absmax2 float32, got {code2.dtype} "
                          f"{tuple(code2.shape)}, {absmax2.dtype}")
    vals = code2[absmax.reshape(-1).long()]
    n = vals.numel()
    full = n - n % blocksize2
    if absmax2.numel() != -(-n // blocksize2):
        raise FormatError(f"absmax2 must hold {-(-n // blocksize2)} values for {n} codes in blocks of "
                          f"{blocksize2}, got {absmax2.numel()}")
    out = torch.empty(n, dtype=torch.float32, device=vals.device)
    out[:full] = (vals[:full].view(-1, blocksize2) * absmax2[: full // blocksize2].view(-1, 1)).reshape(-1)
    if full < n:
        out[full:] = vals[full:] * absmax2[-1]
    off = offset if isinstance(offset, torch.Tensor) else torch.tensor(offset, dtype=torch.float32)
    return out + off.to(torch.float32)


def bnb_4bit_to_lut(packed: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], blocksize: int,
                    quant_map: torch.Tensor) -> LutWeight:
    """bitsandbytes 4-bit tensors (fp32 ``absmax``, see ``bnb_absmax`` for nested ones) -> LutWeight."""
    if len(shape) != 2:
        raise FormatError(f"shape must be (out_features, in_features), got {tuple(shape)}")
    n, k = int(shape[0]), int(shape[1])
    if not isinstance(blocksize, int) or blocksize <= 0 or blocksize % 32 or k % blocksize:
        raise FormatError(f"blocksize must be a multiple of 32 dividing in_features={k} (a block may not "
                          f"straddle two rows), got {blocksize!r}")
    if quant_map.dtype != torch.float32 or quant_map.numel() != 16:
        raise FormatError(f"quant_map must be 16 float32 values, got {quant_map.dtype} {tuple(quant_map.shape)}")
    raw = packed.contiguous().view(torch.uint8).reshape(-1)
    if raw.numel() != n * k // 2:
        raise FormatError(f"packed must hold N*K/2 = {n * k // 2} bytes, got {raw.numel()}")
    g = k // blocksize
    scales = bnb_absmax(absmax) if absmax.dtype == torch.float32 else None
    if scales is None or scales.numel() != n * g:
        raise FormatError(f"absmax must be {n * g} float32 values (one per block), got {absmax.dtype} "
                          f"{tuple(absmax.shape)}")
    codes = torch.stack([raw >> 4, raw & 0xF], dim=1).reshape(n, k)  # element 2i: high nibble
    return LutWeight(pack(codes, 4), scales.view(n, g).t().contiguous(),
                     quant_map.reshape(1, 1, 16).contiguous(), 4, blocksize, k)


def bnb_quant_state_to_lut(packed: torch.Tensor, quant_state) -> LutWeight:
    """Same from a bitsandbytes ``QuantState`` (read by attribute; bitsandbytes is not imported)."""
    absmax = quant_state.absmax
    if getattr(quant_state, "nested", False):
        s2 = quant_state.state2
        absmax = bnb_absmax(absmax, s2.code, s2.absmax, s2.blocksize, quant_state.offset)
    return bnb_4bit_to_lut(packed, absmax, tuple(quant_state.shape), quant_state.blocksize, quant_state.code)
