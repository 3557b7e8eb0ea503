"""Dev probe (issue 14): the packed GEMM on NF4 codes with other tiles than the int4 table's, against int4.

For Llama-3-8B shapes at M = 1 / 16, times (cold CUDA graph, ``CudaTimer``) ``gemm_wxa16`` on words in the mma
word order (as ``QuantLinear`` / ``LutLinear`` run them): int4 group 64 with its dispatched config, NF4 group 64
with the config the LUT path gets today, and NF4 with split-K 1 / 2 / 4 x BLOCK_K 64 / 128 (the rest of the
shipped config kept), each with its relative error against the fp32 reference.

    PYTHONPATH=src python scripts/lut_config_probe.py --m 1,16 --json out.json
"""
import dataclasses

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.timing import CudaTimer
from lowbit.formats.intx import symmetric_zero, to_mma_words
from lowbit.formats.lut import NF4Format
from lowbit.kernels.launch import resolve_config
from probe_common import ints, measure, probe_parser, shapes_nk, write_rows


def main():
    a = probe_parser(m="1,16").parse_args()
    timer = CudaTimer(replays=5)
    rows = []
    for n, k in shapes_nk(a.shapes):
        w = torch.randn(n, k, device="cuda") * 0.02
        qi, qn = IntxFormat(4, 64).quantize(w), NF4Format(64).quantize(w)
        words = {"int4": to_mma_words(qi.qweight, 4), "nf4": to_mma_words(qn.qweight, 4)}
        reps = timer.copies_needed(words["int4"].numel() * 4)
        copies = {f: [q] + [q.clone() for _ in range(reps - 1)] for f, q in words.items()}
        refs = {"int4": qi.dequantize(torch.float32), "nf4": qn.dequantize(torch.float32)}
        for m in ints(a.m):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

            def run(fmt, config, q):
                if fmt == "int4":
                    return gemm_mod.gemm_wxa16(x, q, qi.scales, qi.zeros, None, 4, 64, symmetric_zero(4), n,
                                               config=config, k_order=1)
                return gemm_mod.gemm_wxa16(x, q, qn.scales, None, None, 4, 64, 0.0, n, config=config,
                                           table=qn.table, k_order=1)

            shipped = resolve_config("gemm", gemm_mod.GemmConfig, gemm_mod.heuristic_config, m, n, k, 4, 64, x)
            int_cfg = gemm_mod.one_group_per_tile(shipped, 4, qi.zeros, symmetric_zero(4), None, 64)
            variants = [("int4", "dispatched", int_cfg), ("nf4", "dispatched", shipped)]
            for split in (1, 2, 4):
                for bk in (64, 128):
                    variants.append(("nf4", f"split{split}-bk{bk}",
                                     dataclasses.replace(shipped, split_k=split, block_k=bk, k_unroll=1)))
            base = None
            for fmt, name, cfg in variants:
                us, err = measure(timer, lambda q: run(fmt, cfg, q), copies[fmt], x.float() @ refs[fmt].t())
                base = us if base is None else base
                row = {"n": n, "k": k, "m": m, "format": fmt, "variant": name, "config": dataclasses.asdict(cfg),
                       "us": us, "err": err, "vs_int4": us / base}
                rows.append(row)
                print(f"{n:>6}x{k:<6} M={m:<3} {fmt:>5} {name:>14} {us:8.1f} us  x{us / base:5.2f} int4  err {err:.1e}"
                      f"  (split {cfg.split_k}, bk {cfg.block_k}, bn {cfg.block_n}, stages {cfg.num_stages})", flush=True)
        del copies
        torch.cuda.empty_cache()
    write_rows(rows, a.json)


if __name__ == "__main__":
    main()
