"""Dev probe: cold CUDA-graph time of lowbit W<bits>A16 vs cuBLAS bf16 on Llama-3-8B shapes.

The rigorous harness is ``lowbit bench``; this is the short loop used while tuning kernels.
"""
import argparse

import torch

from lowbit import IntxFormat, ops
from lowbit.bench.timing import Cost, CudaTimer


def cold_us(fn_per_copy):
    """Cold kernel time per call: the benchmark harness's CUDA-graph timer (median of 10 replays)."""
    return CudaTimer(replays=10).kernel_us(fn_per_copy, Cost("quick_perf", 0, 0))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bits", default="4")
    p.add_argument("--m", default="1,4,16,64,256,1024,4096")
    p.add_argument("--shapes", default="6144x4096,4096x4096,28672x4096,4096x14336")
    a = p.parse_args()
    torch.manual_seed(0)
    for bits in [int(b) for b in a.bits.split(",")]:
        for shape in a.shapes.split(","):
            n, k = map(int, shape.split("x"))
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            qw = IntxFormat(bits, 128).quantize(w)
            R = max(2, min(200, (256 << 20) // (n * k * bits // 8)))
            Rb = max(2, min(200, (256 << 20) // (n * k * 2)))
            qws = [IntxFormat(bits, 128).quantize(w) if i == 0 else type(qw)(qw.qweight.clone(), qw.scales.clone(), qw.zeros.clone(), bits, 128, k) for i in range(R)]
            ws = [w.clone() for _ in range(Rb)]
            for m in [int(x) for x in a.m.split(",")]:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ qw.dequantize().t()
                err = ((ops.intx_linear(x, qw).float() - ref).norm() / ref.norm()).item()
                t_ours = cold_us([lambda q=q: ops.intx_linear(x, q) for q in qws])
                t_bf16 = cold_us([lambda wb=wb: torch.nn.functional.linear(x, wb) for wb in ws])
                gbs = (n * k * bits / 8) / t_ours / 1e3
                print(f"W{bits} {shape:>11} M={m:5d}  ours {t_ours:8.1f} us  bf16 {t_bf16:8.1f} us  "
                      f"speedup {t_bf16 / t_ours:5.2f}x  weight GB/s {gbs:7.0f}  relerr {err:.1e}", flush=True)
            del qws, ws
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
