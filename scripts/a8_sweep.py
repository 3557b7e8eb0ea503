"""GPU config sweep for the 8-bit activation GEMM (``kernels/scaled_mm.py``), GEMM only (operands
quantized beforehand), median of ``triton.testing.do_bench`` (L2 flushed per call):

* fp8 W8A8 row-wise at large M: ``LARGE_M_CANDIDATES`` (and the shipped heuristic) vs
  ``torch._scaled_mm`` row-wise, same operands -> ratio ``scaled_mm_us / ours_us`` (goal >= 0.95 at M >= 1024);
* W4A8 (int4 g128 asym): the prmt-table unpack vs the fp16-magic unpack under the heuristic config;
* ``--tma``: fp8 and int8 at M >= 128, the persistent TMA kernel's ``TMA_CANDIDATES`` and its heuristic vs
  the pointer kernel's heuristic, ``torch._scaled_mm`` / ``torch._int_mm`` (GEMM only), cuBLAS bf16
  (``F.linear``) and our activation quantization alone, so quantization-included ratios follow.

    PYTHONPATH=src python scripts/a8_sweep.py --shapes llama3-8b --out sweep.json   (needs an sm_89+ GPU)
"""
import argparse
import json
import time

import torch
import triton

from lowbit.bench.shapes import parse_m, resolve
from lowbit.formats import IntxFormat
from lowbit.formats.act8 import quantize_rows
from lowbit.kernels.int4_fp8 import UNPACK_MAGIC, UNPACK_PRMT
from lowbit.kernels.quant_act import quantize_act
from lowbit.kernels.scaled_mm import LARGE_M_CANDIDATES, heuristic_config, scaled_mm, scaled_mm_intx
from lowbit.kernels.scaled_mm_tma import BLOCK_SCALE_TILES, TMA_CANDIDATES, heuristic_tma_config, scaled_mm_tma
from lowbit.kernels.scaled_mm_wgmma import WGMMA_CANDIDATES, scaled_mm_wgmma, wgmma_applies
from probe_common import graph_us


def bench(fn):
    return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median") * 1e3  # us


def sweep_fp8(shapes, ms, rows, deadline):
    for s in shapes:
        w = torch.randn(s.n, s.k, device="cuda") * 0.05
        wq, sw = quantize_rows(w, "fp8")
        for m in ms:
            if time.time() > deadline:
                return
            xq, sx = quantize_rows(torch.randn(m, s.k, device="cuda"), "fp8")
            ref_us = bench(lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx[:, None], scale_b=sw[None, :],
                                                    out_dtype=torch.bfloat16))
            for cfg in [None] + list(LARGE_M_CANDIDATES):
                name = "heuristic " + str(heuristic_config(m, s.n, s.k)) if cfg is None else str(cfg)
                try:
                    us = bench(lambda: scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, cfg))
                except Exception as e:  # noqa: BLE001 - out of shared memory etc.: record and go on
                    rows.append(dict(op="fp8", shape=s.name, n=s.n, k=s.k, m=m, config=name, error=repr(e)[:200]))
                    continue
                rows.append(dict(op="fp8", shape=s.name, n=s.n, k=s.k, m=m, config=name, us=us,
                                 scaled_mm_us=ref_us, ratio=ref_us / us))
                print(f"fp8  {s.name:24s} M={m:<5d} {ref_us / us:5.2f}x _scaled_mm  {us:8.1f} us  {name}", flush=True)


SMALL_M_GRID = [(bn, split, stages) for bn in (64, 128) for split in (1, 2, 4, 8, 16) for stages in (4, 6)]


def sweep_small(shapes, ms, rows, deadline, kinds=("fp8",)):
    """Swap-AB tiles at M <= 16 (BLOCK_M 16, 4 warps): BLOCK_N x split-K x stages around the heuristic's choice,
    GEMM only, against the heuristic and cuBLAS bf16 on the same shape."""
    from lowbit.kernels.scaled_mm import ScaledMMConfig

    for kind in kinds:
        for s in shapes:
            w = torch.randn(s.n, s.k, device="cuda") * 0.05
            wq, sw = quantize_rows(w, kind)
            wb = w.to(torch.bfloat16)
            for m in ms:
                if time.time() > deadline:
                    return
                xq, sx = quantize_rows(torch.randn(m, s.k, device="cuda"), kind)
                xb = torch.randn(m, s.k, device="cuda", dtype=torch.bfloat16)
                bf16_us = graph_us(lambda: torch.nn.functional.linear(xb, wb))
                heur = heuristic_config(m, s.n, s.k)
                base = graph_us(lambda: scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, heur))
                best = (base, str(heur))
                for bn, split, stages in SMALL_M_GRID:
                    cfg = ScaledMMConfig(16, bn, 128, split, 8, 4, stages, True)
                    try:
                        us = graph_us(lambda: scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, cfg))
                    except Exception as e:  # noqa: BLE001 - out of shared memory etc.
                        rows.append(dict(op=f"{kind}-small", shape=s.name, m=m, config=str(cfg), error=repr(e)[:200]))
                        continue
                    rows.append(dict(op=f"{kind}-small", shape=s.name, n=s.n, k=s.k, m=m, config=str(cfg), us=us,
                                     heuristic_us=base, bf16_us=bf16_us, bn=bn, split=split, stages=stages))
                    best = min(best, (us, str(cfg)))
                print(f"{kind} {s.name:24s} M={m:<3d} heuristic {base:6.1f} us ({bf16_us / base:4.2f}x bf16) "
                      f"best {best[0]:6.1f} us ({bf16_us / best[0]:4.2f}x) {best[1]}", flush=True)


def sweep_w4a8(shapes, ms, rows, deadline):
    for s in shapes:
        qw = IntxFormat(4, 128, False, "int", torch.bfloat16).quantize(torch.randn(s.n, s.k) * 0.05).to("cuda")
        for m in ms:
            if time.time() > deadline:
                return
            xq, sx = quantize_rows(torch.randn(m, s.k, device="cuda"), "fp8")
            for name, unpack in (("prmt", UNPACK_PRMT.value), ("magic", UNPACK_MAGIC.value)):
                us = bench(lambda: scaled_mm_intx(xq, sx, qw.qweight, qw.scales, qw.zeros, None, 4, 128, 8, s.n,
                                                  torch.bfloat16, None, unpack))
                rows.append(dict(op="w4a8", shape=s.name, n=s.n, k=s.k, m=m, unpack=name, us=us,
                                 config=str(heuristic_config(m, s.n, s.k))))
                print(f"w4a8 {s.name:24s} M={m:<5d} {name:5s} {us:8.1f} us", flush=True)


def _vendor_8bit(kind, xq, sx, wq, sw):
    if kind == "fp8":
        return lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx[:, None], scale_b=sw[None, :], out_dtype=torch.bfloat16)
    return lambda: torch._int_mm(xq, wq.t())


def sweep_tma(shapes, ms, rows, deadline, kinds=("int8", "fp8")):
    """Per (kind, shape, M): one row per method (``us``: GEMM only; method ``quant``: the activation
    quantization alone)."""
    for kind in kinds:
        for s in shapes:
            w = torch.randn(s.n, s.k, device="cuda", dtype=torch.bfloat16) * 0.05
            wq, sw = quantize_rows(w, kind)
            for m in ms:
                if time.time() > deadline:
                    return
                x = torch.randn(m, s.k, device="cuda", dtype=torch.bfloat16)
                xq, sx = quantize_rows(x, kind)
                pointer_cfg = heuristic_config(m, s.n, s.k)
                base = dict(op="tma", kind=kind, shape=s.name, n=s.n, k=s.k, m=m)
                timed = dict(bf16=bench(lambda: torch.nn.functional.linear(x, w)),
                             quant=bench(lambda: quantize_act(x, kind)),
                             vendor=bench(_vendor_8bit(kind, xq, sx, wq, sw)),
                             pointer=bench(lambda: scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, pointer_cfg)))
                ref = scaled_mm(xq, sx, wq, sw, None, torch.bfloat16, None, pointer_cfg).float()
                cands = [("tma_heuristic", heuristic_tma_config(m, s.n, s.k))] + [(str(c), c) for c in TMA_CANDIDATES]
                cands += [(str(c), c) for c in WGMMA_CANDIDATES if wgmma_applies(m, s.k, xq, wq, None, c)]
                for name, cfg in cands:
                    run = scaled_mm_wgmma if name.startswith("Wgmma") else scaled_mm_tma
                    try:
                        y = run(xq, sx, wq, sw, None, torch.bfloat16, cfg).float()
                        err = ((y - ref).norm() / ref.norm()).item()
                        timed[name] = bench(lambda: run(xq, sx, wq, sw, None, torch.bfloat16, cfg))
                        rows.append(dict(base, method=name, us=timed[name], rel_err_vs_pointer=err))
                    except Exception as e:  # noqa: BLE001 - out of shared memory etc.: record and go on
                        rows.append(dict(base, method=name, error=repr(e)[:200]))
                for name in ("bf16", "quant", "vendor", "pointer"):
                    rows.append(dict(base, method=name, us=timed[name]))
                best = min((v, k) for k, v in timed.items() if k.startswith("Tma") or k == "tma_heuristic")
                wg = min([(v, k) for k, v in timed.items() if k.startswith("Wgmma")] or [(float("nan"), "-")])
                q = timed["quant"]
                print(f"{kind:4s} {s.name:20s} M={m:<5d} bf16 {timed['bf16']:8.1f} quant {q:6.1f} vendor "
                      f"{timed['vendor']:8.1f} pointer {timed['pointer']:8.1f} tma_h {timed.get('tma_heuristic', 0):8.1f}"
                      f" best {best[0]:8.1f} | x bf16 incl quant: pointer {timed['bf16'] / (timed['pointer'] + q):.2f}"
                      f" tma_h {timed['bf16'] / (timed.get('tma_heuristic', 1e9) + q):.2f} best {timed['bf16'] / (best[0] + q):.2f}"
                      f" | best {best[1]} | wgmma best {wg[0]:8.1f} x bf16 incl quant {timed['bf16'] / (wg[0] + q):.2f}"
                      f" {wg[1]}", flush=True)


def sweep_block(shapes, ms, rows, deadline):
    """fp8 128 x 128 block scales: the pointer kernel's heuristic vs the TMA kernel's BLOCK_SCALE_TILES
    (GEMM only, operands quantized beforehand), plus cuBLAS bf16."""
    from lowbit.formats import Fp8Format

    for s in shapes:
        w = torch.randn(s.n, s.k, device="cuda", dtype=torch.bfloat16) * 0.05
        fw = Fp8Format("block").quantize(w)
        for m in ms:
            if time.time() > deadline:
                return
            x = torch.randn(m, s.k, device="cuda", dtype=torch.bfloat16)
            xq, sx = quantize_rows(x, "fp8", 128)
            base = dict(op="block", kind="fp8", shape=s.name, n=s.n, k=s.k, m=m)
            timed = dict(bf16=bench(lambda: torch.nn.functional.linear(x, w)),
                         pointer=bench(lambda: scaled_mm(xq, sx, fw.qweight, fw.scales, None, torch.bfloat16, 128,
                                                         heuristic_config(m, s.n, s.k, 128))))
            for cfg in BLOCK_SCALE_TILES:
                timed[str(cfg)] = bench(lambda: scaled_mm(xq, sx, fw.qweight, fw.scales, None, torch.bfloat16, 128, cfg))
            for name, us in timed.items():
                rows.append(dict(base, method=name, us=us))
            print(f"block {s.name:20s} M={m:<5d} " + " ".join(f"{k[:40]} {v:8.1f}" for k, v in timed.items()), flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="llama3-8b")
    p.add_argument("--m-fp8", default="1024,4096")
    p.add_argument("--m-w4a8", default="1,16,64,256,1024,4096")
    p.add_argument("--tma", action="store_true", help="only the persistent TMA kernel sweep (fp8 + int8)")
    p.add_argument("--small", action="store_true", help="only the swap-AB tile sweep at --m-small (GEMM only)")
    p.add_argument("--m-small", default="1,16")
    p.add_argument("--block", action="store_true", help="only fp8 block scales: pointer vs TMA kernel")
    p.add_argument("--m-tma", default="128,256,512,1024,2048,4096,8192")
    p.add_argument("--kinds", default="int8,fp8")
    p.add_argument("--budget", type=float, default=50.0, help="seconds; stops starting new points after it")
    p.add_argument("--out", default="a8_sweep.json")
    a = p.parse_args()
    shapes = resolve(a.shapes)
    rows = []
    t0 = time.time()
    try:
        if a.block:
            sweep_block(shapes, parse_m(a.m_tma), rows, t0 + a.budget)
            return
        if a.tma:
            sweep_tma(shapes, parse_m(a.m_tma), rows, t0 + a.budget, a.kinds.split(","))
            return
        if a.small:
            sweep_small(shapes, parse_m(a.m_small), rows, t0 + a.budget, a.kinds.split(","))
            return
        sweep_w4a8(shapes, parse_m(a.m_w4a8), rows, t0 + a.budget * 0.4)
        sweep_fp8(shapes, parse_m(a.m_fp8), rows, t0 + a.budget)
    finally:
        with open(a.out, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                           rows=rows), f, indent=1)
    report_fp8(rows)


def report_fp8(rows):
    best = {}
    for r in rows:
        if r["op"] == "fp8" and "ratio" in r:
            key = (r["shape"], r["m"])
            if key not in best or r["ratio"] > best[key]["ratio"]:
                best[key] = r
    for (shape, m), r in sorted(best.items()):
        print(f"best fp8 {shape:24s} M={m:<5d} {r['ratio']:.2f}x _scaled_mm  {r['config']}")


if __name__ == "__main__":
    main()
