"""Output error of each 8-bit-activation format against the unquantized fp32 product, per Llama-3 shape.

The kernels match the fp32 math of their quantized operands to output rounding (tests, and the bench's
`rel_err`); what a user loses is the quantization itself. This measures it with the formats' reference
math (`ops_a8.reference_*`, bit-faithful to the kernels up to summation order), on the CPU: relative
Frobenius error || Y_q - X W^T || / || X W^T || for M = 16 tokens, weights N(0, 1/K), activations either
N(0, 1) ("normal") or N(0, 1) with 1 % of the channels x 20 ("outliers", the LLM activation pattern that
SmoothQuant targets; its calibration uses a separate batch). N is capped (`--max-n`, default 4096 output
channels per shape: the per-channel error statistics do not depend on N; K is the real one).

    PYTHONPATH=src python scripts/a8_accuracy.py --out benchmarks/results/cpu/a8_accuracy
"""
import argparse
import json
import time
from pathlib import Path

import torch

from lowbit.bench.shapes import model_shapes
from lowbit.formats import Fp8Format, Int8Format, IntxFormat
from lowbit.ops_a8 import reference_w4a8, reference_w8a8

FORMATS = ["bf16 weights", "w8a8-fp8 row", "w8a8-fp8 block", "w8a8-int8", "w8a8-int8 smooth 0.5",
           "w4a8-fp8 g128", "w4a16 g128"]


def channel_scale(k: int, kind: str, gen: torch.Generator) -> torch.Tensor:
    """Per-channel activation scale: 1, or 20 on 1 % of the channels ("outliers")."""
    c = torch.ones(k)
    if kind == "outliers":
        c[torch.randperm(k, generator=gen)[: max(1, k // 100)]] = 20.0
    return c


def outputs(x: torch.Tensor, w: torch.Tensor, calib: torch.Tensor):
    """{format: Y (M, N) fp32} for one weight and activation batch."""
    n, k = w.shape
    out = {"bf16 weights": x @ w.bfloat16().float().t()}
    f = Fp8Format("row").quantize(w)
    out["w8a8-fp8 row"] = reference_w8a8(x, f.qweight, f.scales, None, None, 0)
    f = Fp8Format("block").quantize(w)
    out["w8a8-fp8 block"] = reference_w8a8(x, f.qweight, f.scales, None, None, 128)
    q = Int8Format().quantize(w)
    out["w8a8-int8"] = reference_w8a8(x, q.qweight, q.scales, None, None, 0)
    q = Int8Format(0.5).quantize(w, calib=calib)
    out["w8a8-int8 smooth 0.5"] = reference_w8a8(x, q.qweight, q.scales, q.inv_smooth, None, 0)
    iw = IntxFormat(4, 128, False, "int", torch.float32).quantize(w)
    out["w4a8-fp8 g128"] = reference_w4a8(x, iw.qweight, iw.scales, iw.zeros, None, 4, 128, k)
    out["w4a16 g128"] = x @ iw.dequantize(torch.float32).t()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama3-8b,llama3-70b")
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--max-n", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/a8_accuracy")
    a = ap.parse_args()
    gen = torch.Generator().manual_seed(a.seed)
    rows = []
    t0 = time.time()
    for model in a.models.split(","):
        for s in model_shapes(model):
            n = min(s.n, a.max_n)
            w = torch.randn(n, s.k, generator=gen) / s.k ** 0.5
            for kind in ("normal", "outliers"):
                c = channel_scale(s.k, kind, gen)
                x = torch.randn(a.m, s.k, generator=gen) * c
                calib = torch.randn(64, s.k, generator=gen) * c  # SmoothQuant calibration: same channels, other tokens
                ref = x.double() @ w.double().t()
                errs = {f: ((y.double() - ref).norm() / ref.norm()).item() for f, y in outputs(x, w, calib).items()}
                rows.append({"model": model, "layer": s.layer, "n": s.n, "n_measured": n, "k": s.k, "m": a.m,
                             "activations": kind, "rel_err": errs})
                print(f"{model}/{s.layer} {kind}: " + ", ".join(f"{f} {e:.2e}" for f, e in errs.items()), flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "PYTHONPATH=src python scripts/a8_accuracy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items()), "torch": torch.__version__,
        "elapsed_s": round(time.time() - t0, 1)}
    (out / "a8_accuracy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["Relative Frobenius error vs the unquantized fp32 product (M = %d; reference math of each format)" % a.m,
             "", "| shape | N x K | activations | " + " | ".join(FORMATS) + " |",
             "| --- | --- | --- | " + " | ".join("---" for _ in FORMATS) + " |"]
    for r in rows:
        lines.append(f"| {r['model']}/{r['layer']} | {r['n']}x{r['k']} | {r['activations']} | "
                     + " | ".join(f"{r['rel_err'][f]:.2e}" for f in FORMATS) + " |")
    lines += ["", f"`{meta['command']}` ({meta['elapsed_s']} s, torch {meta['torch']}, CPU)"]
    (out / "a8_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
