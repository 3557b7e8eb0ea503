"""Dev probe: the packed 4-bit GEMM path for formats it newly covers, against the generic dequant loop.

For Llama-3-8B shapes and a few M, times (cold CUDA graph, ``CudaTimer``) ``gemm_wxa16`` with the shipped
config of this GPU for int4 at group 128 / 64 / 32 (asymmetric and symmetric) and the lookup-table
formats NF4 (group 64) and FP4 e2m1 (group 32), once with the packed path and once with it switched
off (``gemm.use_packed`` -> False: the loop those formats ran before), and packed with BLOCK_K cut to
the group size (one group per tile: the per-tile scale instead of per-word-row scales), with the error
vs the fp32 reference. ``lowbit bench`` is the user-facing harness (dispatch included).

    PYTHONPATH=src python scripts/group_probe.py --m 1,16,64 --json out.json
"""
import dataclasses

import torch

import lowbit.kernels.gemm as gemm_mod
from lowbit import IntxFormat
from lowbit.bench.timing import CudaTimer
from lowbit.formats.intx import symmetric_zero
from lowbit.formats.lut import CodebookFormat, Fp4Format, NF4Format
from lowbit.kernels.launch import resolve_config
from probe_common import ints, measure, probe_parser, shapes_nk, write_rows

FORMATS = {
    "int4-g128": lambda: IntxFormat(4, 128), "int4-g64": lambda: IntxFormat(4, 64), "int4-g32": lambda: IntxFormat(4, 32),
    "int4sym-g128": lambda: IntxFormat(4, 128, True), "int4sym-g64": lambda: IntxFormat(4, 64, True),
    "nf4-g64": lambda: NF4Format(64), "fp4-g32": lambda: Fp4Format(32, "e8m0"),
    "cb4row-g64": lambda: CodebookFormat(4, 64, "row", iters=4),
}


def launcher(x, n, config=None):
    """q -> Y through the GEMM launcher (affine or lookup-table weight); config None: the shipped one."""
    def call(q):
        table = getattr(q, "table", None)
        sym = 0.0 if table is not None else symmetric_zero(4)
        return gemm_mod.gemm_wxa16(x, q.qweight, q.scales, getattr(q, "zeros", None), None, 4, q.group_size, sym, n,
                                   config=config, table=table)
    return call


def clone(qw):
    """An independent weight copy (own code words) for the cold-cache timer."""
    return dataclasses.replace(qw, qweight=qw.qweight.clone())


def main():
    p = probe_parser(m="1,16,64", shapes="6144x4096,28672x4096,4096x14336")
    p.add_argument("--formats", default=",".join(FORMATS))
    a = p.parse_args()
    timer = CudaTimer(replays=5)
    saved = gemm_mod.use_packed
    rows = []
    print(f"{'shape':>12} {'M':>4} {'format':>13} {'packed us':>10} {'generic us':>11} {'speedup':>8} {'err packed':>11} "
          f"{'err generic':>12} {'bk=group us':>12}")
    for n, k in shapes_nk(a.shapes):
        w = torch.randn(n, k, device="cuda", dtype=torch.float32) * 0.02
        for fname in a.formats.split(","):
            qw = FORMATS[fname]().quantize(w)
            ref_w = qw.dequantize(torch.float32)
            copies = [qw] + [clone(qw) for _ in range(timer.copies_needed(qw.qweight.numel() * 4) - 1)]
            for m in ints(a.m):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = x.float() @ ref_w.t()
                row = {"n": n, "k": k, "m": m, "format": fname}
                shipped = resolve_config("gemm", gemm_mod.GemmConfig, gemm_mod.heuristic_config, m, n, k, 4,
                                         qw.group_size, x)
                clamped = dataclasses.replace(shipped, block_k=min(shipped.block_k, qw.group_size))
                for variant in ("packed", "generic", "bk=group"):
                    gemm_mod.use_packed = saved if variant != "generic" else (lambda *args, **kw: False)
                    call = launcher(x, n, clamped if variant == "bk=group" else shipped)
                    us, err = measure(timer, call, copies, ref)
                    row[variant] = {"us": us, "err": err}
                gemm_mod.use_packed = saved
                rows.append(row)
                print(f"{n:>6}x{k:<5} {m:>4} {fname:>13} {row['packed']['us']:>10.1f} {row['generic']['us']:>11.1f} "
                      f"{row['generic']['us'] / row['packed']['us']:>7.2f}x {row['packed']['err']:>11.1e} "
                      f"{row['generic']['err']:>12.1e} {row['bk=group']['us']:>12.1f}", flush=True)
            del copies
            torch.cuda.empty_cache()
    write_rows(rows, a.json)


if __name__ == "__main__":
    main()
