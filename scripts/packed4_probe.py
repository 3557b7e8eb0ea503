"""Dev probe for the packed 4-bit dequantization (``unpack.dequant4_packed``) on the GPU.

For Llama-3-8B shapes and a sweep of M: error vs the fp32 reference of the packed GEMM (inline asm)
and of the generic GEMM, and the best cold CUDA-graph time of each over a small config grid, next to
the shipped GEMV (M <= 8) and cuBLAS bf16. The rigorous harness is ``lowbit bench``.

    PYTHONPATH=src python scripts/packed4_probe.py --m 1,16,64 --dtype bf16 --json out.json
"""
import argparse
import json
import itertools

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.timing import Cost, CudaTimer
from lowbit.kernels.gemm import GemmConfig, gemm_wxa16
from lowbit.kernels.gemv import gemv_wxa16


def cold_us(calls):
    return CudaTimer(replays=5).kernel_us(calls, Cost("probe", 0, 0))


def configs(m):
    bm = 16 if m <= 16 else 32 if m <= 32 else 64 if m <= 64 else 128
    out = []
    for bn, bk, split in itertools.product((64, 128), (128,), (1, 4, 8)):
        if m >= 256 and split > 1:
            continue
        warps = 4 if bn == 64 and bm <= 64 else 8
        out.append(GemmConfig(bm, bn, bk, split, 8, warps, 3 if bk == 128 else 4))
    return out


def run(qw, x, cfg, packed):
    saved = gemm_mod.use_packed
    if not packed:
        gemm_mod.use_packed = lambda *a, **k: False
    try:
        return gemm_wxa16(x, qw.qweight, qw.scales, qw.zeros, None, 4, qw.group_len, 8.0, qw.out_features, cfg)
    finally:
        gemm_mod.use_packed = saved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,4,16,32,64,128,256")
    p.add_argument("--shapes", default="6144x4096,4096x4096,28672x4096,4096x14336")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--sym", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[a.dtype]
    torch.manual_seed(0)
    rows = []
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        w = torch.randn(n, k, device="cuda", dtype=dt) * 0.02
        fmt = IntxFormat(4, 128, symmetric=a.sym) if a.sym else IntxFormat(4, 128)
        qw = fmt.quantize(w)
        ref_w = qw.dequantize().float()
        copies = max(2, min(200, (256 << 20) // (n * k // 2)))
        qws = [qw] + [type(qw)(qw.qweight.clone(), qw.scales.clone(),
                               None if qw.zeros is None else qw.zeros.clone(), 4, 128, k) for _ in range(copies - 1)]
        wd = w.clone()
        ws = [wd] + [wd.clone() for _ in range(max(2, min(200, (256 << 20) // (n * k * 2))) - 1)]
        for m in [int(v) for v in a.m.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=dt)
            ref = x.float() @ ref_w.t()
            row = {"n": n, "k": k, "m": m, "dtype": a.dtype}
            for packed in (True, False):
                best = None
                for cfg in configs(m):
                    y = run(qw, x, cfg, packed)
                    err = ((y.float() - ref).norm() / ref.norm()).item()
                    t = cold_us([lambda q=q, c=cfg: run(q, x, c, packed) for q in qws])
                    if best is None or t < best[0]:
                        best = (t, cfg, err)
                    row.setdefault("maxerr_packed" if packed else "maxerr_generic", 0.0)
                    key = "maxerr_packed" if packed else "maxerr_generic"
                    row[key] = max(row[key], err)
                row["us_packed" if packed else "us_generic"] = best[0]
                row["cfg_packed" if packed else "cfg_generic"] = best[1].__dict__
            if m <= 8:
                row["us_gemv"] = cold_us([lambda q=q: gemv_wxa16(x, q.qweight, q.scales, q.zeros, None, 4, 128, 8.0, n)
                                          for q in qws])
            row["us_cublas"] = cold_us([lambda wb=wb: torch.nn.functional.linear(x, wb) for wb in ws])
            rows.append(row)
            print(f"{n:6d}x{k:<6d} M={m:5d} packed {row['us_packed']:8.1f}us (err {row['maxerr_packed']:.1e}) "
                  f"generic {row['us_generic']:8.1f}us (err {row['maxerr_generic']:.1e}) "
                  f"gemv {row.get('us_gemv', float('nan')):7.1f} cublas {row['us_cublas']:7.1f}  "
                  f"x cublas {row['us_cublas'] / min(row['us_packed'], row.get('us_gemv', 1e9)):5.2f}  "
                  f"best packed {row['cfg_packed']}", flush=True)
        del qws, ws
        torch.cuda.empty_cache()
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
