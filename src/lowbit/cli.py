"""``lowbit`` command line: ``run`` (the main job), ``bench`` (benchmark suite), ``tune`` (configs),
``report`` (per-layer roofline of a model)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _run(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(device=args.device, hidden=args.hidden, layers=args.layers)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        from .bench import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "tune":
        from .tuning.tune import main as tune_main

        return tune_main(argv[1:])
    if argv and argv[0] == "report":
        from .bench.report_roofline import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="lowbit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="quantize a Llama-style model in every format; report size, error (and speed on a GPU)")
    run.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    run.add_argument("--hidden", type=int, default=1024, help="hidden size of the Llama-style model")
    run.add_argument("--layers", type=int, default=2)
    run.set_defaults(func=_run)
    sub.add_parser("bench", help="benchmark suite (see `lowbit bench --help`)")
    sub.add_parser("tune", help="offline kernel-config search, writes a table (see `lowbit tune --help`)")
    sub.add_parser("report", help="per-linear-layer roofline of a model config (see `lowbit report --help`)")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
