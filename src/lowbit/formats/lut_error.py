"""Quantization error (SQNR, dB) of the lookup-table formats vs uniform intx on model-shaped weights.

    PYTHONPATH=src python -m lowbit.formats.lut_error --shapes llama3-8b --max-rows 512

Weights: i.i.d. Gaussian (std 0.02) and heavy-tailed Student-t (3 degrees of freedom, x 0.02) of each
shape (N x K; ``max_rows`` keeps the first rows only: SQNR is a per-element average, so a row subset
of full-K rows estimates it without the k-means cost of a whole 28672 x 4096 layer).
Bits per weight include scales and tables (ideal bytes of the stored tensors x 8 / (N K)).
"""
from __future__ import annotations

import argparse
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .intx import IntxFormat
from .lut import CodebookFormat, Fp4Format, NF4Format, sqnr_db


def lut_formats(group_size: int = 64) -> Dict[str, object]:
    """Name -> format, all at ``group_size`` (FP4 e8m0: its MX block of 32), bf16 scales."""
    bf = torch.bfloat16
    return {
        "int4": IntxFormat(4, group_size, False, "int", bf),
        "int4-sym": IntxFormat(4, group_size, True, "int", bf),
        "nf4": NF4Format(group_size, bf),
        "fp4-e8m0-g32": Fp4Format(32, "e8m0", bf),
        "fp4-float": Fp4Format(group_size, "float", bf),
        "cb4-row": CodebookFormat(4, group_size, "row", bf),
        "int3": IntxFormat(3, group_size, False, "int", bf),
        "cb3-row": CodebookFormat(3, group_size, "row", bf),
        "int2": IntxFormat(2, group_size, False, "int", bf),
        "cb2-row": CodebookFormat(2, group_size, "row", bf),
    }


def make_weight(dist: str, n: int, k: int, seed: int = 0, device="cpu") -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed)
    if dist == "gaussian":
        w = torch.randn(n, k, generator=gen, device=device)
    elif dist == "student_t":  # t(3) = N / sqrt(chi2(3) / 3), from the seeded generator
        z = torch.randn(n, k, generator=gen, device=device)
        chi2 = torch.randn(3, n, k, generator=gen, device=device).pow(2).sum(0)
        w = z / (chi2 / 3).sqrt()
    else:
        raise ValueError(f"dist must be 'gaussian' or 'student_t', got {dist!r}")
    return w * 0.02


def error_table(shapes: Iterable[Tuple[str, int, int]], dists: Sequence[str] = ("gaussian", "student_t"),
                formats: Optional[Sequence[str]] = None, group_size: int = 64, max_rows: Optional[int] = None,
                seed: int = 0, device="cpu") -> List[Dict]:
    """Rows {shape, n, k, dist, format, bits_per_weight, sqnr_db, delta_vs_int4_db} (int4 = asymmetric
    uniform int4 at the same group size, the library's default W4 format)."""
    fmts = lut_formats(group_size)
    names = list(formats or fmts)
    rows = []
    for label, n, k in shapes:
        n_used = min(n, max_rows or n)
        for dist in dists:
            w = make_weight(dist, n_used, k, seed, device)
            base = sqnr_db(w, fmts["int4"].quantize(w).dequantize())
            for name in names:
                qw = fmts[name].quantize(w)
                db = sqnr_db(w, qw.dequantize())
                rows.append({"shape": label, "n": n, "k": k, "rows_used": n_used, "dist": dist, "format": name,
                             "bits_per_weight": round(8 * qw.ideal_nbytes() / (n_used * k), 3),
                             "sqnr_db": round(db, 2), "delta_vs_int4_db": round(db - base, 2)})
    return rows


def markdown(rows: List[Dict]) -> str:
    out = ["| shape | dist | format | bits/weight | SQNR dB | vs int4 dB |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['shape']} {r['n']}x{r['k']} | {r['dist']} | {r['format']} | {r['bits_per_weight']} | "
                   f"{r['sqnr_db']} | {r['delta_vs_int4_db']:+.2f} |")
    return "\n".join(out)


def main(argv=None) -> None:
    from ..bench.shapes import resolve

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="llama3-8b")
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--max-rows", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    a = p.parse_args(argv)
    shapes = [(s.name, s.n, s.k) for s in resolve(a.shapes)]
    rows = error_table(shapes, group_size=a.group, max_rows=a.max_rows or None, device=a.device)
    print(markdown(rows))
    if a.json:
        import json

        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
