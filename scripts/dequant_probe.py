"""Bandwidth of ``dequantize_intx`` (the dequantize + cuBLAS paths and the W4A8 codes expansion) per launch tile:
cold-ish do_bench medians of one launch on Llama-3 shapes, bits and output dtypes, as GB/s of bytes moved
(packed words + scales/zeros read, N * K output written).
    PYTHONPATH=src python scripts/dequant_probe.py [--out FILE]"""
import argparse
import itertools
import json

import torch
import triton

from lowbit import IntxFormat
from lowbit.kernels.dequant import DEQUANT_TILE, dequantize_intx

SHAPES = [(28672, 4096), (4096, 14336), (6144, 4096)]
TILES = [(bn, bk, w) for bn, bk, w in itertools.product((32, 64, 128), (64, 128, 256), (4, 8)) if bn * bk <= 16384]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="dequant_probe.json")
    ap.add_argument("--bits", default="4,2,3,8")
    a = ap.parse_args()
    rows = []
    for bits in map(int, a.bits.split(",")):
        for n, k in SHAPES:
            qw = IntxFormat(bits, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
            sym = 2 ** (bits - 1)
            outs = [torch.bfloat16] + ([torch.float8_e4m3fn] if bits <= 4 else [])
            for dt, tile in itertools.product(outs, TILES):
                codes = dt == torch.float8_e4m3fn
                fn = lambda: dequantize_intx(qw.qweight, qw.scales, qw.zeros, bits, 128, sym, k, dt,  # noqa: E731
                                             codes=codes, tile=tile)
                try:
                    fn()
                    us = triton.testing.do_bench(fn, warmup=5, rep=30, return_mode="median") * 1e3
                except Exception as e:  # a tile that does not compile / fit
                    print(f"skip {tile}: {type(e).__name__}")
                    continue
                nbytes = qw.qweight.numel() * 4 + qw.scales.numel() * 2 * 2 + n * k * dt.itemsize
                rows.append(dict(bits=bits, n=n, k=k, out=str(dt).split(".")[1], tile=tile, us=us,
                                 gbs=nbytes / us / 1e3, shipped=tile == DEQUANT_TILE))
            best = {}
            for r in rows:
                if r["bits"] == bits and (r["n"], r["k"]) == (n, k):
                    key = r["out"]
                    if key not in best or r["us"] < best[key]["us"]:
                        best[key] = r
            for key, r in best.items():
                ship = next(x for x in rows if x["bits"] == bits and (x["n"], x["k"]) == (n, k)
                            and x["out"] == key and x["shipped"])
                print(f"W{bits} {n}x{k} -> {key:13s} shipped {ship['us']:7.1f} us {ship['gbs']:6.0f} GB/s | "
                      f"best {r['tile']} {r['us']:7.1f} us {r['gbs']:6.0f} GB/s")
    json.dump(rows, open(a.out, "w"), indent=1)


if __name__ == "__main__":
    main()
