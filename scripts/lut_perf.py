"""Dev probe: cold CUDA-graph time of lowbit LUT formats (NF4 / FP4 / 4-bit codebook) vs our uniform
int4 on Llama-3-8B shapes, same group size. ``lowbit bench ... --baselines lowbit_nf4,...`` is the
rigorous run; this is the short loop for kernel variants (``--gemv-prefetch`` etc.).
"""
import argparse
import dataclasses

import torch

from lowbit import IntxFormat, ops
from lowbit.bench.timing import Cost, CudaTimer
from lowbit.formats.lut import CodebookFormat, Fp4Format, NF4Format
from lowbit.kernels import gemv as gemv_mod
from lowbit.kernels.launch import resolve_config
from lowbit.ops_lut import lut_linear


def cold_us(fns):
    return CudaTimer(replays=10).kernel_us(fns, Cost("lut_perf", 0, 0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,64,256,1024,4096")
    p.add_argument("--shapes", default="6144x4096,4096x4096,28672x4096,4096x14336")
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--formats", default="nf4,fp4,cb4")
    p.add_argument("--gemv-prefetch", default="", help="comma list of on/off variants to time for M <= 8")
    a = p.parse_args()
    torch.manual_seed(0)
    g = a.group
    fmts = {"nf4": NF4Format(g), "fp4": Fp4Format(32, "e8m0"), "cb4": CodebookFormat(4, g, iters=5)}
    print(f"{'shape':>12} {'M':>5} {'int4 us':>8} " + " ".join(f"{f + ' us':>9} {'x':>5}" for f in a.formats.split(",")))
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        w = torch.randn(n, k, device="cuda") * 0.02
        q4 = IntxFormat(4, g, False, "int", torch.bfloat16).quantize(w)
        R = max(2, min(100, (256 << 20) // (n * k // 2)))
        q4s = [q4] + [dataclasses.replace(q4, qweight=q4.qweight.clone()) for _ in range(R - 1)]
        luts = {}
        for f in a.formats.split(","):
            qw = fmts[f].quantize(w)
            luts[f] = [qw] + [dataclasses.replace(qw, qweight=qw.qweight.clone()) for _ in range(R - 1)]
        for m in [int(x) for x in a.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t4 = cold_us([lambda q=q: ops.intx_linear(x, q) for q in q4s])
            line = f"{shape:>12} {m:>5} {t4:8.1f} "
            for f, qs in luts.items():
                ref = x.float() @ qs[0].dequantize().t()
                err = ((lut_linear(x, qs[0]).float() - ref).norm() / ref.norm()).item()
                assert err < 1e-2, (f, m, err)
                t = cold_us([lambda q=q: lut_linear(x, q) for q in qs])
                line += f"{t:9.1f} {t / t4:5.2f} "
                if m <= 8 and a.gemv_prefetch:
                    cfg = resolve_config("gemv", gemv_mod.GemvConfig, gemv_mod.heuristic_config, m, n, k, 4, g, x)
                    for pf in a.gemv_prefetch.split(","):
                        c = dataclasses.replace(cfg, prefetch=pf == "on")
                        tv = cold_us([lambda q=q: gemv_mod.gemv_wxa16(x, q.qweight, q.scales, None, None, 4, g, 0.0, n,
                                                                       config=c, table=q.table) for q in qs])
                        line += f"[pf={pf} {tv:6.1f}] "
            print(line, flush=True)


if __name__ == "__main__":
    main()
