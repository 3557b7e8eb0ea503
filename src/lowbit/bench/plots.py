"""PNG plots (matplotlib, Agg): speedup vs M, % of SOL vs M (one subplot per shape), roofline."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional

from .results import OK, Row, methods_in
from .roofline import Ceilings

DPI = 120


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colors(rows: List[Row]) -> Dict[str, str]:
    """One color per method, the same in every plot."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods_in(rows))}


def _shapes(rows: List[Row]) -> List[tuple]:
    seen: List[tuple] = []
    for r in rows:
        s = (r.model, r.layer, r.n, r.k)
        if s not in seen:
            seen.append(s)
    return seen


def _grid(plt, n: int, title: str):
    cols = min(4, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    fig.suptitle(title)
    flat = [a for row in axes for a in row]
    for a in flat[n:]:
        a.set_visible(False)
    return fig, flat


def _per_shape(rows: List[Row], metric: str, title: str, ylabel: str, path: Path, ref_line: float,
               log_y: bool, skip: tuple = ()) -> Optional[Path]:
    shapes = _shapes(rows)
    methods = [m for m in methods_in(rows) if m not in skip]
    if not shapes:
        return None
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    fig, axes = _grid(plt, len(shapes), title)
    handles: Dict[str, object] = {}
    colors = _colors(rows)
    vals = [getattr(r, metric) for r in rows if r.status == OK and getattr(r, metric)]
    for ax, (model, layer, n, k) in zip(axes, shapes):
        for meth in methods:
            pts = sorted((r.m, getattr(r, metric)) for r in rows
                         if (r.model, r.layer, r.n, r.k) == (model, layer, n, k) and r.method == meth
                         and r.status == OK and getattr(r, metric) is not None)
            if pts:
                (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=meth,
                               color=colors[meth])
                handles.setdefault(meth, h)
        ax.axhline(ref_line, color="gray", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        if log_y:
            ax.set_yscale("log", base=2)
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.tick_params(axis="y", which="minor", labelsize=6)
            if vals:  # at least 0.5x..2x so the reference line is never at the frame's edge
                ax.set_ylim(min(0.5, min(vals) / 1.2), max(2.0, max(vals) * 1.2))
        ax.xaxis.set_major_formatter(plain)
        ax.set_title(f"{model}/{layer}  {n}x{k}", fontsize=9)
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                   ncol=min(6, len(handles)), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_roofline(rows: List[Row], ceilings: Ceilings, title: str, path: Path) -> Optional[Path]:
    ok = [r for r in rows if r.status == OK and r.tflops and r.ideal_bytes]
    if not ok:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ais = [r.flops / r.ideal_bytes for r in ok]
    lo, hi = min(ais) / 2, max(ais) * 2
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    bw = ceilings.peak_bandwidth
    used = [(k, p) for k, p in sorted(ceilings.peaks.items()) if any(r.math == k for r in ok)]
    for (kind, peak), ls in zip(used, ["-", "--", "-.", ":"]):
        ax.plot(xs, [min(peak, bw * x) / 1e12 for x in xs], lw=1.5, color="black", ls=ls,
                label=f"roof {kind}: {peak / 1e12:.0f} TFLOP/s, {bw / 1e12:.2f} TB/s")
    small = min(ceilings.stream_bytes)
    bw_small = small / (ceilings.stream_time_us(small) * 1e-6)
    ax.plot(xs, [bw_small * x / 1e12 for x in xs], lw=1, ls=":", color="gray",
            label=f"streaming {small / 2**20:.1f} MB cold: {bw_small / 1e12:.2f} TB/s")
    colors = _colors(rows)
    for i, meth in enumerate(methods_in(ok)):
        pts = [(r.flops / r.ideal_bytes, r.tflops) for r in ok if r.method == meth]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, label=meth, alpha=0.75,
                   marker="os^vDP*X"[i % 8], color=colors[meth])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / ideal byte)")
    ax.set_ylabel("TFLOP/s (kernel time)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(rows: List[Row], ceilings: Optional[Ceilings], title: str, out: Path, stem: str) -> List[Path]:
    """All plots for a run; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    made = [
        _per_shape(rows, "speedup_cublas", f"{title}: speedup vs cuBLAS (kernel time)", "x cuBLAS",
                   out / f"{stem}_speedup.png", 1.0, True, skip=("cublas",)),
        _per_shape(rows, "pct_sol", f"{title}: % of size-matched speed of light", "% SOL",
                   out / f"{stem}_sol.png", 100.0, False),
    ]
    if ceilings is not None:
        made.append(plot_roofline(rows, ceilings, f"{title}: roofline (measured ceilings)", out / f"{stem}_roofline.png"))
    return [p for p in made if p is not None]
