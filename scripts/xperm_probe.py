"""Dev probe (timing only, wrong results): what the per-iteration X permutation of the packed GEMM
costs. Builds a copy of ``lowbit.kernels.gemm`` whose packed loop feeds X in natural k order (what a
weight layout repacked offline into ``mma_k_order`` would allow) and times it against the shipped
kernel with the shipped configs (cold CUDA graph, ``CudaTimer``).

    PYTHONPATH=src python scripts/xperm_probe.py --m 1,16
"""
import argparse
import importlib
import pathlib

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.timing import Cost, CudaTimer


def natural_x_module():
    src = pathlib.Path(gemm_mod.__file__).read_text()
    old = "acc += tl.reshape(s, (BLOCK_N,))[:, None] * tl.dot(w, mma_k_order(xt, BLOCK_K))"
    assert old in src
    path = pathlib.Path(gemm_mod.__file__).with_name("_gemm_natural_x_probe.py")
    path.write_text(src.replace(old, "acc += tl.reshape(s, (BLOCK_N,))[:, None] * tl.dot(w, xt)"))
    try:
        return importlib.import_module("lowbit.kernels._gemm_natural_x_probe")
    finally:
        path.unlink()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16")
    p.add_argument("--shapes", default="6144x4096,4096x4096,28672x4096,4096x14336")
    a = p.parse_args()
    nat = natural_x_module()
    timer = CudaTimer(replays=5)
    print(f"{'shape':>12} {'M':>4} {'shipped us':>11} {'natural-x us':>13} {'ratio':>6}")
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        qw = IntxFormat(4, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
        copies = [qw] + [type(qw)(qw.qweight.clone(), qw.scales.clone(), qw.zeros.clone(), 4, 128, k)
                         for _ in range(timer.copies_needed(qw.qweight.numel() * 4) - 1)]
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t = {}
            for name, mod in (("shipped", gemm_mod), ("natural", nat)):
                def call(q, mod=mod):
                    return mod.gemm_wxa16(x, q.qweight, q.scales, q.zeros, None, 4, 128, 8.0, n)
                t[name] = timer.kernel_us([lambda q=q: call(q) for q in copies], Cost("probe", 0, 0))
            print(f"{n:>6}x{k:<5} {m:>4} {t['shipped']:>11.1f} {t['natural']:>13.1f} {t['natural'] / t['shipped']:>6.2f}",
                  flush=True)
        del copies
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
