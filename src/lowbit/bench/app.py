"""``lowbit bench`` command line: parse, measure ceilings, sweep, write tables / JSON / CSV / plots."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .cases import DTYPES, OURS, OpSpec, select_cases
from .results import ERROR, FAIL, derive
from .roofline import Ceilings
from .shapes import DEFAULT_M, QUICK_M, parse_m, resolve
from .timing import FakeTimer, Timer, default_timer, fake_requested

EPILOG = """examples:
  lowbit bench --op w4a16 --shapes llama3-8b,llama3-70b --quick
  lowbit bench --op wxa16 --bits 3 --shapes llama3-8b-tp4,6144x4096 --m 1,16,256
  lowbit bench --op fp8 --shapes llama3-8b
  lowbit bench --op w4a16 --shapes llama3-8b-tp2,llama3-70b-tp4 --dry-run   (tensor-parallel shards; docs/tp.md)
  lowbit bench --op sparse24 --shapes llama3-8b --quick   (2:4 sparse int4 vs dense W4A16 vs cuBLAS; docs/sparse24.md)
  lowbit bench warmup --op w4a16 --shapes 4096x4096
  lowbit bench e2e --model llama3-8b --formats bf16,tinygemm,w4a16 --batch 1,8,32,128   (see docs/e2e.md)
  lowbit bench moe --shapes mixtral-8x7b,qwen1.5-moe --tokens 1,8,64,512,4096   (grouped expert GEMM)
  lowbit bench bits --bits 1,2,3,4,5,6,7,8 --shapes llama3-8b --m 1,16,1024   (bit-width sweep + plot)
Set LOWBIT_BENCH_FAKE_TIMER=1 to run the harness with a fake timer and fake ceilings (no GPU needed).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit bench", description="Time lowbit ops against baselines with speed-of-light.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", default="w4a16", choices=["w4a16", "wxa16", "fp8", "int8", "w4a8", "sparse24"])
    p.add_argument("--bits", type=int, default=None, help="weight bits for --op wxa16 (1..8)")
    p.add_argument("--group-size", default="128", help="group size (multiple of 32) or 'none' for per-channel")
    p.add_argument("--sym", action="store_true", help="symmetric weights (no stored zeros)")
    p.add_argument("--shapes", default="llama3-8b",
                   help="comma list: llama3-8b, llama3-70b, <model>-tp2/-tp4, or NxK (N=out, K=in)")
    p.add_argument("--m", default=None, help=f"comma list of M (default {','.join(map(str, DEFAULT_M))}; "
                                             f"--quick: {','.join(map(str, QUICK_M))})")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--baselines", default=None,
                   help="comma list of baselines (default: the op's defaults; 'none' for ours only; 'all')")
    p.add_argument("--out", default="out/bench", help="output directory")
    p.add_argument("--quick", action="store_true", help="fewer replays, shorter eager timing, fewer default M")
    p.add_argument("--replays", type=int, default=None, help="graph replays per point (default 20, quick 10)")
    p.add_argument("--min-copy-mb", type=float, default=256.0, help="total bytes of the weight copies per point")
    p.add_argument("--max-copies", type=int, default=1000)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; shapes not started by then are recorded SKIP (results stay consistent)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--tag", default=None, help="file name stem (default from op/bits/group/dtype)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the shapes x M table that would run (TP shards included) and exit; no GPU needed")
    return p


def _spec(args: argparse.Namespace) -> OpSpec:
    gs = None if args.group_size.lower() in ("none", "0", "-1") else int(args.group_size)
    if args.op == "w4a16":
        if args.bits not in (None, 4):
            raise ValueError("--op w4a16 is 4-bit; use --op wxa16 --bits N for other widths")
        bits = 4
    elif args.op == "wxa16":
        if args.bits is None:
            raise ValueError("--op wxa16 needs --bits N (1..8)")
        bits = args.bits
    elif args.op in ("w4a8", "sparse24"):
        bits = 4 if args.bits is None else args.bits
    else:
        bits = 8
    op = "wxa16" if args.op in ("w4a16", "wxa16") else args.op
    return OpSpec(op=op, bits=bits, group_size=gs, dtype=DTYPES[args.dtype], symmetric=args.sym)


def _baselines(text: Optional[str], spec: OpSpec) -> Optional[List[str]]:
    if text is None:
        return None
    t = text.strip().lower()
    if t == "none":
        return []
    if t == "all":
        from .cases import REGISTRY, load_builtin_cases

        load_builtin_cases()
        return [c.name for c in REGISTRY.values() if spec.op in c.ops and c.role != "ours"]
    return [b.strip() for b in text.split(",") if b.strip()]


class _Progress:
    """tqdm bar on stderr when available, else a line per shape."""

    def __init__(self, total: int) -> None:
        self.bar = None
        self.last = ""
        try:
            from tqdm import tqdm

            tty = sys.stderr.isatty()
            self.bar = tqdm(total=total, file=sys.stderr, unit="pt", dynamic_ncols=True,
                            mininterval=0.5 if tty else 15.0)  # keep logs of non-interactive runs short
        except ImportError:
            pass

    def __call__(self, desc: str) -> None:
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)
            self.bar.update(1)
        elif desc.split(" ")[0] != self.last:
            self.last = desc.split(" ")[0]
            print(f"  {self.last} ...", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Optional[Sequence[str]] = None, *, timer: Optional[Timer] = None,
         ceilings: Optional[Ceilings] = None) -> int:
    """Run ``lowbit bench``; returns the exit code. ``timer``/``ceilings`` inject fakes (tests).

    Exit codes: 0 done (baselines may have failed: see the notes), 1 one of ours was FAIL or ERROR,
    2 bad arguments or no CUDA device (without the fake timer).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "warmup":
        from .warmup import main as warmup_main

        return warmup_main(argv[1:])
    if argv and argv[0] == "e2e":
        from .e2e import main as e2e_main

        return e2e_main(argv[1:])
    if argv and argv[0] == "bits":
        from .bits import main as bits_main

        return bits_main(argv[1:], timer=timer)
    if argv and argv[0] == "moe":
        from .moe import main as moe_main

        return moe_main(argv[1:], timer=timer)
    args = build_parser().parse_args(argv)
    try:
        spec = _spec(args)
        shapes = resolve(args.shapes)
        ms = parse_m(args.m) if args.m else list(QUICK_M if args.quick else DEFAULT_M)
        cases = select_cases(spec, _baselines(args.baselines, spec))
    except ValueError as e:
        print(f"lowbit bench: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return _dry_run(spec, shapes, ms, cases)
    fake = timer is not None or fake_requested()
    if not fake and not torch.cuda.is_available():
        print("lowbit bench: timing needs a CUDA device (torch.cuda.is_available() is False). "
              "Set LOWBIT_BENCH_FAKE_TIMER=1 to exercise the harness with a fake timer.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if timer is None:
        timer = FakeTimer() if fake else default_timer(args.quick, args.replays, args.min_copy_mb, args.max_copies)

    t_start = time.perf_counter()
    notes: List[str] = []
    usable = []
    for c in cases:
        ok, why = c.available(spec, device)
        if ok:
            usable.append(c)
        else:
            notes.append(f"{c.name} skipped: {why}")
            print(f"lowbit bench: {c.name} skipped: {why}", file=sys.stderr)
    if not usable:
        print("lowbit bench: no method can run here", file=sys.stderr)
        return 2
    kinds = {c.math_kind(spec) for c in usable}
    if ceilings is None:
        if fake:
            from .ceilings import fake_ceilings

            ceilings = fake_ceilings(kinds)
        else:
            from .ceilings import measure_ceilings

            print("lowbit bench: measuring streaming ceiling and dense peaks ...", file=sys.stderr, flush=True)
            try:
                ceilings = measure_ceilings(timer, kinds)
            except Exception as e:  # noqa: BLE001 - timings stay valid without SOL columns
                notes.append(f"ceilings not measured ({type(e).__name__}: {e}); no SOL columns")
                print(f"lowbit bench: {notes[-1]}", file=sys.stderr)
            if ceilings is not None:
                bw = ceilings.peak_bandwidth / 1e12
                peaks = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in ceilings.peaks.items())
                print(f"lowbit bench: ceilings in {time.perf_counter() - t_start:.1f} s: {bw:.2f} TB/s, {peaks}",
                      file=sys.stderr, flush=True)

    from . import report
    from .micro import Sweep, run_sweep

    meta = report.collect_meta(argv)
    meta.update(spec=spec.title, op=args.op, bits=spec.bits, group_size=spec.group_size, dtype=spec.dtype_name,
                shapes=[s.label for s in shapes], m=ms, methods={c.name: c.label for c in usable}, notes=notes,
                fake_timer=fake, timer=repr(timer) if not isinstance(timer, FakeTimer) else "FakeTimer")
    stem = args.tag or _stem(args, spec)
    out = Path(args.out)
    sweep = Sweep(spec, shapes, ms, usable, device, args.seed, args.time_budget, notes)
    bar = _Progress(len(shapes) * len(ms) * len(usable))

    def checkpoint(rows):
        derive(rows, ceilings)
        meta["elapsed_s"] = time.perf_counter() - t_start
        report.write_all(out, stem, meta, ceilings, rows, complete=False)

    try:
        rows = run_sweep(sweep, timer, bar, checkpoint)
    finally:
        bar.close()
    derive(rows, ceilings)
    meta["elapsed_s"] = time.perf_counter() - t_start
    paths = report.write_all(out, stem, meta, ceilings, rows, complete=True)
    header = f"lowbit bench: {spec.title} on {meta['gpu'].get('name', device.type)}" + (" [FAKE TIMER]" if fake else "")
    report.print_tables(report.tables(rows), header)
    written = list(paths.values())
    if not args.no_plots:
        try:
            from .plots import write_plots

            written += write_plots(rows, ceilings, spec.title, out, stem)
        except Exception as e:  # noqa: BLE001 - the numbers are already on disk
            print(f"lowbit bench: plots skipped ({type(e).__name__}: {e})", file=sys.stderr)
    for n in notes:
        print(f"note: {n}")
    bad = [r for r in rows if r.status in (FAIL, ERROR)]
    if bad:
        print(f"{len(bad)} point(s) FAIL/ERROR: " + ", ".join(sorted({f'{r.method}:{r.status}' for r in bad})))
    print("wrote " + ", ".join(str(p) for p in written))
    print(f"elapsed {meta['elapsed_s']:.1f} s")
    return 1 if any(r.status in (FAIL, ERROR) and r.role == OURS for r in rows) else 0


def _stem(args: argparse.Namespace, spec: OpSpec) -> str:
    if spec.op == "wxa16":
        g = "pc" if spec.group_size is None else f"g{spec.group_size}"
        return f"w{spec.bits}a16_{g}_{spec.dtype_name}"
    if spec.op == "w4a8":
        return f"w{spec.bits}a8_{'pc' if spec.group_size is None else f'g{spec.group_size}'}_{spec.dtype_name}"
    if spec.op == "sparse24":
        return f"sparse24_w4a16_{'pc' if spec.group_size is None else f'g{spec.group_size}'}_{spec.dtype_name}"
    return f"{spec.op}_{spec.dtype_name}"


def _dry_run(spec: OpSpec, shapes, ms: List[int], cases) -> int:
    """Print the sweep's table (one line per shape: N x K and how tensor parallelism split it) and exit 0."""
    print(f"lowbit bench (dry run): {spec.title}; M = {','.join(map(str, ms))}; "
          f"methods: {', '.join(c.name for c in cases)}")
    print(f"{'model':<20} {'layer':<10} {'parallel':<8} {'N':>7} {'K':>7}")
    for s in shapes:
        print(f"{s.model:<20} {s.layer:<10} {s.parallel:<8} {s.n:>7} {s.k:>7}")
    print(f"{len(shapes)} shapes x {len(ms)} M x {len(cases)} methods = {len(shapes) * len(ms) * len(cases)} points")
    return 0
