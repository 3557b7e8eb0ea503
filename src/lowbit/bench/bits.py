"""``lowbit bench bits``: one weight-only matmul benchmark per bit-width, merged into a bits sweep.

Runs ``lowbit bench --op wxa16 --bits n`` for every n (cuBLAS bf16 timed in the first run only: the
same shapes and M in the same process), then writes ``<tag>.json`` / ``.csv`` / ``.txt`` with one row per
(shape, M, bits) and ``<tag>.png``: kernel µs and % of the size-matched speed of light against n, one
panel per M. The per-bits runs keep their own files (``<tag>_w<n>.*``).

    lowbit bench bits --bits 1,2,3,4,5,6,7,8 --shapes llama3-8b --m 1,16,1024 --quick
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .roofline import geomean

FIELDS = ["model", "layer", "n", "k", "m", "bits", "kernel_us", "pct_sol", "gbps", "speedup_cublas",
          "ideal_bytes", "weight_bytes_per_param", "status"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit bench bits", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", default="1,2,3,4,5,6,7,8", help="comma list of bit-widths (1..8)")
    p.add_argument("--shapes", default="llama3-8b")
    p.add_argument("--m", default="1,16,1024")
    p.add_argument("--group-size", default="128")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    p.add_argument("--out", default="out/bench")
    p.add_argument("--tag", default=None, help="file stem (default bits_sweep_g<group>_<dtype>)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--replays", type=int, default=None)
    p.add_argument("--time-budget", type=float, default=None, help="seconds per bit-width run")
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, *, timer=None) -> int:
    from .app import main as bench_main

    a = build_parser().parse_args(list(argv or []))
    try:
        bits = [int(b) for b in a.bits.split(",")]
    except ValueError:
        print(f"lowbit bench bits: --bits must be a comma list of integers, got {a.bits!r}")
        return 2
    if not bits or any(not 1 <= b <= 8 for b in bits):
        print(f"lowbit bench bits: every bit-width must be in 1..8, got {a.bits!r}")
        return 2
    group = None if a.group_size == "none" else int(a.group_size)
    tag = a.tag or f"bits_sweep_{'pc' if a.group_size == 'none' else 'g' + a.group_size}_{a.dtype}"
    out = Path(a.out)
    worst = 0
    for i, b in enumerate(bits):
        args = ["--op", "wxa16", "--bits", str(b), "--shapes", a.shapes, "--m", a.m, "--group-size", a.group_size,
                "--dtype", a.dtype, "--out", str(out), "--tag", f"{tag}_w{b}", "--no-plots",
                "--baselines", "cublas" if i == 0 else "none"]
        args += ["--quick"] if a.quick else []
        args += ["--replays", str(a.replays)] if a.replays else []
        args += ["--time-budget", str(a.time_budget)] if a.time_budget else []
        print(f"== lowbit bench bits: W{b}", flush=True)
        worst = max(worst, bench_main(args, timer=timer))
    rows = merge(out, tag, bits, group)
    text = render(rows, bits)
    print(text)
    write(out, tag, rows, text, bits, argv)
    if not a.no_plots and rows:
        try:
            print(f"wrote {plot(rows, bits, out / f'{tag}.png', a.dtype)}")
        except Exception as e:  # noqa: BLE001 - the numbers are already on disk
            print(f"lowbit bench bits: plot skipped ({type(e).__name__}: {e})")
    return worst


def weight_bytes_per_param(bits: int, n: int, k: int, group_size: Optional[int]) -> float:
    """Bytes of the packed intx tensors (qweight int32 (Kp*bits/32, N), bf16 scales and uint8 zeros
    (G, N), ``lowbit.formats.intx``) per weight of the N x K matrix: padding and group parameters included."""
    from ..formats.intx import padded_k

    kp = padded_k(k, group_size)
    groups = kp // (group_size or kp)
    return (4 * (kp * bits // 32) * n + 3 * groups * n) / (n * k)


def merge(out: Path, tag: str, bits: List[int], group_size: Optional[int] = 128) -> List[Dict[str, object]]:
    """Rows of ours from every per-bits JSON, with cuBLAS of the first run as the speedup reference."""
    cublas: Dict[tuple, float] = {}
    rows = []
    for b in bits:
        path = out / f"{tag}_w{b}.json"
        if not path.exists():
            continue
        doc = json.loads(path.read_text(encoding="utf-8"))
        for p in doc["points"]:
            key = (p["model"], p["layer"], p["n"], p["k"], p["m"])
            if p["method"] == "cublas" and p["status"] == "ok":
                cublas.setdefault(key, p["kernel_us"])
            elif p["role"] == "ours":
                rows.append({**{f: p.get(f) for f in FIELDS if f in p}, "bits": b,
                             "weight_bytes_per_param": weight_bytes_per_param(b, p["n"], p["k"], group_size)})
    for r in rows:
        ref = cublas.get((r["model"], r["layer"], r["n"], r["k"], r["m"]))
        r["speedup_cublas"] = ref / r["kernel_us"] if ref and r.get("kernel_us") else None
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render(rows: List[Dict[str, object]], bits: List[int]) -> str:
    """Per (shape, M): µs and % SOL per bit-width; then geomeans over shapes per M, W4/W2 time ratio."""
    by = {(r["model"], r["layer"], r["n"], r["k"], r["m"], r["bits"]): r for r in rows}
    keys = sorted({k[:5] for k in by}, key=lambda k: (k[4], k[0], k[1]))
    head = f"{'shape':>18} {'NxK':>11} {'M':>5} " + " ".join(f"{'W' + str(b) + ' us':>8} {'%SOL':>5}" for b in bits)
    lines = ["== kernel µs and % of the size-matched SOL per bit-width ==", head, "-" * len(head)]
    for k in keys:
        cells = []
        for b in bits:
            r = by.get(k + (b,))
            cells.append(f"{_fmt(r and r.get('kernel_us'), '8.1f')} {_fmt(r and r.get('pct_sol'), '5.0f')}")
        lines.append(f"{k[0] + '/' + k[1]:>18} {str(k[2]) + 'x' + str(k[3]):>11} {k[4]:>5} " + " ".join(cells))
    lines += ["", "== geomean over shapes per M: % SOL, x cuBLAS bf16; time W4 / time Wn ==",
              f"{'M':>5} " + " ".join(f"{'W' + str(b):>17}" for b in bits)]
    for m in sorted({k[4] for k in keys}):
        cells = []
        for b in bits:
            rs = [r for r in rows if r["m"] == m and r["bits"] == b and r.get("kernel_us")]
            w4 = {(r["model"], r["layer"]): r["kernel_us"] for r in rows if r["m"] == m and r["bits"] == 4 and r.get("kernel_us")}
            ratio = geomean(w4[(r["model"], r["layer"])] / r["kernel_us"] for r in rs if (r["model"], r["layer"]) in w4)
            cells.append(f"{_fmt(geomean(r.get('pct_sol') for r in rs), '4.0f')}% "
                         f"{_fmt(geomean(r.get('speedup_cublas') for r in rs), '4.2f')}x {_fmt(ratio, '4.2f')}")
        lines.append(f"{m:>5} " + " ".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


def write(out: Path, tag: str, rows: List[Dict[str, object]], text: str, bits: List[int], argv) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps({"command": "lowbit bench bits " + " ".join(argv or []),
                                                 "bits": bits, "rows": rows}, indent=1), encoding="utf-8")
    with open(out / f"{tag}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in FIELDS})
    (out / f"{tag}.txt").write_text("lowbit bench bits " + " ".join(argv or []) + "\n\n" + text + "\n", encoding="utf-8")


def plot(rows: List[Dict[str, object]], bits: List[int], path: Path, dtype: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ms = sorted({r["m"] for r in rows})
    shapes = sorted({(r["model"], r["layer"]) for r in rows})
    fig, axes = plt.subplots(2, len(ms), figsize=(4.2 * len(ms), 6.4), squeeze=False)
    fig.suptitle(f"lowbit Wn A16 ({dtype}): kernel time and % of speed of light vs bits")
    for j, m in enumerate(ms):
        for i, (model, layer) in enumerate(shapes):
            pts = sorted((r["bits"], r["kernel_us"], r.get("pct_sol")) for r in rows
                         if r["m"] == m and (r["model"], r["layer"]) == (model, layer) and r.get("kernel_us"))
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0][j].plot(xs, [p[1] for p in pts], "o-", color=f"C{i}", label=f"{model}/{layer}")
            axes[1][j].plot(xs, [p[2] for p in pts], "o-", color=f"C{i}")
        axes[0][j].set_title(f"M = {m}")
        axes[0][j].set_yscale("log")
        axes[0][j].set_ylabel("kernel µs (cold)")
        axes[1][j].set_ylabel("% of SOL")
        axes[1][j].set_ylim(0, 100)
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xticks(bits)
            ax.set_xlabel("weight bits")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
