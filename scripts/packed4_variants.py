"""Dev probe: what each option of the packed 4-bit GEMM path (``gemm.PACKED_OPTIONS``) is worth.

For a few Llama-3-8B shapes and M, times (cold CUDA graph, ``CudaTimer``) the packed GEMM with every
combination of fragment_rows / scale_after over a small config grid and prints the best of each, with
its error vs the fp32 reference. The rigorous harnesses are ``lowbit tune`` and ``lowbit bench``.

    PYTHONPATH=src python scripts/packed4_variants.py --m 1,16,64 --json out.json
"""
import itertools

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.timing import CudaTimer
from lowbit.kernels.gemm import GemmConfig, gemm_wxa16
from probe_common import ints, measure, probe_parser, shapes_nk, write_rows

VARIANTS = {"plain": (False, False), "rows": (True, False), "scale_after": (False, True), "both": (True, True)}


def configs(m):
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    out = []
    for (bn, warps), split in itertools.product(((64, 4), (128, 4), (128, 8), (256, 8)), (2, 4, 8)):
        if bm == 64 and bn * bm > 8192:
            continue
        out.append(GemmConfig(bm, bn, 128, split, 8, warps, 4))
    return out


def main():
    a = probe_parser(m="1,16,64").parse_args()
    timer = CudaTimer(replays=5)
    rows = []
    for n, k in shapes_nk(a.shapes):
        qw = IntxFormat(4, 128).quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02)
        ref_w = qw.dequantize().float()
        qws = [qw] + [type(qw)(qw.qweight.clone(), qw.scales.clone(), qw.zeros.clone(), 4, 128, k)
                      for _ in range(timer.copies_needed(qw.ideal_nbytes()) - 1)]
        for m in ints(a.m):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ ref_w.t()
            row = {"n": n, "k": k, "m": m}
            for name, (rows_opt, scale_opt) in VARIANTS.items():
                gemm_mod.PACKED_OPTIONS = {"fragment_rows": rows_opt, "scale_after": scale_opt}
                best = None
                for cfg in configs(m):
                    def call(q, c=cfg):
                        return gemm_wxa16(x, q.qweight, q.scales, q.zeros, None, 4, 128, 8.0, n, c)
                    t, err = measure(timer, call, qws, ref)
                    if best is None or t < best[0]:
                        best = (t, cfg, err)
                row[name] = {"us": best[0], "err": best[2], "cfg": best[1].__dict__}
            rows.append(row)
            print(f"{n:6d}x{k:<6d} M={m:4d} " + "  ".join(
                f"{v}: {row[v]['us']:6.1f}us err {row[v]['err']:.1e} [{row[v]['cfg']['block_n']}/{row[v]['cfg']['num_warps']}w/sk{row[v]['cfg']['split_k']}]"
                for v in VARIANTS), flush=True)
        del qws
        torch.cuda.empty_cache()
    write_rows(rows, a.json)


if __name__ == "__main__":
    main()
