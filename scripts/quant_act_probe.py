"""GPU probe of ``quantize_act`` (per-token) launch parameters: CHUNK (whole row in registers vs two passes
of 4096) x num_warps, per (M, K); CUDA-graph time (``triton.testing.do_bench_cudagraph``), effective GB/s
(read x + write q). Prints a table; ``--out`` writes JSON.

    PYTHONPATH=src python scripts/quant_act_probe.py --out probe.json    (needs a GPU)
"""
import argparse
import json

import torch
import triton

from lowbit.formats.act8 import AMAX_FLOOR, qmax, torch_dtype
from lowbit.kernels.quant_act import quantize_act_kernel


def run(x, kind, chunk, warps):
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=torch_dtype(kind))
    s = torch.empty((m,), device=x.device, dtype=torch.float32)
    quantize_act_kernel[(m,)](x, q, s, s, m, k, x.stride(0), q.stride(0), s.stride(0), HAS_SMOOTH=False,
                              IS_INT8=kind == "int8", QMAX=qmax(kind), FLOOR=AMAX_FLOOR, BLOCK=0, CHUNK=chunk,
                              num_warps=warps)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,1024,4096")
    p.add_argument("--k", default="4096,8192,14336,28672")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    rows = []
    for k in map(int, a.k.split(",")):
        for m in map(int, a.m.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for chunk in sorted({4096, min(32768, triton.next_power_of_2(k))}):
                for warps in (4, 8, 16, 32):
                    us = triton.testing.do_bench_cudagraph(lambda: run(x, "int8", chunk, warps), rep=20) * 1e3
                    gbs = m * k * 3 / us / 1e3
                    rows.append(dict(m=m, k=k, chunk=chunk, warps=warps, us=us, gbs=gbs))
                    print(f"M={m:<5d} K={k:<6d} chunk={chunk:<6d} warps={warps:<3d} {us:8.2f} us {gbs:7.0f} GB/s", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
