"""``lowbit bench e2e``: a Llama-3 style decoder (random weights) per weight format — prefill and
decode tokens/s, peak memory, and accuracy vs the unquantized model on the same tokens.

Per format: build the model from the seed (every format starts from the same weights), quantize,
then the accuracy proxy: teacher-forced logits over ``--acc-batch`` random sequences (prompt by
prefill, ``--acc-decode`` more positions by cached decode steps) against the dense model's: top-1
agreement and KL(dense || format) in nats per position. Per batch size: a ``Generator`` (see
``lowbit.models.generate`` for ``--compile``) is warmed up, then prefill is timed ``--reps`` times
(median) and ``--decode`` greedy steps once as a whole, host clock around ``cuda.synchronize``.
tokens/s = batch * tokens / seconds. A short greedy run through the compiled/graphed path is
compared with plain eager calls (``greedy_agree``, 1.0 = same tokens).

Without CUDA nothing is timed: the model path runs through the reference backend (or the Triton
interpreter) and only the accuracy columns are real. Outputs: ``<stem>.json`` (rewritten after
every point), ``<stem>.txt`` (tables), ``<stem>.png`` (tokens/s per format and batch; accuracy).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .shapes import parse_m

OK, ERROR, SKIP = "ok", "ERROR", "SKIP"
CPU_MAX_BYTES = 4 << 30
GPU_DEFAULTS = {"model": "llama3-8b", "batch": "1,8,32,128", "prompt": 128, "decode": 256, "acc_batch": 4}
CPU_DEFAULTS = {"model": "tiny", "batch": "1,4", "prompt": 32, "decode": 16, "acc_batch": 2}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# what must match for --resume to reuse points of an earlier run
SETUP_KEYS = ("model", "prompt", "decode", "compile", "dtype", "quantize_lm_head", "seed", "acc_batch",
              "acc_decode", "device")

EPILOG = """examples:
  lowbit bench e2e --model llama3-8b --formats bf16,tinygemm,w4a16,w3a16,w2a16 --batch 1,8,32,128
  lowbit bench e2e --model tiny                      # CPU: accuracy only, through the reference backend
  lowbit bench e2e --model my_config.json --compile reduce-overhead --formats bf16,w4a16 --batch 1
"""


@dataclass
class Point:
    format: str
    label: str
    batch: int
    prompt: int
    decode: int
    status: str = OK
    note: str = ""
    setup_s: Optional[float] = None  # Generator: caches + compile + capture + warm-up
    prefill_s: Optional[float] = None
    prefill_tok_s: Optional[float] = None
    decode_s: Optional[float] = None
    decode_tok_s: Optional[float] = None
    step_ms: Optional[float] = None
    decode_x_dense: Optional[float] = None
    decode_x_tinygemm: Optional[float] = None
    prefill_x_dense: Optional[float] = None
    peak_mem_gib: Optional[float] = None
    greedy_agree: Optional[float] = None
    graphs_compiled: Optional[int] = None  # torch.compile graphs made for this point (layers share one)


def build_parser() -> argparse.ArgumentParser:
    from ..models.generate import MODES

    p = argparse.ArgumentParser(prog="lowbit bench e2e", description=__doc__.splitlines()[0],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="preset (llama3-8b, llama3.2-1b, tiny), a JSON file or JSON "
                                                 "object (ours or an HF config.json); default llama3-8b, CPU: tiny")
    p.add_argument("--formats", default="bf16,tinygemm,w4a16,w3a16,w2a16",
                   help="comma list: bf16, tinygemm, w<n>a16[-g<size>|-pc][-sym]")
    p.add_argument("--batch", default=None, help="comma list of batch sizes (default 1,8,32,128; CPU: 1,4)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 128; CPU: 32)")
    p.add_argument("--decode", type=int, default=None, help="decoded tokens (default 256; CPU: 16)")
    p.add_argument("--compile", default="compile-graph", choices=MODES,
                   help="compile-graph: compiled layer + CUDA graph of each step (default); reduce-overhead: "
                        "torch.compile of the whole step (slow to compile); graph: eager + CUDA graph; none")
    p.add_argument("--quantize-lm-head", action="store_true", help="quantize the lm_head too (default: dense)")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="default bf16 (CPU: fp32)")
    p.add_argument("--acc-batch", type=int, default=None, help="sequences for the accuracy proxy (default 4; CPU 2)")
    p.add_argument("--acc-decode", type=int, default=16, help="teacher-forced decode positions per sequence")
    p.add_argument("--reps", type=int, default=3, help="prefill timings per point (median)")
    p.add_argument("--check-tokens", type=int, default=8, help="greedy tokens compared with eager (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; points not started by then are SKIP (the JSON stays consistent)")
    p.add_argument("--resume", action="store_true", help="keep the ok points of an earlier run with the same "
                                                         "setup in --out and run only the rest")
    p.add_argument("--out", default="out/e2e")
    p.add_argument("--tag", default=None, help="file name stem (default e2e_<model>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the table and plot of an earlier run's JSON (next to it), run nothing")
    p.add_argument("--time-without-gpu", action="store_true", help=argparse.SUPPRESS)  # tests: timed code path on CPU
    return p


def _log(msg: str) -> None:
    print(f"lowbit e2e: {msg}", file=sys.stderr, flush=True)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, dev: torch.device) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


def _free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _tokens(batch: int, length: int, vocab: int, seed: int, dev: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)  # CPU generator: the same tokens on every device
    return torch.randint(0, vocab, (batch, length), generator=g).to(dev)


def run_point(model, fmt, batch: int, args, dev: torch.device, timing: bool) -> Point:
    """Warm up, time prefill and decode at one batch size, check greedy tokens against eager."""
    from ..models.generate import Generator, eager_generate, greedy_agreement

    pt = Point(fmt.name, fmt.label(model.embed_tokens.weight.dtype), batch, args.prompt, args.decode)
    prompt = _tokens(batch, args.prompt, model.config.vocab_size, args.seed + batch, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    stats = _dynamo_counters()
    before = (stats["stats"]["unique_graphs"], stats["inductor"]["cudagraph_skips"])
    t0 = time.perf_counter()
    gen = Generator(model, batch, args.prompt, args.decode, args.compile)
    try:
        # warm-up (compiles, captures); reduce-overhead records its CUDA graphs on the 2nd/3rd call.
        # Untimed runs go through the whole prompt + decode once instead.
        for _ in range((3 if args.compile == "reduce-overhead" else 1) if timing else 1):
            gen.load(prompt)
            gen.prefill()
            gen.decode(min(3, args.decode) if timing else args.decode)
        _sync(dev)
        pt.setup_s = time.perf_counter() - t0
        if args.compile != "none":
            pt.graphs_compiled = stats["stats"]["unique_graphs"] - before[0]
        if stats["inductor"]["cudagraph_skips"] > before[1]:  # reduce-overhead fell back to no graphs
            pt.note = "inductor skipped CUDA graphs (see the log)"
        if timing:
            times = []
            for _ in range(max(1, args.reps)):
                gen.load(prompt)
                times.append(_timed(gen.prefill, dev))
            pt.prefill_s = statistics.median(times)
            pt.decode_s = _timed(lambda: gen.decode(args.decode), dev)
            pt.prefill_tok_s = batch * args.prompt / pt.prefill_s
            pt.decode_tok_s = batch * args.decode / pt.decode_s
            pt.step_ms = 1e3 * pt.decode_s / args.decode
        if dev.type == "cuda":
            pt.peak_mem_gib = torch.cuda.max_memory_allocated() / 2**30
        k = min(args.check_tokens, args.decode)
        if k > 0 and args.compile != "none":
            pt.greedy_agree = greedy_agreement(gen.generate(prompt, k), eager_generate(model, prompt, k))
    finally:
        gen.close()
    return pt


def _dynamo_counters():
    from torch._dynamo.utils import counters  # defaultdict(Counter): missing keys read 0

    return counters


def _derive(points: List[Point]) -> None:
    by = {(p.format, p.batch): p for p in points}
    for p in points:
        dense, tg = by.get(("bf16", p.batch)), by.get(("tinygemm", p.batch))
        if p.decode_tok_s and dense is not None and dense.decode_tok_s:
            p.decode_x_dense = p.decode_tok_s / dense.decode_tok_s
            p.prefill_x_dense = p.prefill_tok_s / dense.prefill_tok_s
        if p.decode_tok_s and tg is not None and tg.decode_tok_s:
            p.decode_x_tinygemm = p.decode_tok_s / tg.decode_tok_s


def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _size(nbytes: Optional[int]) -> str:
    if not nbytes:
        return "-"
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def tables(doc: Dict[str, object]) -> List[Dict[str, object]]:
    """Accuracy per format, decode tokens/s grid, and every point in detail ({title, headers, rows})."""
    fmts: Dict[str, dict] = doc["formats"]
    points = [Point(**p) for p in doc["points"]]
    ref = doc.get("reference") or {}
    acc_rows = []
    for name, f in fmts.items():
        a = f.get("accuracy") or {}
        acc_rows.append([f["label"], _size(f.get("weight_bytes")),
                         _f(a.get("top1_agree"), ".3f"), _f(a.get("kl_mean"), ".4f"), _f(a.get("kl_max"), ".3f"),
                         f.get("status", OK) + (f" {f['note']}"[:70] if f.get("note") else "")])
    out = [{"title": f"accuracy vs {ref.get('label', 'dense')} on the same tokens ({ref.get('positions', '?')} "
                     f"positions; reference entropy {_f(ref.get('entropy_nats'), '.2f')} nats, "
                     f"uniform {_f(ref.get('uniform_nats'), '.2f')})",
            "headers": ["format", "weights", "top-1 agree", "KL mean", "KL max", "status"], "rows": acc_rows}]
    batches = sorted({p.batch for p in points})
    grid = []
    for name in fmts:
        line = [fmts[name]["label"]]
        for b in batches:
            p = next((q for q in points if q.format == name and q.batch == b), None)
            if p is None or p.status != OK or p.decode_tok_s is None:
                line.append("-" if p is None or p.status == OK else p.status)
            else:
                line.append(f"{p.decode_tok_s:.0f}" + (f" ({p.decode_x_dense:.2f}x)" if p.decode_x_dense else ""))
        grid.append(line)
    out.append({"title": "decode tokens/s (x dense) by batch size",
                "headers": ["format"] + [f"B={b}" for b in batches], "rows": grid})
    timed = bool(doc["setup"].get("timed"))
    heads = ["format", "B"]
    if timed:
        heads += ["prefill tok/s", "decode tok/s", "ms/step", "x dense", "x tinygemm", "prefill x dense", "peak GiB"]
    heads += ["greedy=eager", "setup s", "status"]
    detail = []
    for p in points:
        line = [p.label, str(p.batch)]
        if timed:
            line += [_f(p.prefill_tok_s, ".0f"), _f(p.decode_tok_s, ".1f"), _f(p.step_ms, ".2f"),
                     _f(p.decode_x_dense, ".2f"), _f(p.decode_x_tinygemm, ".2f"), _f(p.prefill_x_dense, ".2f"),
                     _f(p.peak_mem_gib, ".1f")]
        detail.append(line + [_f(p.greedy_agree, ".2f"), _f(p.setup_s, ".0f"),
                              p.status + (f" {p.note}"[:60] if p.note else "")])
    out.append({"title": f"per point (prompt {doc['setup']['prompt']}, decode {doc['setup']['decode']}, "
                         f"--compile {doc['setup']['compile']}; greedy=eager: matching-prefix fraction of "
                         "greedy tokens vs plain eager calls)",
                "headers": heads, "rows": detail})
    return out


def write_png(doc: Dict[str, object], path: Path) -> Path:
    from .plots import DPI, _plt

    plt = _plt()
    points = [Point(**p) for p in doc["points"]]
    fmts: Dict[str, dict] = doc["formats"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    fig.suptitle(f"lowbit e2e: {doc['setup']['model']['name']}, prompt {doc['setup']['prompt']}, "
                 f"decode {doc['setup']['decode']}, --compile {doc['setup']['compile']} "
                 f"({doc['meta']['gpu'].get('name', 'no GPU')})")
    for ax, metric, title in ((axes[0], "decode_tok_s", "decode tokens/s"),
                              (axes[1], "prefill_tok_s", "prefill tokens/s")):
        drawn = False
        for i, name in enumerate(fmts):
            pts = sorted((p.batch, getattr(p, metric)) for p in points
                         if p.format == name and p.status == OK and getattr(p, metric))
            if pts:
                ax.plot([q[0] for q in pts], [q[1] for q in pts], marker="o", ms=4, color=f"C{i % 10}",
                        label=fmts[name]["label"])
                drawn = True
        ax.set_title(title)
        if drawn:
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not timed: tokens/s needs a CUDA GPU", ha="center", va="center",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = axes[2]
    names = [n for n in fmts if (fmts[n].get("accuracy") or {}).get("top1_agree") is not None]
    vals = [fmts[n]["accuracy"]["top1_agree"] for n in names]
    bars = ax.bar(range(len(names)), vals, color=[f"C{list(fmts).index(n) % 10}" for n in names])
    for b, n in zip(bars, names):
        ax.annotate(f"KL {fmts[n]['accuracy']['kl_mean']:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([fmts[n]["label"] for n in names], rotation=20, ha="right", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"top-1 agreement with {(doc.get('reference') or {}).get('label', 'dense')} (KL in nats)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _write_json(path: Path, doc: Dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _resolve(args: argparse.Namespace, dev: torch.device) -> None:
    d = GPU_DEFAULTS if dev.type == "cuda" else CPU_DEFAULTS
    for key in ("model", "batch", "prompt", "decode", "acc_batch"):
        if getattr(args, key) is None:
            setattr(args, key, d[key])
    if args.dtype == "auto":
        args.dtype = "bf16" if dev.type == "cuda" else "fp32"
    if args.prompt < 1 or args.decode < 1 or args.acc_batch < 1 or args.acc_decode < 0:
        raise ValueError("--prompt, --decode, --acc-batch must be >= 1 and --acc-decode >= 0")


def _previous(path: Path, setup: Dict[str, object]) -> Optional[Dict[str, object]]:
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        _log(f"--resume: ignoring unreadable {path} ({e})")
        return None
    if any(old.get("setup", {}).get(k) != setup[k] for k in SETUP_KEYS):
        _log(f"--resume: {path} was made with another setup; starting over")
        return None
    return old


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``lowbit bench e2e``; exit code 0 done, 1 a point or format was ERROR, 2 bad arguments."""
    from ..models import build_model, load_config
    from ..models.generate import compare_logits, entropy_nats, teacher_forced_logits
    from ..models.quant import apply_format, parse_formats, weight_bytes
    from . import report

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.render:
        path = Path(args.render)
        return render(json.loads(path.read_text(encoding="utf-8")), path, not args.no_plots)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        _resolve(args, dev)
        cfg = load_config(args.model)
        formats = parse_formats(args.formats)
        batches = parse_m(args.batch)
    except ValueError as e:
        print(f"lowbit bench e2e: {e}", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype]
    dense_bytes = cfg.num_params() * torch.empty((), dtype=dtype).element_size()
    if dev.type == "cpu" and dense_bytes > CPU_MAX_BYTES:
        print(f"lowbit bench e2e: {cfg.name} has {cfg.num_params() / 1e9:.1f}B parameters "
              f"({dense_bytes / 2**30:.0f} GiB in {args.dtype}); without a GPU use --model tiny", file=sys.stderr)
        return 2
    timing = dev.type == "cuda" or args.time_without_gpu
    t_start = time.perf_counter()
    setup = {"model": cfg.to_dict(), "model_params": cfg.num_params(), "formats": [f.name for f in formats],
             "batch": batches, "prompt": args.prompt, "decode": args.decode, "compile": args.compile,
             "dtype": args.dtype, "quantize_lm_head": args.quantize_lm_head, "seed": args.seed,
             "acc_batch": args.acc_batch, "acc_decode": args.acc_decode, "reps": args.reps,
             "device": dev.type, "timed": timing}
    meta = report.collect_meta(["e2e", *argv])
    meta["env"] = {k: os.environ.get(k) for k in ("LOWBIT_BACKEND", "TRITON_INTERPRET", "LOWBIT_DECODE_ATTENTION")}
    if dev.type == "cuda" and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        # one attention kernel family for every format and mode: memory-efficient SDPA (boolean mask)
        torch.backends.cuda.enable_cudnn_sdp(False)
        meta["sdpa"] = "cuDNN SDPA disabled (memory-efficient attention with the boolean mask)"
    if dev.type == "cuda":
        meta["decode_attention"] = ("SDPA (LOWBIT_DECODE_ATTENTION=0)" if os.environ.get("LOWBIT_DECODE_ATTENTION") == "0"
                                    else "lowbit::decode_attention (split-KV Triton) for one-token steps, every format")
    out = Path(args.out)
    stem = args.tag or f"e2e_{cfg.name}"
    json_path = out / f"{stem}.json"
    old = _previous(json_path, setup) if args.resume else None
    done = {(p["format"], p["batch"]): p for p in (old or {}).get("points", []) if p["status"] == OK}
    notes: List[str] = []
    if not timing:
        notes.append("no CUDA device: tokens/s not measured (needs a GPU); accuracy columns are real")
    elif dev.type != "cuda":
        notes.append("--time-without-gpu: CPU timings of the reference backend, meaningless as speed")
    doc: Dict[str, object] = {"meta": meta, "setup": setup, "reference": (old or {}).get("reference"),
                              "formats": {}, "points": [], "notes": notes, "complete": False}
    _log(f"{cfg.name} ({cfg.num_params() / 1e6:.1f}M params, {args.dtype}) on {meta['gpu'].get('name', dev.type)}: "
         f"formats {','.join(f.name for f in formats)}, batch {batches}, prompt {args.prompt}, decode {args.decode}, "
         f"--compile {args.compile}" + ("" if timing else " [no GPU: accuracy only]"))

    acc_tokens = _tokens(args.acc_batch, args.prompt + args.acc_decode, cfg.vocab_size, args.seed, dev)
    ref_logits: Optional[torch.Tensor] = None

    def reference() -> torch.Tensor:
        nonlocal ref_logits
        if ref_logits is None:
            dense = build_model(cfg, dev, dtype, args.seed)
            ref_logits = teacher_forced_logits(dense, acc_tokens, args.prompt).cpu()
            doc["reference"] = {"label": args.dtype, "positions": ref_logits.shape[0] * ref_logits.shape[1],
                                "entropy_nats": entropy_nats(ref_logits), "uniform_nats": math.log(cfg.vocab_size)}
            del dense
            _free(dev)
        return ref_logits

    def checkpoint(complete: bool = False) -> None:
        pts = [Point(**p) for p in doc["points"]]
        _derive(pts)
        doc["points"] = [asdict(p) for p in pts]
        meta["elapsed_s"] = time.perf_counter() - t_start
        doc["complete"] = complete
        _write_json(json_path, doc)

    def over_budget() -> bool:
        return args.time_budget is not None and time.perf_counter() - t_start > args.time_budget

    n_total, n_done = len(formats) * len(batches), 0
    for fmt in formats:
        label = fmt.label(dtype)
        entry = {"label": label, "kind": fmt.kind, "bits": fmt.bits, "group_size": fmt.group_size,
                 "symmetric": fmt.symmetric, "status": OK, "note": ""}
        doc["formats"][fmt.name] = entry
        todo = [b for b in batches if (fmt.name, b) not in done]
        for b in batches:
            if (fmt.name, b) in done:
                doc["points"].append(done[(fmt.name, b)])
        ok, why = fmt.available(dev, dtype)
        if not ok:
            entry.update(status=SKIP, note=why)
            notes.append(f"{fmt.name} skipped: {why}")
            _log(notes[-1])
            doc["points"] += [asdict(Point(fmt.name, label, b, args.prompt, args.decode, SKIP, why)) for b in todo]
            n_done += len(batches)
            checkpoint()
            continue
        prev = ((old or {}).get("formats") or {}).get(fmt.name) or {}
        if not todo and prev.get("accuracy"):
            doc["formats"][fmt.name] = prev
            n_done += len(batches)
            continue
        if over_budget():
            why = f"time budget {args.time_budget:.0f} s"
            entry.update(status=SKIP, note=why)
            doc["points"] += [asdict(Point(fmt.name, label, b, args.prompt, args.decode, SKIP, why)) for b in todo]
            n_done += len(batches)
            checkpoint()
            continue
        model = None
        try:
            ref = None if prev.get("accuracy") else reference()  # first: never two models in memory at once
            t = time.perf_counter()
            model = apply_format(build_model(cfg, dev, dtype, args.seed), fmt, args.quantize_lm_head)
            entry["weight_bytes"] = weight_bytes(model)
            entry["quantize_s"] = time.perf_counter() - t
            if ref is None:
                entry["accuracy"] = prev["accuracy"]
            else:
                entry["accuracy"] = compare_logits(ref, teacher_forced_logits(model, acc_tokens, args.prompt))
            a = entry["accuracy"]
            _log(f"{label}: {_size(entry['weight_bytes'])}, top-1 agree {a['top1_agree']:.3f}, "
                 f"KL {a['kl_mean']:.4f} nats ({time.perf_counter() - t:.0f} s)")
        except Exception as e:  # noqa: BLE001 - recorded as ERROR, the other formats still run
            traceback.print_exc()
            entry.update(status=ERROR, note=f"{type(e).__name__}: {e}"[:300])
            doc["points"] += [asdict(Point(fmt.name, label, b, args.prompt, args.decode, ERROR, "format failed"))
                              for b in todo]
            n_done += len(batches)
            model = None
            _free(dev)
            checkpoint()
            continue
        for b in batches:
            n_done += 1
            if b not in todo:
                continue
            if over_budget():
                pt = Point(fmt.name, label, b, args.prompt, args.decode, SKIP, f"time budget {args.time_budget:.0f} s")
            else:
                try:
                    pt = run_point(model, fmt, b, args, dev, timing)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch
                    traceback.print_exc()
                    pt = Point(fmt.name, label, b, args.prompt, args.decode, ERROR, f"{type(e).__name__}: {e}"[:300])
                    model.clear_caches()
                    torch._dynamo.reset()
                    _free(dev)
            doc["points"].append(asdict(pt))
            speed = (f"prefill {_f(pt.prefill_tok_s, '.0f')} tok/s, decode {_f(pt.decode_tok_s, '.1f')} tok/s "
                     f"({_f(pt.step_ms, '.2f')} ms/step), peak {_f(pt.peak_mem_gib, '.1f')} GiB"
                     if pt.decode_tok_s else pt.status)
            _log(f"[{n_done}/{n_total}] {label} B={b}: {speed}"
                 + (f", greedy=eager {pt.greedy_agree:.2f}" if pt.greedy_agree is not None else "")
                 + (f" ({pt.note})" if pt.note else "") + f" [{time.perf_counter() - t_start:.0f} s]")
            checkpoint()
        del model
        _free(dev)

    checkpoint(complete=True)
    rc = render(doc, json_path, not args.no_plots)
    print(f"elapsed {time.perf_counter() - t_start:.1f} s")
    return rc


def render(doc: Dict[str, object], json_path: Path, plots: bool = True) -> int:
    """Print the tables, write ``<stem>.txt`` (and ``.png``) next to ``json_path``; the exit code."""
    from . import report

    tabs = tables(doc)
    s = doc["setup"]
    header = (f"lowbit bench e2e: {s['model']['name']} on {doc['meta']['gpu'].get('name', s['device'])}, "
              f"{s['dtype']}, --compile {s['compile']}" + ("" if doc.get("complete") else " [INCOMPLETE run]"))
    txt = json_path.with_suffix(".txt")
    txt.write_text(f"{doc['meta']['command']}\n\n{header}\n" + report.render_plain(tabs)
                   + "".join(f"note: {n}\n" for n in doc["notes"]), encoding="utf-8")
    report.print_tables(tabs, header)
    written = [json_path, txt]
    if plots:
        try:
            written.append(write_png(doc, json_path.with_suffix(".png")))
        except Exception as e:  # noqa: BLE001 - the numbers are already on disk
            print(f"lowbit bench e2e: plot skipped ({type(e).__name__}: {e})", file=sys.stderr)
    for n in doc["notes"]:
        print(f"note: {n}")
    print("wrote " + ", ".join(str(p) for p in written))
    bad = [p for p in doc["points"] if p["status"] == ERROR] + [f for f in doc["formats"].values()
                                                                  if f.get("status") == ERROR]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
