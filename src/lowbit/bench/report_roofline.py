"""``lowbit report MODEL_CONFIG``: speed of light of every linear layer of a model, per weight format and M.

For each linear (qkv, o, gate_up, down of one decoder layer, and the lm_head) and each M (tokens in
flight: batch size at decode, batch x prompt at prefill): ideal bytes (packed weight + scales/zeros
+ x (M, K) + y (M, N) in bf16), FLOPs 2MNK, and ``roofline.sol``: max(streaming time of those
bytes, FLOPs / dense bf16 peak) — memory- or compute-bound. The whole model's decode step is the
sum over layers (count x per-layer SOL, attention and KV cache not included): ideal tokens/s.

Ceilings, by priority: ``--ceilings FILE`` (a ``lowbit bench`` JSON, or its ``ceilings`` object),
``--gpu measure`` (measured now, CUDA), else a fixed documented preset (``--gpu``, default h200):

* ``h200``: measured by ``lowbit bench`` on an NVIDIA H200 (commit 595cc52,
  ``benchmarks/results/h200/w4a16_g128_bf16.json``): cold streaming 0.5 MB..1 GB, bf16 799 TFLOP/s;
* ``h100``: DESIGN.md's H100 orientation numbers: cold reads of 8/32/64/128 MB in 4.7/13.3/24.8/47.3 µs,
  copy 3.0 TB/s asymptote (1 GB point), bf16 790 TFLOP/s.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .roofline import Ceilings, sol

MB = 1 << 20
PRESETS: Dict[str, Dict[str, object]] = {
    "h200": {"stream_bytes": [MB // 2 << i for i in range(12)],
             "stream_us": [1.61, 1.98, 2.26, 2.82, 3.89, 6.01, 9.91, 18.16, 34.06, 63.64, 122.36, 239.41],
             "peaks": {"bf16": 798.6e12},
             "source": "NVIDIA H200, lowbit bench commit 595cc52 (benchmarks/results/h200/w4a16_g128_bf16.json)"},
    "h100": {"stream_bytes": [8 * MB, 32 * MB, 64 * MB, 128 * MB, 1024 * MB],
             "stream_us": [4.7, 13.3, 24.8, 47.3, 1024 * MB / 3.0e12 * 1e6],
             "peaks": {"bf16": 790e12},
             "source": "H100 orientation numbers of DESIGN.md (cold reads 8-128 MB; 3.0 TB/s copy; 790 TFLOP/s)"},
}
DEFAULT_M = "1,8,32,128,512,2048,8192,16384"
ACT_BYTES = 2  # bf16 activations
LAYERS = ("qkv", "o", "gate_up", "down", "lm_head")
SCAN_M = [1 << i for i in range(17)]  # for "compute-bound from M ="


def weight_bytes(fmt, n: int, k: int) -> int:
    """Ideal bytes of one (N, K) weight in an e2e format (``lowbit.models.quant.E2EFormat``)."""
    from .cases import intx_weight_bytes

    if fmt.kind == "dense":
        return n * k * ACT_BYTES
    if fmt.kind == "tinygemm":
        return intx_weight_bytes(n, k, 4, fmt.group_size, 2, 2)  # bf16 scale + bf16 zero per group
    return intx_weight_bytes(n, k, fmt.bits, fmt.group_size, 2, 0 if fmt.symmetric else 1)


def load_ceilings(path: Optional[str], gpu: str) -> Ceilings:
    if path:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        d = d.get("ceilings") or d
        if not d or "stream_bytes" not in d:
            raise ValueError(f"{path} has no ceilings (stream_bytes, stream_us, peaks)")
        return Ceilings(list(d["stream_bytes"]), list(d["stream_us"]), dict(d["peaks"]), {"source": str(path)})
    if gpu == "measure":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--gpu measure needs a CUDA device")
        from .ceilings import measure_ceilings
        from .timing import default_timer

        return measure_ceilings(default_timer(quick=True), ["bf16"])
    p = PRESETS[gpu]
    return Ceilings(list(p["stream_bytes"]), list(p["stream_us"]), dict(p["peaks"]), {"source": p["source"]})


def layer_points(cfg, formats, ms: List[int], ceilings: Ceilings, quantize_lm_head: bool) -> List[Dict[str, object]]:
    """One dict per (layer, format, M): bytes, flops, SOL split, bound."""
    from ..models.quant import parse_format

    dense = parse_format("bf16")
    shapes = {s.layer: s for s in cfg.linear_shapes()}
    counts = {name: (1 if name == "lm_head" else cfg.num_hidden_layers) for name in LAYERS}
    out = []
    for name in LAYERS:
        s = shapes[name]
        for fmt in formats:
            used = dense if (name == "lm_head" and not quantize_lm_head) else fmt
            wb = weight_bytes(used, s.n, s.k)
            for m in ms:
                nbytes = wb + m * (s.n + s.k) * ACT_BYTES
                flops = 2 * m * s.n * s.k
                b = sol(nbytes, flops, ceilings, "bf16")
                out.append({"layer": name, "n": s.n, "k": s.k, "count": counts[name], "format": fmt.name,
                            "stored_as": used.name, "m": m, "weight_bytes": wb, "bytes": nbytes, "flops": flops,
                            "intensity": flops / nbytes, "memory_us": b.memory_us, "compute_us": b.compute_us,
                            "sol_us": b.sol_us, "bound": b.bound})
    return out


def compute_bound_from(n: int, k: int, wb: int, ceilings: Ceilings) -> Optional[int]:
    """Smallest power-of-two M (<= 65536) at which the layer is compute-bound, else None."""
    for m in SCAN_M:
        if sol(wb + m * (n + k) * ACT_BYTES, 2 * m * n * k, ceilings, "bf16").bound == "compute":
            return m
    return None


def model_steps(points: List[Dict[str, object]], formats, ms: List[int]) -> List[Dict[str, object]]:
    """Per (format, M): the sum over the model's linears of count x SOL -> ms per step, ideal tokens/s."""
    out = []
    for fmt in formats:
        for m in ms:
            pts = [p for p in points if p["format"] == fmt.name and p["m"] == m]
            us = sum(p["count"] * p["sol_us"] for p in pts)
            wbytes = sum(p["count"] * p["weight_bytes"] for p in pts)
            out.append({"format": fmt.name, "m": m, "step_ms": us / 1e3, "tok_s": m / (us * 1e-6),
                        "linear_weight_bytes": wbytes})
    base = {(s["m"]): s["step_ms"] for s in out if s["format"] == formats[0].name}
    for s in out:
        s["x_first"] = base[s["m"]] / s["step_ms"]
    return out


def _num(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def tables(doc: Dict[str, object]) -> List[Dict[str, object]]:
    pts, steps, fmts, ms = doc["points"], doc["model_steps"], doc["formats"], doc["m"]
    first = fmts[0]
    by = {(p["layer"], p["format"], p["m"]): p for p in pts}
    t1 = []
    for d in doc["crossover"]:
        p0 = by[(d["layer"], first, ms[0])]
        cells = []
        for f in fmts:
            m = d["compute_from"].get(f)
            cells.append(f"{by[(d['layer'], f, ms[0])]['weight_bytes'] / MB:.4g} | {'-' if m is None else m}")
        t1.append([d["layer"], f"{d['n']}x{d['k']}", str(p0["count"])] + cells)
    t2 = []
    for name in LAYERS:
        for m in ms:
            p0 = by[(name, first, m)]
            t2.append([name, str(m), _num(p0["flops"] / 1e9)]
                      + [f"{_num(by[(name, f, m)]['sol_us'])} {'C' if by[(name, f, m)]['bound'] == 'compute' else 'm'}"
                         for f in fmts])
    t3 = []
    for f in fmts:
        line = [f]
        for m in ms:
            s = next(s for s in steps if s["format"] == f and s["m"] == m)
            line.append(f"{_num(s['tok_s'])} ({s['x_first']:.2f}x)")
        t3.append(line)
    c = doc["ceilings"]
    return [
        {"title": "weights per layer: MB | compute-bound from M = (smallest power of two; - = memory-bound to 65536)",
         "headers": ["layer", "N x K", "count"] + list(fmts), "rows": t1},
        {"title": f"speed of light per layer, µs (m = memory-bound, C = compute-bound); ceilings: "
                  f"{c['detail'].get('source')}", "headers": ["layer", "M", "GFLOP"] + list(fmts), "rows": t2},
        {"title": f"whole model, linears only (sum of count x SOL): ideal tokens/s (x {first}); ms/step in the JSON",
         "headers": ["format"] + [f"M={m}" for m in ms], "rows": t3},
    ]


def write_png(doc: Dict[str, object], path: Path) -> Path:
    from .plots import DPI, _plt

    plt = _plt()
    pts, fmts = doc["points"], doc["formats"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    fig.suptitle(f"lowbit report: {doc['model']['name']} speed of light per linear layer "
                 f"(filled = memory-bound, x = compute-bound)")
    flat = [a for row in axes for a in row]
    for ax, name in zip(flat, LAYERS):
        for i, f in enumerate(fmts):
            ps = sorted((p for p in pts if p["layer"] == name and p["format"] == f), key=lambda p: p["m"])
            xs, ys = [p["m"] for p in ps], [p["sol_us"] for p in ps]
            ax.plot(xs, ys, color=f"C{i}", lw=1.2, label=f)
            for bound, marker in (("memory", "o"), ("compute", "x")):
                sel = [(p["m"], p["sol_us"]) for p in ps if p["bound"] == bound]
                if sel:
                    ax.scatter([q[0] for q in sel], [q[1] for q in sel], color=f"C{i}", marker=marker, s=18)
        p0 = next(p for p in pts if p["layer"] == name)
        dense = " (not quantized)" if name == "lm_head" and not doc["quantize_lm_head"] else ""
        ax.set_title(f"{name} {p0['n']}x{p0['k']} (x{p0['count']}){dense}", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("M (tokens)")
        ax.set_ylabel("SOL µs")
        ax.grid(True, which="both", alpha=0.3)
    ax = flat[5]
    for i, f in enumerate(fmts):
        ss = sorted((s for s in doc["model_steps"] if s["format"] == f), key=lambda s: s["m"])
        ax.plot([s["m"] for s in ss], [s["tok_s"] for s in ss], marker="o", ms=3, color=f"C{i}", label=f)
    ax.set_title("whole model (linears): ideal tokens/s", fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("M (tokens per step)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit report", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: lowbit report llama3-8b --formats bf16,tinygemm,w4a16,w3a16,w2a16")
    p.add_argument("model", help="preset (llama3-8b, llama3-70b, llama3.2-1b, tiny), a JSON file or JSON object")
    p.add_argument("--formats", default="bf16,tinygemm,w4a16,w3a16,w2a16")
    p.add_argument("--m", default=DEFAULT_M, help=f"comma list of M (default {DEFAULT_M})")
    p.add_argument("--gpu", default="h200", choices=[*PRESETS, "measure"], help="fixed ceilings preset, or measure")
    p.add_argument("--ceilings", default=None, help="JSON with measured ceilings (a lowbit bench result)")
    p.add_argument("--quantize-lm-head", action="store_true")
    p.add_argument("--out", default="out/report")
    p.add_argument("--tag", default=None, help="file name stem (default report_<model>)")
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..models import load_config
    from ..models.quant import parse_formats
    from . import report
    from .shapes import parse_m

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.model)
        formats = parse_formats(args.formats)
        ms = parse_m(args.m)
        ceilings = load_ceilings(args.ceilings, args.gpu)
    except (ValueError, OSError, KeyError) as e:
        print(f"lowbit report: {e}", file=sys.stderr)
        return 2
    points = layer_points(cfg, formats, ms, ceilings, args.quantize_lm_head)
    crossover = []
    for s in cfg.linear_shapes():
        d = {"layer": s.layer, "n": s.n, "k": s.k, "compute_from": {}}
        for f in formats:
            wb = next(p["weight_bytes"] for p in points if p["layer"] == s.layer and p["format"] == f.name)
            d["compute_from"][f.name] = compute_bound_from(s.n, s.k, wb, ceilings)
        crossover.append(d)
    meta = report.collect_meta(argv)
    meta["command"] = "lowbit report " + " ".join(argv)
    doc = {"meta": meta, "model": cfg.to_dict(), "formats": [f.name for f in formats], "m": ms,
           "quantize_lm_head": args.quantize_lm_head, "ceilings": ceilings.to_dict(), "points": points,
           "crossover": crossover, "model_steps": model_steps(points, formats, ms),
           "notes": ["bytes = packed weight + scales/zeros + x + y in bf16; SOL = max(cold streaming time of the "
                     "bytes, FLOPs / bf16 peak); attention, KV cache, norms and embeddings are not counted"]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.tag or f"report_{cfg.name}"
    paths = [out / f"{stem}.json", out / f"{stem}.txt"]
    paths[0].write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    tabs = tables(doc)
    header = f"lowbit report: {cfg.name} ({cfg.num_params() / 1e9:.2f}B params), formats {', '.join(doc['formats'])}"
    paths[1].write_text(f"{meta['command']}\n\n{header}\n" + report.render_plain(tabs)
                        + "".join(f"note: {n}\n" for n in doc["notes"]), encoding="utf-8")
    report.print_tables(tabs, header)
    if not args.no_plots:
        paths.append(write_png(doc, out / f"{stem}.png"))
    print("\n".join(f"note: {n}" for n in doc["notes"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
