"""Does dequantize + cuBLAS at large M gain from overlapping the dequantization of weight-row chunk i + 1 (side
stream) with the GEMM of chunk i (main stream)? do_bench medians of CUDA-graph replays of: cuBLAS on a dense bf16 weight, the
serial dequantize + F.linear, and the chunked two-stream version for C chunks; Llama-3-8B shapes.
    PYTHONPATH=src python scripts/overlap_probe.py [--json FILE]"""
import torch
import torch.nn.functional as F
import triton

from lowbit import IntxFormat
from lowbit.kernels.dequant import dequantize_intx
from probe_common import graph_us, ints, probe_parser, rel_err, shapes_nk, write_rows


def overlapped(x, qw, bits, k, chunks, side, w, y):
    """W rows [n0, n1) dequantized on ``side`` while the main stream multiplies the previous chunk."""
    main = torch.cuda.current_stream()
    side.wait_stream(main)
    n = w.shape[0]
    step = triton.cdiv(triton.cdiv(n, chunks), 128) * 128
    events = []
    with torch.cuda.stream(side):
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            w[n0:n1] = dequantize_intx(qw.qweight[:, n0:n1], qw.scales[:, n0:n1], qw.zeros[:, n0:n1], bits, 128,
                                       2 ** (bits - 1), k, x.dtype)
            ev = torch.cuda.Event()
            ev.record(side)
            events.append((n0, n1, ev))
    for n0, n1, ev in events:
        main.wait_event(ev)
        torch.mm(x, w[n0:n1].t(), out=y[:, n0:n1])
    return y


def main():
    ap = probe_parser(m="1024,2048,4096", shapes="28672x4096,4096x14336,6144x4096,4096x4096")
    ap.add_argument("--bits", default="4,2")
    ap.set_defaults(json="overlap_probe.json")
    a = ap.parse_args()
    side = torch.cuda.Stream()
    rows = []
    for bits in ints(a.bits):
        for n, k in shapes_nk(a.shapes):
            qw = IntxFormat(bits, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
            dense = qw.dequantize(torch.bfloat16)
            for m in ints(a.m):
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                ref = F.linear(x, dense)
                w = torch.empty(n, k, device="cuda", dtype=torch.bfloat16)
                y = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
                t = {"cublas": lambda: F.linear(x, dense),
                     "serial": lambda: F.linear(x, dequantize_intx(qw.qweight, qw.scales, qw.zeros, bits, 128,
                                                                    2 ** (bits - 1), k, x.dtype))}
                for c in (2, 4, 8):
                    t[f"overlap{c}"] = (lambda c=c: overlapped(x, qw, bits, k, c, side, w, y))
                res = {}
                for name, fn in t.items():
                    out = fn()
                    torch.cuda.synchronize()
                    err = rel_err(out, ref)
                    assert err < 1e-2, (name, err)
                    res[name] = graph_us(fn, warmup=10, rep=50)
                rows.append(dict(bits=bits, n=n, k=k, m=m, **res))
                best = min((v, kk) for kk, v in res.items() if kk.startswith("overlap"))
                print(f"W{bits} {n}x{k} M={m}: cuBLAS {res['cublas']:.1f} us, serial {res['serial']:.1f} "
                      f"({res['cublas'] / res['serial']:.2f}x cuBLAS), best {best[1]} {best[0]:.1f} "
                      f"({res['cublas'] / best[0]:.2f}x)  " + " ".join(f"{kk} {v:.1f}" for kk, v in res.items()
                                                                      if kk.startswith("overlap")))
    write_rows(rows, a.json)


if __name__ == "__main__":
    main()
