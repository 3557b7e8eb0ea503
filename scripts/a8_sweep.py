"""GPU config sweep for the 8-bit activation GEMM (``kernels/scaled_mm.py``), GEMM only (operands
quantized beforehand), median of ``triton.testing.do_bench`` (L2 flushed per call):

* fp8 W8A8 row-wise at large M: ``LARGE_M_CANDIDATES`` (and the shipped heuristic) vs
  ``torch._scaled_mm`` row-wise, same operands -> ratio ``scaled_mm_us / ours_us`` (goal >= 0.95 at M >= 1024);
* W4A8 (int4 g128 asym): the prmt-table unpack vs the fp16-magic unpack under the heuristic config.

    PYTHONPATH=src python scripts/a8_sweep.py --shapes llama3-8b --out sweep.json   (needs an sm_89+ GPU)
"""
import argparse
import json
import time

import torch
import triton

from lowbit.bench.shapes import parse_m, resolve
from lowbit.formats import IntxFormat
from lowbit.formats.act8 import quantize_rows
from lowbit.kernels.int4_fp8 import UNPACK_MAGIC, UNPACK_PRMT
from lowbit.kernels.scaled_mm import LARGE_M_CANDIDATES, heuristic_config, scaled_mm, scaled_mm_intx


def bench(fn):
    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3  # us


def sweep_fp8(shapes, ms, rows, deadline):
    for s in shapes:
        w = torch.randn(s.n, s.k, device="cuda") * 0.05
        wq, sw = quantize_rows(w, "fp8")
        for m in ms:
            if time.time() > deadline:
                return
            xq, sx = quantize_rows(torch.randn(m, s.k, device="cuda"), "fp8")
            ref_us = bench(lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx[:, None], scale_b=sw[None, :],
                                                    out_dtype=torch.bfloat16))
            for cfg in [None] + list(LARGE_M_CANDIDATES):
                name = "heuristic " + str(heuristic_config(m, s.n, s.k)) if cfg is None else str(cfg)
                try:
                    us = bench(lambda: scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, cfg))
                except Exception as e:  # noqa: BLE001 - out of shared memory etc.: record and go on
                    rows.append(dict(op="fp8", shape=s.name, n=s.n, k=s.k, m=m, config=name, error=repr(e)[:200]))
                    continue
                rows.append(dict(op="fp8", shape=s.name, n=s.n, k=s.k, m=m, config=name, us=us,
                                 scaled_mm_us=ref_us, ratio=ref_us / us))
                print(f"fp8  {s.name:24s} M={m:<5d} {ref_us / us:5.2f}x _scaled_mm  {us:8.1f} us  {name}", flush=True)


def sweep_w4a8(shapes, ms, rows, deadline):
    for s in shapes:
        qw = IntxFormat(4, 128, False, "int", torch.bfloat16).quantize(torch.randn(s.n, s.k) * 0.05).to("cuda")
        for m in ms:
            if time.time() > deadline:
                return
            xq, sx = quantize_rows(torch.randn(m, s.k, device="cuda"), "fp8")
            for name, unpack in (("prmt", UNPACK_PRMT.value), ("magic", UNPACK_MAGIC.value)):
                us = bench(lambda: scaled_mm_intx(xq, sx, qw.qweight, qw.scales, qw.zeros, None, 4, 128, 8, s.n,
                                                  torch.bfloat16, None, unpack))
                rows.append(dict(op="w4a8", shape=s.name, n=s.n, k=s.k, m=m, unpack=name, us=us,
                                 config=str(heuristic_config(m, s.n, s.k))))
                print(f"w4a8 {s.name:24s} M={m:<5d} {name:5s} {us:8.1f} us", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="llama3-8b")
    p.add_argument("--m-fp8", default="1024,4096")
    p.add_argument("--m-w4a8", default="1,16,64,256,1024,4096")
    p.add_argument("--budget", type=float, default=50.0, help="seconds; stops starting new points after it")
    p.add_argument("--out", default="a8_sweep.json")
    a = p.parse_args()
    shapes = resolve(a.shapes)
    rows = []
    t0 = time.time()
    try:
        sweep_w4a8(shapes, parse_m(a.m_w4a8), rows, t0 + a.budget * 0.4)
        sweep_fp8(shapes, parse_m(a.m_fp8), rows, t0 + a.budget)
    finally:
        with open(a.out, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                           rows=rows), f, indent=1)
    best = {}
    for r in rows:
        if r["op"] == "fp8" and "ratio" in r:
            key = (r["shape"], r["m"])
            if key not in best or r["ratio"] > best[key]["ratio"]:
                best[key] = r
    for (shape, m), r in sorted(best.items()):
        print(f"best fp8 {shape:24s} M={m:<5d} {r['ratio']:.2f}x _scaled_mm  {r['config']}")


if __name__ == "__main__":
    main()
