"""Plot a ``pipeline_probe.py --family k-unroll`` result: per shape and M, the best time with K_UNROLL = 1
over the best time with 2 and with 4 tiles per iteration (> 1: unrolling is faster), and a text table.

    python scripts/plot_k_unroll.py benchmarks/results/h200/k_unroll/k-unroll_probe.json  -> <same stem>.png / .txt
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def best_by_unroll(row):
    best = {}
    for us, kernel, cfg in row["all"]:
        u = cfg.get("k_unroll", 1)
        if kernel == "gemm" and us == us:  # NaN-free timings only
            best[u] = min(best.get(u, float("inf")), us)
    return best


def main():
    path = Path(sys.argv[1])
    rows = json.loads(path.read_text())["rows"]
    ms = sorted({r["m"] for r in rows})
    shapes = list(dict.fromkeys(f"{r['n']}x{r['k']}" for r in rows))
    lines = [f"{'shape':>12} {'M':>3} {'U=1 us':>8} {'U=2 us':>8} {'U=4 us':>8} {'x(U=2)':>7} {'x(U=4)':>7}"]
    fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms), 4.2), sharey=True)
    for ax, m in zip(axes if len(ms) > 1 else [axes], ms):
        ratios = {2: [], 4: []}
        for shape in shapes:
            r = next(r for r in rows if r["m"] == m and f"{r['n']}x{r['k']}" == shape)
            b = best_by_unroll(r)
            for u in (2, 4):
                ratios[u].append(b[1] / b[u] if u in b else float("nan"))
            lines.append(f"{shape:>12} {m:>3} {b.get(1, float('nan')):8.1f} {b.get(2, float('nan')):8.1f} "
                         f"{b.get(4, float('nan')):8.1f} {ratios[2][-1]:7.3f} {ratios[4][-1]:7.3f}")
        xs = range(len(shapes))
        ax.bar([x - 0.2 for x in xs], ratios[2], 0.4, label="2 tiles / iteration")
        ax.bar([x + 0.2 for x in xs], ratios[4], 0.4, label="4 tiles / iteration")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(list(xs), shapes, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"M = {m}")
        ax.set_ylim(0.5, 1.15)
    axes[0].set_ylabel("best time with 1 tile / best time unrolled")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("W4A16 packed GEMM, K_UNROLL (H200, cold CUDA-graph kernel time, best config per unroll)")
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
