"""Cold start: time to first result of a fresh process, with and without the Triton on-disk cache.

The parent runs ``python -m lowbit.bench.warmup --child ...`` twice with ``TRITON_CACHE_DIR`` pointing
at a new empty directory: the first run compiles every kernel (cold), the second finds them on disk
(warm). The child times import, weight setup (quantization, not part of the op's cost), and the
first call of the op at every (shape, M) bucket, each synchronized. Times are wall-clock seconds
since the parent spawned the child (``time.time()``), so Python start-up and imports are included.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

MARK = "LOWBIT_WARMUP_RESULT "


def _child(args: argparse.Namespace) -> int:
    import torch

    from .. import ops
    from ..formats.intx import IntxFormat
    from .shapes import parse_m, resolve

    t0 = args.spawned_at if args.spawned_at is not None else time.time()
    t_import = time.time() - t0
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    gs = None if args.group_size in ("none", "0") else int(args.group_size)
    fmt = IntxFormat(bits=args.bits, group_size=gs, scale_dtype=dtype)
    t = time.time()
    weights = [(s, fmt.quantize(torch.randn(s.n, s.k, device=dev) * 0.02)) for s in resolve(args.shapes)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_setup = time.time() - t
    calls: List[Dict[str, object]] = []
    t_first: Optional[float] = None
    t_ops = time.time()
    for shape, qw in weights:
        for m in parse_m(args.m):
            x = torch.randn(m, shape.k, device=dev, dtype=dtype)
            t = time.time()
            ops.intx_linear(x, qw)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            now = time.time()
            if t_first is None:
                t_first = now - t0
            calls.append({"shape": shape.name, "n": shape.n, "k": shape.k, "m": m, "first_call_s": now - t})
    res = {"device": str(dev), "import_s": t_import, "setup_s": t_setup, "time_to_first_result_s": t_first,
           "ops_total_s": time.time() - t_ops, "calls": calls}
    print(MARK + json.dumps(res), flush=True)
    return 0


def parse_child_output(stdout: str) -> Dict[str, object]:
    """The child's result line (raises ValueError if it is missing)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise ValueError("warmup child printed no result line")


def _spawn(child_args: Sequence[str], cache_dir: str, timeout: float) -> Dict[str, object]:
    env = dict(os.environ, TRITON_CACHE_DIR=cache_dir)
    t = time.time()
    cmd = [sys.executable, "-m", "lowbit.bench.warmup", "--child", "--spawned-at", repr(t), *child_args]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - t
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"warmup child failed (rc={p.returncode}): " + " | ".join(tail))
    res = parse_child_output(p.stdout)
    res["process_wall_s"] = wall
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit bench warmup", description=__doc__.splitlines()[0])
    p.add_argument("--op", default="w4a16", choices=["w4a16", "wxa16"])
    p.add_argument("--bits", type=int, default=None, help="weight bits for --op wxa16 (w4a16: 4)")
    p.add_argument("--group-size", default="128", help="group size, or 'none' for per-channel")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--shapes", default="llama3-8b", help="shape tables / NxK list (see lowbit bench --help)")
    p.add_argument("--m", default="1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192")
    p.add_argument("--out", default="out/bench")
    p.add_argument("--timeout", type=float, default=280.0, help="seconds per child process")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--spawned-at", type=float, default=None, help=argparse.SUPPRESS)
    return p


def format_report(results: Dict[str, Dict[str, object]]) -> str:
    lines = [f"{'':16}{'start+import s':>15}{'setup s':>10}{'first result s':>16}{'all buckets s':>15}{'process s':>11}"]
    for name, r in results.items():
        lines.append(f"{name:16}{r['import_s']:>15.2f}{r['setup_s']:>10.2f}{r['time_to_first_result_s']:>16.2f}"
                     f"{r['ops_total_s']:>15.2f}{r['process_wall_s']:>11.2f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.op == "w4a16":
        args.bits = 4
    elif args.bits is None:
        print("lowbit bench warmup: --op wxa16 needs --bits N", file=sys.stderr)
        return 2
    if args.child:
        return _child(args)
    from .timing import fake_requested

    import torch

    if not torch.cuda.is_available() and not fake_requested():
        print("lowbit bench warmup: needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    child_args = ["--op", "wxa16", "--bits", str(args.bits), "--group-size", args.group_size, "--dtype", args.dtype,
                  "--shapes", args.shapes, "--m", args.m]
    cache = tempfile.mkdtemp(prefix="lowbit-warmup-triton-")
    try:
        results = {"cold (no cache)": _spawn(child_args, cache, args.timeout),
                   "warm (on-disk)": _spawn(child_args, cache, args.timeout)}
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"lowbit bench warmup: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    from .report import collect_meta

    argv_list = ["warmup", *(list(argv) if argv is not None else sys.argv[1:])]
    doc = {"meta": collect_meta(argv_list), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"warmup_w{args.bits}a16_{args.dtype}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(format_report(results))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
