"""``lowbit bench moe``: grouped low-bit expert GEMM vs per-expert cuBLAS, torch._grouped_mm and a
loop of our dense W4A16 calls, on MoE expert shapes, total tokens 1..4096, seeded random top-k routing.

The timed problem, the same for every method: T tokens routed to top-k of E experts give P = T*k
rows sorted by expert (offsets on the device); Y_sorted (P, N) = X_sorted (P, K) @ W_e^T per expert.
The loops (cuBLAS, ours dense) slice by host-known counts (an advantage: no device-side routing);
``lowbit`` reads the offsets on the device (CUDA-graph safe); ``lowbit_topk`` is the whole unsorted
path (align, gather, GEMM with routing weights, scatter, sum of the k outputs) from X (T, K) to Y (T, N).

Kernel time: ``bench.timing.CudaTimer`` (R calls on R weight copies in one CUDA graph, cold L2).
Ideal bytes count only the experts that received tokens. Files: JSON / CSV / table (``report``),
speedup-vs-cuBLAS PNG (``plots``); the goals of the MoE issue are checked and printed.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .cases import DTYPES, clone_tensors, default_tol, tensor_nbytes
from .micro import exact_fp32, rel_error
from .results import ERROR, FAIL, OK, SKIP, Row, derive
from .timing import Cost, FakeTimer, default_timer, fake_requested


@dataclass(frozen=True)
class MoeShape:
    model: str
    layer: str
    experts: int
    topk: int
    n: int
    k: int


MOE_SHAPES: Dict[str, Tuple[MoeShape, ...]] = {
    "mixtral-8x7b": (MoeShape("mixtral-8x7b", "w1", 8, 2, 14336, 4096), MoeShape("mixtral-8x7b", "w2", 8, 2, 4096, 14336)),
    "qwen1.5-moe": (MoeShape("qwen1.5-moe", "up", 60, 4, 1408, 2048), MoeShape("qwen1.5-moe", "down", 60, 4, 2048, 1408)),
    "tiny": (MoeShape("tiny", "up", 4, 2, 96, 160), MoeShape("tiny", "down", 4, 2, 160, 96)),  # CPU/harness tests
}
DEFAULT_TOKENS = (1, 8, 64, 512, 4096)
METHODS = ("lowbit", "cublas", "grouped_mm", "lowbit_loop", "lowbit_topk")
LABELS = {"lowbit": "lowbit grouped (sorted rows, device offsets)",
          "lowbit_topk": "lowbit grouped, unsorted top-k map (align + gather + scatter + sum)",
          "cublas": "bf16 cuBLAS, loop over experts", "grouped_mm": "bf16 torch._grouped_mm",
          "lowbit_loop": "lowbit dense W4A16 (ops.linear_wxa16), loop over experts"}
GOALS = (("cublas", 64, 2.5), ("grouped_mm", 64, 2.5), ("lowbit_loop", 64, 1.5), ("cublas", 4096, 1.0),
         ("grouped_mm", 4096, 1.0))


@dataclass
class Point:
    """Inputs of one (shape, T): routing, sorted activations, host counts, fp32 references."""

    x: torch.Tensor  # (T, K)
    ids: torch.Tensor  # (T, k)
    weights: torch.Tensor  # (T, k) routing weights
    sorted_ids: torch.Tensor
    offsets: torch.Tensor  # (E+1,) int32, device
    xs: torch.Tensor  # (P, K) sorted by expert
    counts: List[int]  # host copy, only for the loops and the references


def make_point(shape: MoeShape, tokens: int, dtype: torch.dtype, device: torch.device, seed: int) -> Point:
    from ..ops import moe_align

    g = torch.Generator(device=device).manual_seed(seed + 1009 * tokens + shape.n)
    x = torch.randn(tokens, shape.k, generator=g, device=device).to(dtype)
    ids = torch.rand(tokens, shape.experts, generator=g, device=device).topk(shape.topk, dim=1).indices
    weights = torch.softmax(torch.randn(tokens, shape.topk, generator=g, device=device), -1).to(dtype)
    sorted_ids, offsets = moe_align(ids, shape.experts)
    xs = x.index_select(0, (sorted_ids // shape.topk).long())
    offs = offsets.tolist()
    return Point(x, ids, weights, sorted_ids, offsets, xs, [b - a for a, b in zip(offs[:-1], offs[1:])])


def _loop(counts: List[int], fn: Callable[[int, int, int], torch.Tensor]) -> List[torch.Tensor]:
    out, a = [], 0
    for e, c in enumerate(counts):
        if c:
            out.append(fn(e, a, a + c))
        a += c
    return out


def bind_method(name: str, qw, w_dense: torch.Tensor, pt: Point, shape: MoeShape):
    """(weights to copy for cold timing, run(weights) -> Y, bytes per stored weight element)."""
    from .. import ops
    from ..formats.intx import runs_mma_words, runtime_words

    if name.startswith("lowbit"):  # the word order QuantMoE / QuantLinear run (lowbit.nn)
        qweight, ko = runtime_words(qw.qweight, runs_mma_words(qw), qw.bits)
        qw = type(qw)(qweight, qw.scales, qw.zeros, qw.bits, qw.group_size, qw.in_features)
    if name == "lowbit":
        return qw, lambda w: ops.grouped_gemm(pt.xs, w, pt.offsets, k_order=ko), qw.bits / 8
    if name == "lowbit_topk":
        return qw, lambda w: ops.grouped_gemm(pt.x, w, topk_ids=pt.ids, topk_weights=pt.weights, k_order=ko), \
            qw.bits / 8
    if name == "lowbit_loop":
        meta = (qw.bits, qw.group_size or 0, qw.in_features)

        def run_loop(w):
            return _loop(pt.counts, lambda e, a, b: ops.linear_wxa16_eager(
                pt.xs[a:b], w.qweight[e], w.scales[e], None if w.zeros is None else w.zeros[e], None, *meta, ko))
        return qw, run_loop, qw.bits / 8
    esize = w_dense.element_size()
    if name == "cublas":
        return w_dense, lambda w: _loop(pt.counts, lambda e, a, b: F.linear(pt.xs[a:b], w[e])), esize
    if name == "grouped_mm":
        offs = pt.offsets[1:]
        return w_dense, lambda w: torch._grouped_mm(pt.xs, w.transpose(1, 2), offs=offs), esize
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")


def available(name: str, device: torch.device, dtype: torch.dtype) -> Tuple[bool, str]:
    if name == "grouped_mm":
        if not hasattr(torch, "_grouped_mm"):
            return False, "this torch has no torch._grouped_mm"
        if device.type != "cuda" or dtype != torch.bfloat16:
            return False, "torch._grouped_mm needs CUDA and bf16"
    return True, ""


def _as_tensor(y) -> torch.Tensor:
    return torch.cat(y) if isinstance(y, list) else y


def _weight_copies(weights, timer) -> list:
    from ..formats.intx_experts import IntxExpertWeights

    nbytes = weights.ideal_nbytes() if isinstance(weights, IntxExpertWeights) else tensor_nbytes(weights)
    r = timer.copies_needed(nbytes)
    if isinstance(weights, IntxExpertWeights):
        return [weights] + [IntxExpertWeights(*clone_tensors([weights.qweight, weights.scales, weights.zeros]),
                                              weights.bits, weights.group_size, weights.in_features)
                            for _ in range(r - 1)]
    return [weights] + [clone_tensors(weights) for _ in range(r - 1)]


def run_shape(shape: MoeShape, tokens: Sequence[int], methods: Sequence[str], qcfg, dtype, device, timer, seed,
              deadline: Optional[float], progress=print) -> List[Row]:
    from ..formats.intx_experts import quantize_experts

    g = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(shape.experts, shape.n, shape.k, generator=g, device=device) * 0.02
    qw = quantize_experts(qcfg.format(), w)
    del w
    w_ref = qw.dequantize(torch.float32)
    w_dense = w_ref.to(dtype)
    copies: Dict[str, list] = {}
    rows: List[Row] = []
    for t in tokens:
        pt = make_point(shape, t, dtype, device, seed)
        active = sum(1 for c in pt.counts if c)
        p = t * shape.topk
        with exact_fp32():
            ref_sorted = torch.cat(_loop(pt.counts, lambda e, a, b: pt.xs[a:b].float() @ w_ref[e].t()))
            ref_tok = torch.zeros(p, shape.n, device=device).index_copy_(0, pt.sorted_ids.long(), ref_sorted)
            ref_tok = (ref_tok.view(t, shape.topk, shape.n) * pt.weights.float()[..., None]).sum(1)
        for name in methods:
            hit = f"{active}/{shape.experts}"
            row = Row(shape.model, shape.layer, shape.n, shape.k, t, name, "ours" if name == "lowbit" else "baseline",
                      math="bf16" if dtype == torch.bfloat16 else "fp16", flops=2 * p * shape.n * shape.k)
            row.note = hit
            rows.append(row)
            progress(f"{shape.model}/{shape.layer} T={t} {name}")
            if deadline is not None and time.perf_counter() > deadline:
                row.status, row.note = SKIP, "time budget exhausted"
                continue
            ok, why = available(name, device, dtype)
            if not ok:
                row.status, row.note = SKIP, why
                continue
            try:
                weights, run, per_elem = bind_method(name, qw, w_dense, pt, shape)
                ref = ref_tok if name == "lowbit_topk" else ref_sorted
                x_rows, y_rows = (t, t) if name == "lowbit_topk" else (p, p)
                scale_bytes = 0 if weights is w_dense else qw.ideal_nbytes() - qw.qweight.numel() * 4
                row.ideal_bytes = int(active * (shape.n * shape.k * per_elem + scale_bytes / shape.experts)
                                      + (x_rows * shape.k + y_rows * shape.n) * dtype.itemsize)
                with torch.no_grad():
                    y = _as_tensor(run(weights))
                    row.tol = default_tol(dtype)
                    row.rel_err = rel_error(y, ref)
                    if not row.rel_err <= row.tol:
                        row.status, row.note = FAIL, f"rel err {row.rel_err:.3g} > tol {row.tol:.3g}"
                        continue
                    if name not in copies:
                        copies[name] = _weight_copies(weights, timer)
                    row.copies = len(copies[name])
                    calls = [lambda w=wc: run(w) for wc in copies[name]]
                    row.kernel_us = timer.kernel_us(calls, Cost(name, row.ideal_bytes, row.flops))
            except Exception as e:  # noqa: BLE001 - one failing method must not stop the sweep
                row.status, row.note = ERROR, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        del pt, ref_sorted, ref_tok
    return rows


def goal_table(rows: List[Row]) -> List[Dict[str, object]]:
    """lowbit's speedup over each baseline per (shape, T), and whether the issue's goal holds there."""
    index = {(r.model, r.layer, r.m, r.method): r for r in rows}
    out = []
    for (model, layer, t, method), r in index.items():
        if method != "lowbit" or r.status != OK:
            continue
        for base, t_max, goal in GOALS:
            if (t_max == 64 and t > 64) or (t_max == 4096 and t != 4096):
                continue
            b = index.get((model, layer, t, base))
            if b is None or b.status != OK or not b.kernel_us:
                continue
            sp = b.kernel_us / r.kernel_us
            out.append({"shape": f"{model}/{layer}", "tokens": t, "vs": base, "speedup": round(sp, 3), "goal": goal,
                        "met": sp >= goal})
    return out


def speedup_table(rows: List[Row], methods: Sequence[str]) -> Dict[str, object]:
    """Per (shape, T): experts hit and lowbit's kernel-time speedup over every other method."""
    index = {(r.model, r.layer, r.m, r.method): r for r in rows}
    others = [m for m in methods if m != "lowbit"]
    body = []
    for (model, layer, t, method), r in index.items():
        if method != "lowbit":
            continue
        cells = []
        for m in others:
            b = index.get((model, layer, t, m))
            ok = r.status == OK and b is not None and b.status == OK and r.kernel_us and b.kernel_us
            cells.append(f"{b.kernel_us / r.kernel_us:.2f}" if ok else "-")
        body.append([f"{model}/{layer}", str(t), r.note] + cells)
    return {"title": "lowbit (grouped, sorted rows) speedup over each method (kernel time)",
            "headers": ["shape", "T", "experts hit"] + [f"x {m}" for m in others], "rows": body}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lowbit bench moe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="mixtral-8x7b,qwen1.5-moe", help=f"comma list of {', '.join(MOE_SHAPES)}")
    p.add_argument("--tokens", default=",".join(map(str, DEFAULT_TOKENS)), help="comma list of total tokens T")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--replays", type=int, default=10)
    p.add_argument("--min-copy-mb", type=float, default=256.0)
    p.add_argument("--time-budget", type=float, default=None, help="seconds; later points are recorded SKIP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="out/bench")
    p.add_argument("--tag", default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None, *, timer=None) -> int:
    from ..api import IntxWeightOnlyConfig
    from . import report

    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    try:
        shapes = [s for name in a.shapes.split(",") if name.strip() for s in MOE_SHAPES[name.strip()]]
        tokens = [int(v) for v in a.tokens.split(",") if v.strip()]
        methods = [m.strip() for m in a.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad or not shapes or not tokens or min(tokens) < 1:
            raise ValueError(f"unknown methods {bad}" if bad else "need shapes and positive token counts")
    except (KeyError, ValueError) as e:
        print(f"lowbit bench moe: bad arguments: {e} (shapes: {', '.join(MOE_SHAPES)})", file=sys.stderr)
        return 2
    dtype = DTYPES[a.dtype]
    fake = timer is not None or fake_requested()
    if not fake and not torch.cuda.is_available():
        print("lowbit bench moe: timing needs a CUDA device; LOWBIT_BENCH_FAKE_TIMER=1 runs the harness with a "
              "fake timer", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if timer is None:
        timer = FakeTimer() if fake else default_timer(True, a.replays, a.min_copy_mb)
    qcfg = IntxWeightOnlyConfig(bits=a.bits, group_size=a.group_size, scale_dtype=str(dtype).replace("torch.", ""))
    t0 = time.perf_counter()
    deadline = None if a.time_budget is None else t0 + a.time_budget
    rows: List[Row] = []
    meta = report.collect_meta(["moe"] + argv)
    meta.update(op="moe", bits=a.bits, group_size=a.group_size, dtype=a.dtype, tokens=tokens, methods=LABELS,
                shapes=[f"{s.model}/{s.layer} E={s.experts} top{s.topk} {s.n}x{s.k}" for s in shapes], fake_timer=fake)
    stem = a.tag or f"moe_w{a.bits}a16_g{a.group_size}_{a.dtype}"
    out = Path(a.out)
    for i, shape in enumerate(shapes):
        rows += run_shape(shape, tokens, methods, qcfg, dtype, device, timer, a.seed, deadline,
                          progress=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        derive(rows, None)
        meta.update(goals=goal_table(rows), elapsed_s=time.perf_counter() - t0)
        paths = list(report.write_all(out, stem, meta, None, rows, complete=i == len(shapes) - 1).values())
    goals = meta["goals"]
    title = f"MoE grouped w{a.bits}a16 g{a.group_size} {a.dtype}" + (" [FAKE TIMER]" if fake else "")
    report.print_tables([report.tables(rows)[1], speedup_table(rows, methods)], title)
    gl = [[g["shape"], str(g["tokens"]), g["vs"], f"{g['speedup']:.2f}", f">= {g['goal']}", "yes" if g["met"] else "NO"]
          for g in goals]
    report.print_tables([{"title": "goals (lowbit kernel time vs baseline)",
                          "headers": ["shape", "T", "vs", "speedup", "goal", "met"], "rows": gl}])
    if not a.no_plots:
        try:
            from .plots import _per_shape

            png = _per_shape(rows, "speedup_cublas", f"{title}: speedup vs bf16 cuBLAS expert loop", "x cuBLAS loop",
                             out / f"{stem}_speedup.png", 1.0, True, skip=("cublas",))
            paths += [png] if png else []
        except Exception as e:  # noqa: BLE001 - the numbers are already on disk
            print(f"lowbit bench moe: plot skipped ({type(e).__name__}: {e})", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 1 if any(r.status in (FAIL, ERROR) and r.method.startswith("lowbit") for r in rows) else 0
