"""Dev probe (issue 5): more warps per SM for the small-M packed GEMM.

The shipped M = 1 kernel runs ~14 warps per SM (448 programs of 4 warps on 132 SMs for 28672x4096) and waits on
load latency (ncu, docs/performance.md "Stop 27"). More programs (split-K x2 / x4) only fit in one wave when each
program holds fewer registers, so this times, per Llama-3 8B/70B shape and M, the shipped config against the same
tile with split-K x1 / x2 / x4, K_UNROLL 1 and a register cap (``GemmConfig.maxnreg``: 72 -> 7 blocks of 128
threads per SM, 64 -> 8), cold CUDA-graph time (``CudaTimer``), with the error against the fp32 reference.

    PYTHONPATH=src python scripts/occupancy_probe.py --m 1,16 --json out.json
"""
import argparse
import dataclasses
import json

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.shapes import resolve
from lowbit.bench.timing import Cost, CudaTimer
from lowbit.formats.intx import symmetric_zero, to_mma_words
from lowbit.kernels.launch import resolve_config


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16")
    p.add_argument("--shapes", default="llama3-8b,llama3-70b")
    p.add_argument("--regs", default="0,72,64")
    p.add_argument("--splits", default="1,2,4", help="multiples of the shipped split-K")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    timer = CudaTimer(replays=5)
    rows = []
    for shape in resolve(a.shapes):
        n, k = shape.n, shape.k
        qw = IntxFormat(4, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
        words = to_mma_words(qw.qweight, 4)
        copies = [words] + [words.clone() for _ in range(timer.copies_needed(words.numel() * 4) - 1)]
        ref_w = qw.dequantize(torch.float32)
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ ref_w.t()

            def run(cfg, q):
                return gemm_mod.gemm_wxa16(x, q, qw.scales, qw.zeros, None, 4, 128, symmetric_zero(4), n, config=cfg,
                                           k_order=1)

            shipped = resolve_config("gemm", gemm_mod.GemmConfig, gemm_mod.heuristic_config, m, n, k, 4, 128, x)
            variants = [("shipped", shipped)]
            for mult in [int(v) for v in a.splits.split(",")]:
                for regs in [int(v) for v in a.regs.split(",")]:
                    cfg = dataclasses.replace(shipped, split_k=shipped.split_k * mult, k_unroll=1, maxnreg=regs)
                    variants.append((f"split{cfg.split_k}-u1-r{regs or 'auto'}", cfg))
            base = None
            for name, cfg in variants:
                try:
                    err = ((run(cfg, words).float() - ref).norm() / ref.norm()).item()
                    us = timer.kernel_us([lambda q=q: run(cfg, q) for q in copies], Cost("probe", 0, 0))
                except Exception as e:  # noqa: BLE001 - a config that does not compile is a result too
                    print(f"{shape.name:>20} M={m:<3} {name:>18}  ERROR {type(e).__name__}: {str(e)[:80]}")
                    continue
                base = us if base is None else base
                rows.append({"shape": shape.name, "n": n, "k": k, "m": m, "variant": name,
                             "config": dataclasses.asdict(cfg), "us": us, "err": err, "vs_shipped": base / us})
                print(f"{shape.name:>20} M={m:<3} {name:>18} {us:8.2f} us  x{base / us:5.2f} vs shipped  err {err:.1e}",
                      flush=True)
        del copies
        torch.cuda.empty_cache()
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
