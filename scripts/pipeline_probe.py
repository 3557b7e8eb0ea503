"""Configs outside the tuner's space for the packed W4 GEMM: deeper pipelines and longer K tiles at small M,
large tiles with the group scale folded into the weights (``GemmConfig.scale_after=False``) at large M.

`lowbit tune` offers the packed 4-bit GEMM at most 4 cp.async stages and 128-k tiles. At M = 1..16 the
kernel is latency-bound (docs/performance.md: few warps per scheduler, each a dependent chain per K tile),
so more bytes in flight per program may help: 5-6 stages, or 256-k tiles (two groups of 128 per tile,
scales per word row). For each shape and M this times the shipped config and every candidate (cold
CUDA-graph kernel time, the tuner's timer and checks) and writes the winners as table entries
(`scripts/merge_tables.py` merges them into the shipped table).

    PYTHONPATH=src python scripts/pipeline_probe.py --shapes 6144x4096,... --m 1,16,1024 --out out/probe.json
"""
import argparse
import dataclasses
import json

import torch

from lowbit.bench.timing import CudaTimer
from lowbit.kernels.gemm import GemmConfig, heuristic_config, k_unroll_ok
from lowbit.kernels.launch import resolve_config
from lowbit.tuning import gpu_slug
from lowbit.tuning.tune import DEQUANT_MM, _kernel_name, _problem, compile_candidates, table_entries, time_candidates


def _asdict(cfg) -> dict:
    return {} if cfg is None else dataclasses.asdict(cfg)


SHAPES_8B_70B = "6144x4096,4096x4096,28672x4096,4096x14336,10240x8192,8192x8192,57344x8192,8192x28672"


def folded_small_candidates(m: int):
    """Small M, the group scale folded into the 16-bit weights (``scale_after=False``) against scaling each
    K tile's product (True): with the product scaled, every K tile waits for its wgmma group to finish
    (``WARPGROUP.DEPBAR.LE gsb0, 0x0`` before the FFMAs); folded, the wgmmas stay in flight across the next
    tile's dequantization at the cost of one HMUL2 per weight pair."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    out = []
    for split in (1, 2, 4, 8):
        for stages in (3, 4):
            for scale_after in (False, True):
                out.append(GemmConfig(bm, 64, 128, split, 8, 4, stages, False, scale_after))
                out.append(GemmConfig(bm, 128, 128, split, 8, 4, stages, False, scale_after))
                if bm <= 32:
                    out.append(GemmConfig(bm, 256, 128, split, 8, 8, stages, False, scale_after))
    return out


def tma_small_candidates(m: int):
    """Small M, weight words and X through TMA descriptors (``GemmConfig.tma``) against cp.async pointers."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    return [GemmConfig(bm, bn, 128, split, 8, 4, stages, False, True, tma)
            for bn in (64, 128) for split in (1, 2, 4) for stages in (3, 4, 5) for tma in (False, True)]


def k_unroll_candidates(m: int):
    """Small M, K_UNROLL 1 / 2 / 4 K tiles per loop iteration (``GemmConfig.k_unroll``: the per-iteration
    pipeline bookkeeping shared; sm_90 SASS per weight at 16x64x128: 3.69 / 3.36 / 3.17), cp.async and TMA."""
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    return [GemmConfig(bm, 64, 128, split, 8, 4, stages, False, True, tma, unroll)
            for split in (1, 2, 4) for stages in (3, 4) for tma in (False, True) for unroll in (1, 2, 4)]


def candidates(m: int, family: str = "pipeline", k: int = 0):
    if family == "k-unroll":  # only configs whose unroll applies at this K (others would repeat unroll 1)
        return [c for c in k_unroll_candidates(m) if c.k_unroll == 1 or k_unroll_ok(k, c, 4, 1, 128)]
    if family == "folded-small":
        return folded_small_candidates(m)
    if family == "tma-small":
        return tma_small_candidates(m)
    if m >= 128:  # large tiles; scale_after=False folds the group scale into the 16-bit weights (no second
        # accumulator: 128 x 256 compiles without spills), and dequantize + cuBLAS
        out = [DEQUANT_MM]
        for bm, bn, bk, warps, stages in ((128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4),
                                          (128, 128, 128, 8, 3), (64, 256, 64, 8, 3), (256, 128, 64, 8, 3)):
            for scale_after in (False, True):
                out.append(GemmConfig(bm, bn, bk, 1, 8, warps, stages, False, scale_after))
        return out
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    out = []
    for split in (1, 2, 4, 8):
        for stages in (3, 4, 5, 6):
            out.append(GemmConfig(bm, 64, 128, split, 8, 4, stages, False))
            out.append(GemmConfig(bm, 128, 128, split, 8, 4, stages, False))
        for stages in (2, 3, 4):
            out.append(GemmConfig(bm, 64, 256, split, 8, 4, stages, False))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=SHAPES_8B_70B)
    ap.add_argument("--m", default="1,16")
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--out", default="out/pipeline_probe.json")
    ap.add_argument("--family", default="pipeline", choices=["pipeline", "folded-small", "tma-small", "k-unroll"],
                    help="pipeline: deeper stages / 256-k tiles (small M), folded large tiles (M >= 128); "
                         "folded-small: scale_after False vs True at M < 128; tma-small: TMA vs cp.async at M < 128; "
                         "k-unroll: 1 / 2 / 4 K tiles per loop iteration at M < 128")
    a = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    ms = [int(v) for v in a.m.split(",")]
    dtype = torch.bfloat16
    compile_candidates([(4, n, k, m, c) for n, k in shapes for m in ms for c in candidates(m, a.family, k)], 128, dtype, a.jobs)
    timer = CudaTimer(replays=5)
    entries, rows = [], []
    for n, k in shapes:
        base, _ = _problem(4, n, k, 128, dtype, 1)
        base, qws = _problem(4, n, k, 128, dtype, timer.copies_needed(base.ideal_nbytes()))
        ref_w = base.dequantize(torch.float32)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            shipped = resolve_config("gemm", GemmConfig, heuristic_config, m, n, k, 4, 128, x)
            results = time_candidates([shipped] + candidates(m, a.family, k), x, qws, x.float() @ ref_w.t(), timer)
            ship_us = next((u for u, c in results if c is shipped), float("nan"))
            best_us, best = results[0]
            print(f"{n}x{k} M={m}: shipped gemm {ship_us:.1f} us {shipped}; best {best_us:.1f} us {best} "
                  f"({ship_us / best_us:.2f}x)", flush=True)
            rows.append({"n": n, "k": k, "m": m, "shipped_us": ship_us, "shipped": _asdict(shipped),
                         "best_us": best_us, "best": _asdict(best),
                         "all": [(round(u, 2), _kernel_name(c), _asdict(c)) for u, c in results]})
            entries += table_entries(results, 4, m, n, k)
        del qws
        torch.cuda.empty_cache()
    table = {"gpu": torch.cuda.get_device_name(), "dtype": str(dtype), "group_size": 128,
             "torch": torch.__version__, "entries": entries}
    with open(a.out, "w") as f:
        json.dump({"table": table, "rows": rows, "slug": gpu_slug(table["gpu"])}, f, indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
