"""``lowbit tune``: offline search of GEMV / GEMM configs, written as a shipped table.

For every (bits, shape N x K, M) it times each candidate cold (CUDA graph over R weight copies,
``lowbit.bench.timing.CudaTimer``), checks it against the fp32 reference first, and keeps the
fastest. Compilation is done up front by ``--jobs`` worker processes (filling Triton's disk
cache) so the timing process only loads binaries. Output: ``{"gpu": ..., "entries": [...]}``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import sys
import time
from typing import Dict, List, Sequence, Tuple

import torch

from ..formats.intx import IntxFormat, runs_mma_words, runtime_words, symmetric_zero
from ..kernels.dequant import dequant_matmul_wxa16
from ..kernels.gemm import GemmConfig, gemm_wxa16
from ..kernels.gemv import MAX_M as GEMV_MAX_M, GemvConfig, gemv_wxa16
from . import gpu_slug, m_bucket


DEQUANT_MM = None  # the dequantize + cuBLAS path has no config
# a candidate's output vs the fp32 oracle (relative Frobenius): correct 16-bit kernels sit at 1.6-2.2e-3 (bf16
# output rounding); 2e-2 let a config with a wrong result (1.7e-2, ``gemm.folded_scale_ok``) through
CHECK_REL_ERR = 6e-3


def gemv_candidates(m: int, group_len: int) -> List[GemvConfig]:
    out = []
    for bn in (32, 64, 128, 256):
        for bk in (64, 128, 256, 512):
            area = bn * bk * max(1, m)  # fp32 accumulator elements per program ~ registers
            if not 2048 <= bn * bk <= 32768 or area > 32768:
                continue
            # larger tiles amortise the per-tile address/mask work (the M=1 GEMV is issue-bound)
            for warps in (4, 8) if bn * bk == 32768 else (4,):
                for split in (2, 4, 8):
                    for stages in (2, 3, 4, 5):
                        out.append(GemvConfig(bn, bk, split, warps, stages))
    return out


def gemv_candidates_small() -> List[GemvConfig]:
    """A short GEMV list (``--gemv small``): the shapes of the GEMV configs that won before at
    M = 1..8 (128-256-k tiles, split-K 4-8; the hand-prefetch 16 x 512 tile of W8)."""
    out = [GemvConfig(bn, bk, split, 4, 3) for bn in (32, 64, 128) for bk in (128, 256) for split in (4, 8)
           if bn * bk <= 32768]
    return out + [GemvConfig(16, 512, split, 4, 2, True) for split in (1, 2)]


def gemm_candidates(m: int, bits: int = 4) -> List[GemmConfig]:
    bms = [16] if m <= 16 else [32] if m <= 32 else [64] if m <= 64 else [64, 128]
    out = []
    for bm in bms:
        if m <= 128:
            for bn in (64, 128):
                for bk in (32, 64, 128):
                    for split in (1, 2, 4, 8):
                        for prefetch in (False, True):
                            out.append(GemmConfig(bm, bn, bk, split, 8, 4 if bn == 64 else 8, 4 if bk < 128 else 3,
                                                  prefetch))
                        if bk == 128:  # a deeper cp.async pipeline for the packed 4-bit path
                            out.append(GemmConfig(bm, bn, bk, split, 8, 4 if bn == 64 else 8, 4, False))
            for split in (1, 2, 4, 8):  # packed 4-bit: 2 x 16-row slices per warp (``gemm.fragment_row_reps``)
                out.append(GemmConfig(bm, 128, 128, split, 8, 4, 4, False))
                if bm <= 32:
                    out.append(GemmConfig(bm, 256, 128, split, 8, 8, 4, False))
                if bits <= 2:  # 1/2-bit packed: 256-k tiles carry the bytes of a 4-bit 128-k tile
                    out.append(GemmConfig(bm, 64, 256, split, 8, 4, 3, False))
                    out.append(GemmConfig(bm, 128, 256, split, 8, 8, 3, False))
                # packed path with TMA word / X loads (``GemmConfig.tma``; benchmarks/results/h200/tma_small/:
                # 5-10 % faster at M = 64 on the Llama-3-70B shapes, +-5 % at M <= 16)
                for stages in (3, 4):
                    out.append(GemmConfig(bm, 64, 128, split, 8, 4, stages, False, True, True))
                # two K tiles per loop iteration (``GemmConfig.k_unroll``; benchmarks/results/h200/k_unroll/:
                # 1.02-1.06x over the best 1-tile config at M = 1 on the larger Llama-3 shapes); only where ``gemm.k_unroll_ok``
                for tma in (False, True):
                    out.append(GemmConfig(bm, 64, 128, split, 8, 4, 3, False, True, tma, 2))
        else:
            for bn, bk, warps in ((64, 64, 4), (64, 128, 4), (128, 64, 8), (128, 128, 8), (256, 64, 8)):
                out.append(GemmConfig(bm, bn, bk, 1, 8, warps, 3))
    if m >= 128:  # packed tiles with the group scale folded into the weights (one accumulator, no spills;
        # benchmarks/results/h200/pipeline_probe/): BLOCK_M 256, or K tiles of a whole group (``gemm.folded_scale_ok``)
        for bm, bn, bk, stages in ((256, 128, 64, 3), (128, 128, 128, 3), (128, 256, 128, 3)):
            out.append(GemmConfig(bm, bn, bk, 1, 8, 8, stages, False, False))
    return out


def _problem(bits: int, n: int, k: int, group: int, dtype: torch.dtype, copies: int):
    """(the weight in the natural order, ``copies`` run copies in the word order QuantLinear uses)."""
    fmt = IntxFormat(bits, group, False, "int", dtype)
    w = torch.randn(n, k, device="cuda") * 0.02
    base = fmt.quantize(w)
    run = dataclasses.replace(base, qweight=runtime_words(base.qweight, bool(_k_order(base)), bits)[0])
    qws = [run] + [dataclasses.replace(run, qweight=run.qweight.clone(), scales=run.scales.clone(),
                                       zeros=run.zeros.clone()) for _ in range(copies - 1)]
    return base, qws


def _k_order(qw) -> int:
    return int(runs_mma_words(qw))


def _kernel_name(cfg) -> str:
    return "gemv" if isinstance(cfg, GemvConfig) else "gemm" if isinstance(cfg, GemmConfig) else "dequant_mm"


def _call(cfg, x, qw):
    launcher = {"gemv": gemv_wxa16, "gemm": gemm_wxa16, "dequant_mm": dequant_matmul_wxa16}[_kernel_name(cfg)]
    return launcher(x, qw.qweight, qw.scales, qw.zeros, None, qw.bits, qw.group_len,
                    symmetric_zero(qw.bits), qw.out_features, config=cfg, k_order=_k_order(qw))


def _tasks(bits_list, shapes, ms, group, gemv: str = "full") -> List[Tuple[int, int, int, int, object]]:
    tasks = []
    for bits in bits_list:
        for n, k in shapes:
            for m in ms:
                if m <= GEMV_MAX_M:
                    # the tensor-core GEMM with 16-row tiles competes from M = 1 on (packed dequant)
                    gemvs = gemv_candidates(m, group) if gemv == "full" else gemv_candidates_small()
                    cands = gemvs + [c for c in gemm_candidates(16, bits) if c.split_k >= 2]
                else:
                    cands = gemm_candidates(m, bits) + ([DEQUANT_MM] if m >= 64 else [])
                tasks += [(bits, n, k, m, c) for c in cands]
    return tasks


def _compile_worker(args):
    tasks, group, dtype_name = args
    dtype = getattr(torch, dtype_name)
    key, qw = None, None
    for bits, n, k, m, cfg in tasks:
        if (bits, n, k) != key:  # one weight alive at a time (70B shapes are GBs in fp32)
            key, qw = (bits, n, k), None
            qw = _problem(bits, n, k, group, dtype, 1)[1][0]
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        try:
            _call(cfg, x, qw)
        except Exception as e:  # reported again (and skipped) by the timing pass
            print(f"compile failed {cfg}: {e}", file=sys.stderr)
    torch.cuda.synchronize()
    return len(tasks)


def compile_candidates(tasks, group: int, dtype: torch.dtype, jobs: int) -> None:
    """Compile every (bits, n, k, m, config) task in ``jobs`` spawned processes (the binaries land in
    Triton's disk cache for the timing pass); each worker gets a contiguous run of tasks sorted by weight
    shape, so it builds one weight after the other."""
    t0 = time.time()
    if jobs > 1:
        order = sorted(range(len(tasks)), key=lambda i: tasks[i][:3])
        size = -(-len(order) // jobs)
        chunks = [[tasks[i] for i in order[j:j + size]] for j in range(0, len(order), size)]
        with mp.get_context("spawn").Pool(jobs) as pool:
            pool.map(_compile_worker, [(c, group, str(dtype).replace("torch.", "")) for c in chunks])
    print(f"compiled {len(tasks)} candidates in {time.time() - t0:.0f}s", flush=True)


def time_candidates(configs, x: torch.Tensor, qws, ref: torch.Tensor, timer) -> List[Tuple[float, object]]:
    """(us, config) of every candidate that runs and matches the fp32 oracle ``ref`` (relative error below
    CHECK_REL_ERR), fastest first; cold CUDA-graph kernel time over the weight copies ``qws``."""
    from ..bench.timing import Cost

    results = []
    for cfg in configs:
        try:
            y = _call(cfg, x, qws[0]).float()
            if not ((y - ref).norm() / ref.norm()).item() < CHECK_REL_ERR:
                raise ValueError("wrong result")
            us = timer.kernel_us([lambda q=q, c=cfg: _call(c, x, q) for q in qws], Cost("tune", 0, 0))
        except Exception as e:  # a config that does not compile, fit or match is skipped
            print(f"  skip {cfg}: {e}", flush=True)
            continue
        results.append((us, cfg))
    results.sort(key=lambda r: r[0])
    return results


def table_entries(results, bits: int, m: int, n: int, k: int) -> List[Dict]:
    """Shipped-table entries: the fastest config of each kernel family, the overall winner flagged ``best``."""
    winners = {}
    for us, cfg in results:
        winners.setdefault(_kernel_name(cfg), (us, cfg))
    best = _kernel_name(results[0][1])
    return [{"kernel": name, "bits": bits, "m": m_bucket(m), "n": n, "k": k, "us": round(us, 2), "best": name == best,
             "config": dataclasses.asdict(cfg) if cfg is not None else {}} for name, (us, cfg) in winners.items()]


def tune(bits_list: Sequence[int], shapes: Sequence[Tuple[int, int]], ms: Sequence[int], group: int = 128,
         dtype: torch.dtype = torch.bfloat16, jobs: int = 8, gemv: str = "full") -> Dict:
    from ..bench.timing import CudaTimer

    compile_candidates(_tasks(bits_list, shapes, ms, group, gemv), group, dtype, jobs)
    timer = CudaTimer(replays=10)
    entries = []
    for bits in bits_list:
        for n, k in shapes:
            base, _ = _problem(bits, n, k, group, dtype, 1)
            copies = timer.copies_needed(base.ideal_nbytes())
            base, qws = _problem(bits, n, k, group, dtype, copies)
            ref_w = base.dequantize(torch.float32)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                configs = [t[4] for t in _tasks([bits], [(n, k)], [m], group, gemv)]
                results = time_candidates(configs, x, qws, x.float() @ ref_w.t(), timer)
                best_us, best = results[0]
                print(f"W{bits} {n}x{k} M={m}: best {best_us:.1f} us {best} "
                      f"(worst {results[-1][0]:.1f} us of {len(results)})", flush=True)
                entries += table_entries(results, bits, m, n, k)
            del qws
            torch.cuda.empty_cache()
    return {"gpu": torch.cuda.get_device_name(), "dtype": str(dtype), "group_size": group,
            "torch": torch.__version__, "entries": entries}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lowbit tune", description=__doc__)
    p.add_argument("--bits", default="4")
    p.add_argument("--shapes", default="6144x4096,4096x4096,28672x4096,4096x14336")
    p.add_argument("--m", default="1,8,16,32,64,128,256,1024,4096")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--jobs", type=int, default=8)
    p.add_argument("--gemv", default="full", choices=["full", "small"], help="GEMV candidates at M <= 8")
    p.add_argument("--out", default=None, help="JSON path (default: stdout summary only + out/tune/<gpu>.json)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("lowbit tune needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    table = tune([int(b) for b in a.bits.split(",")], shapes, [int(m) for m in a.m.split(",")],
                 a.group_size, jobs=a.jobs, gemv=a.gemv)
    out = a.out or f"out/tune/{gpu_slug(table['gpu'])}.json"
    import os

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".tmp", "w") as f:
        json.dump(table, f, indent=1)
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
