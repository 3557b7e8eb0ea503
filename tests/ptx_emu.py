"""A tiny interpreter for the straight-line PTX of lowbit's inline-asm dequantizers (CPU tests).

Runs the exact asm text of ``lowbit.kernels.unpack`` on Python ints for the handful of instructions
it uses (mov, and, shr, shl, prmt, lop3, fma.rn.{f16x2,bf16x2}, sub/mul.f32, cvt.rn.bf16x2.f32), so selector and truth-table mistakes
show up without a GPU. prmt / lop3 follow the PTX ISA (default prmt mode: byte index in bits 0-2 of
each selector nibble, bit 3 replicates the selected byte's sign bit).
"""
from __future__ import annotations

import re
from typing import Dict, List

import torch

MASK = 0xFFFFFFFF


def _prmt(a: int, b: int, c: int) -> int:
    src = ((b & MASK) << 32) | (a & MASK)
    out = 0
    for i in range(4):
        sel = (c >> (4 * i)) & 0xF
        byte = (src >> (8 * (sel & 7))) & 0xFF
        if sel & 8:
            byte = 0xFF if byte & 0x80 else 0
        out |= byte << (8 * i)
    return out


def _lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        idx = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> idx) & 1) << bit
    return out


def _halves_to_float(v: int, dtype: torch.dtype) -> List[float]:
    t = torch.tensor([v & 0xFFFF, (v >> 16) & 0xFFFF], dtype=torch.int32).to(torch.int16).view(dtype)
    return t.double().tolist()


def _float_to_halves(vals: List[float], dtype: torch.dtype) -> int:
    t = torch.tensor(vals, dtype=torch.float64).to(dtype).view(torch.int16).to(torch.int32) & 0xFFFF
    return int(t[0]) | (int(t[1]) << 16)


def _f32(v: int) -> float:
    return float(torch.tensor([v & MASK], dtype=torch.int64).to(torch.int32).view(torch.float32))


def _f32_bits(x: float) -> int:
    """x rounded to fp32 (as the hardware's .rn result) -> its bits."""
    return int(torch.tensor([x], dtype=torch.float64).to(torch.float32).view(torch.int32)) & MASK


def run(asm: str, inputs: List[int], n_out: int) -> List[int]:
    """Execute ``asm`` with $0..$(n_out-1) as outputs and the following $i bound to ``inputs``."""
    regs: Dict[str, int] = {f"${n_out + i}": v & MASK for i, v in enumerate(inputs)}

    def val(tok: str) -> int:
        tok = tok.strip()
        if tok in regs:
            return regs[tok]
        return int(tok, 0) & MASK

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if not line or line in "{}" or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in rest.split(",")]
        d, srcs = args[0], [val(a) for a in args[1:]]
        if op == "mov.b32":
            r = srcs[0]
        elif op == "and.b32":
            r = srcs[0] & srcs[1]
        elif op == "shr.u32":
            r = srcs[0] >> srcs[1]
        elif op == "shl.b32":
            r = (srcs[0] << srcs[1]) & MASK
        elif op == "prmt.b32":
            r = _prmt(*srcs)
        elif op == "lop3.b32":
            r = _lop3(*srcs)
        elif (m := re.fullmatch(r"fma\.rn\.(f16x2|bf16x2)", op)):
            dt = torch.float16 if m.group(1) == "f16x2" else torch.bfloat16
            a, b, c = (_halves_to_float(s, dt) for s in srcs)
            r = _float_to_halves([a[i] * b[i] + c[i] for i in range(2)], dt)
        elif op in ("sub.f32", "mul.f32"):
            a, b = (_f32(v) for v in srcs)
            r = _f32_bits(a - b if op == "sub.f32" else a * b)
        elif op == "cvt.rn.bf16x2.f32":  # d.hi = a, d.lo = b, each rounded to nearest even
            r = _float_to_halves([_f32(srcs[1]), _f32(srcs[0])], torch.bfloat16)
        else:
            raise NotImplementedError(op)
        regs[d] = r & MASK
    return [regs[f"${i}"] for i in range(n_out)]
