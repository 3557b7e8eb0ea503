"""Grouped (MoE) GEMM configs around the heuristic at few tokens per expert: split-K, tile width, stages.
Cold CUDA-graph kernel time (the bench's timer) of ``kernels.grouped.grouped_wxa16`` on expert-sorted rows
(the ``lowbit`` method of `lowbit bench moe`), each config checked against the heuristic's result.

    PYTHONPATH=src python scripts/grouped_probe.py --shapes mixtral-8x7b,qwen1.5-moe --tokens 1,8,64
"""
import argparse
import dataclasses

import torch

from lowbit.bench.moe import MOE_SHAPES, make_point
from lowbit.bench.timing import Cost, CudaTimer
from lowbit.formats.intx import IntxFormat, runs_mma_words, runtime_words, symmetric_zero
from lowbit.formats.intx_experts import quantize_experts
from lowbit.kernels.gemm import k_unroll_ok
from lowbit.kernels.grouped import GroupedConfig, grouped_wxa16, heuristic_config


def candidates(base: GroupedConfig, unroll: bool = False):
    """Tile width / split-K / stages around the heuristic; ``unroll``: also 2 K tiles per loop iteration
    (``GroupedConfig.k_unroll``, only where ``gemm.k_unroll_ok`` lets it apply), on 64- and 128-wide tiles."""
    out = []
    for bn, warps in ((64, 4), (128, 8)) if unroll else ((64, 4), (128, 8), (128, 4)):
        for split in (1, 2, 4, 8):
            for stages in (3, 4):
                for k_unroll in (1, 2) if unroll else (1,):
                    out.append(dataclasses.replace(base, block_n=bn, num_warps=warps, split_k=split, num_stages=stages,
                                                   k_unroll=k_unroll))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="mixtral-8x7b,qwen1.5-moe")
    ap.add_argument("--tokens", default="1,8,64")
    ap.add_argument("--unroll", action="store_true", help="also K_UNROLL = 2 candidates")
    a = ap.parse_args()
    dev, dtype = torch.device("cuda"), torch.bfloat16
    timer = CudaTimer(replays=5)
    for shape in [s for name in a.shapes.split(",") for s in MOE_SHAPES[name]]:
        w = torch.randn(shape.experts, shape.n, shape.k, device=dev) * 0.02
        qw = quantize_experts(IntxFormat(4, 128, False, "int", dtype), w)
        del w
        qweight, ko = runtime_words(qw.qweight, runs_mma_words(qw), 4)
        copies = [(qweight, qw.scales, qw.zeros)] + [(qweight.clone(), qw.scales.clone(), qw.zeros.clone())
                                                     for _ in range(timer.copies_needed(qweight.numel() * 4) - 1)]
        for t in (int(v) for v in a.tokens.split(",")):
            pt = make_point(shape, t, dtype, dev, 0)
            rows = pt.xs.shape[0]

            def call(cfg, c):
                return grouped_wxa16(pt.xs, c[0], c[1], c[2], None, 4, 128, symmetric_zero(4), pt.offsets,
                                     config=cfg, k_order=ko)

            heur = heuristic_config(rows, shape.experts, shape.n, shape.k, 128, 132, shape.topk, True)
            ref = call(heur, copies[0]).float()
            res = []
            for cfg in [heur] + [c for c in candidates(heur, a.unroll)
                                if c.k_unroll == 1 or k_unroll_ok(shape.k, c, 4, ko, 128)]:
                try:
                    y = call(cfg, copies[0]).float()
                    if not ((y - ref).norm() / ref.norm()).item() < 1e-3:
                        raise ValueError("differs from the heuristic config")
                    us = timer.kernel_us([lambda q=q, c=cfg: call(c, q) for q in copies], Cost("probe", 0, 0))
                except Exception as e:  # noqa: BLE001
                    print(f"  skip {cfg}: {str(e)[:120]}", flush=True)
                    continue
                res.append((us, cfg))
            h_us = res[0][0]
            res.sort(key=lambda r: r[0])
            print(f"{shape.model}/{shape.layer} T={t}: heuristic {h_us:.1f} us {heur}; best {res[0][0]:.1f} us "
                  f"{res[0][1]} ({h_us / res[0][0]:.2f}x)", flush=True)
            print("    " + "  ".join(f"n{c.block_n}w{c.num_warps}s{c.split_k}st{c.num_stages}u{c.k_unroll}:{us:.1f}" for us, c in res),
                  flush=True)
        del copies
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
