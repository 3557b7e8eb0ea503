"""Dev probe (issue 5): does the small-M packed GEMM lose bandwidth to its word layout?

QuantLinear's words are (Kp / 8, N) with N contiguous: one K tile of one program reads R rows of BLOCK_N * 4 bytes,
rows N * 4 bytes apart. This times, per Llama-3 8B/70B shape and M, the shipped config (TMA off, so both variants
load through pointers) on that layout and on a tile-major copy of the same words, (N / 64, Kp / 8, 64): each
program's K tile is one contiguous R * 256-byte block (``gemm.PACKED_OPTIONS["w_tile"]`` -> W_TILE = 64 in the
kernel). Cold CUDA-graph time (``CudaTimer``), error against the fp32 reference.

    PYTHONPATH=src python scripts/wtile_probe.py --m 1,16 --json out.json
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

TILE = 64


def tile_major(words: torch.Tensor) -> torch.Tensor:
    """(R, N) words -> the same words stored (N / TILE, R, TILE), viewed with the (R, N) shape."""
    r, n = words.shape
    return words.view(r, n // TILE, TILE).permute(1, 0, 2).contiguous().view(r, n)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16")
    p.add_argument("--shapes", default="llama3-8b,llama3-70b")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    timer = CudaTimer(replays=7)
    rows = []
    for shape in resolve(a.shapes):
        n, k = shape.n, shape.k
        qw = IntxFormat(4, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
        words = {"row-major": to_mma_words(qw.qweight, 4)}
        words["tile-major"] = tile_major(words["row-major"])
        reps = timer.copies_needed(words["row-major"].numel() * 4)
        copies = {v: [w] + [w.clone() for _ in range(reps - 1)] for v, w in words.items()}
        ref_w = qw.dequantize(torch.float32)
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ ref_w.t()
            cfg = resolve_config("gemm", gemm_mod.GemmConfig, gemm_mod.heuristic_config, m, n, k, 4, 128, x)
            cfg = dataclasses.replace(cfg, tma=False)
            res = {}
            for variant in ("row-major", "tile-major", "row-major"):  # row-major twice: the run-to-run spread
                gemm_mod.PACKED_OPTIONS["w_tile"] = TILE if variant == "tile-major" else 0

                def run(q):
                    return gemm_mod.gemm_wxa16(x, q, qw.scales, qw.zeros, None, 4, 128, symmetric_zero(4), n,
                                               config=cfg, k_order=1)
                err = ((run(words[variant]).float() - ref).norm() / ref.norm()).item()
                us = timer.kernel_us([lambda q=q: run(q) for q in copies[variant]], Cost("probe", 0, 0))
                res.setdefault(variant, []).append(us)
                rows.append({"shape": shape.name, "n": n, "k": k, "m": m, "variant": variant, "us": us, "err": err,
                             "config": dataclasses.asdict(cfg)})
            gemm_mod.PACKED_OPTIONS["w_tile"] = 0
            row_us = min(res["row-major"])
            print(f"{shape.name:>20} M={m:<3} row-major {res['row-major'][0]:7.2f} / {res['row-major'][1]:7.2f} us"
                  f"  tile-major {res['tile-major'][0]:7.2f} us  x{row_us / res['tile-major'][0]:5.2f}  "
                  f"err {rows[-2]['err']:.1e}  (bn {cfg.block_n}, bk {cfg.block_k}, split {cfg.split_k}, u {cfg.k_unroll})",
                  flush=True)
        del copies
        torch.cuda.empty_cache()
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
