"""Run metadata, tables (rich when installed, plain text always), JSON and CSV."""
from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .results import OK, ROW_FIELDS, Row, geomeans, methods_in, primary_method
from .roofline import Ceilings


def _run(cmd: Sequence[str], cwd: Optional[str] = None) -> Optional[str]:
    try:
        p = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=10)
    except Exception:  # noqa: BLE001 - metadata is best effort
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_info() -> Dict[str, object]:
    """Commit of the source tree. ``LOWBIT_GIT_COMMIT`` wins when set: copied trees (the GPU machine)
    may carry no .git, or a stale one from the checkout the copy was made from."""
    here = str(Path(__file__).resolve().parent)
    commit = None if os.environ.get("LOWBIT_GIT_COMMIT") else _run(["git", "rev-parse", "HEAD"], cwd=here)
    if commit is None:
        return {"commit": os.environ.get("LOWBIT_GIT_COMMIT"), "dirty": None, "source": "LOWBIT_GIT_COMMIT"}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here)
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def gpu_info() -> Dict[str, object]:
    import torch

    info: Dict[str, object] = {"cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    memory_gib=round(p.total_memory / 2**30, 1), cuda_version=torch.version.cuda)
        q = "name,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,driver_version"
        out = _run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader", "-i", "0"])
        if out:
            info["nvidia_smi"] = dict(zip(q.split(","), (v.strip() for v in out.splitlines()[0].split(","))))
    return info


def collect_meta(argv: Sequence[str]) -> Dict[str, object]:
    import torch

    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    from .. import __version__ as lowbit_version

    return {
        "command": "lowbit bench " + " ".join(argv),
        "argv": list(argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "lowbit": lowbit_version,
        "git": git_info(),
        "gpu": gpu_info(),
        "host": platform.node(),
    }


# ---------------------------------------------------------------- tables (data, then rendering)


def _f(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _cell(r: Optional[Row]) -> str:
    if r is None:
        return ""
    return _f(r.kernel_us, ".1f") if r.status == OK else r.status


def tables(rows: List[Row]) -> List[Dict[str, object]]:
    """Three tables as {title, headers, rows}: primary-method detail, µs by method, geomeans per M."""
    out: List[Dict[str, object]] = []
    methods = methods_in(rows)
    prim = primary_method(rows)
    if prim is not None:
        body = []
        for r in (r for r in rows if r.method == prim):
            body.append([r.shape, f"{r.n}x{r.k}", str(r.m), _f(r.kernel_us, ".1f"), _f(r.eager_us, ".1f"),
                         _f(r.wall_us, ".1f"),
                         _f(r.tflops, ".1f"), _f(r.gbps, ".0f"), _f(r.pct_sol, ".0f"), _f(r.pct_peak, ".0f"),
                         r.bound or "-", _f(r.speedup_cublas, ".2f"), _f(r.speedup_tinygemm, ".2f"),
                         r.status if r.status == OK else f"{r.status} {r.note}"[:60]])
        out.append({"title": f"{prim}: per point (kernel = cold CUDA graph / R; eager = do_bench; "
                             "call = one synced eager call, host clock)",
                    "headers": ["shape", "NxK", "M", "µs kernel", "µs eager", "µs call", "TFLOP/s", "GB/s", "%SOL",
                                "%peak", "bound", "x cuBLAS", "x tinygemm", "status"],
                    "rows": body})
    index: Dict[tuple, Dict[str, Row]] = {}
    for r in rows:
        index.setdefault(r.key, {})[r.method] = r
    body = [[f"{k[0]}/{k[1]}", str(k[4])] + [_cell(d.get(m)) for m in methods] for k, d in index.items()]
    out.append({"title": "kernel µs by method (FAIL = wrong result, not timed)",
                "headers": ["shape", "M"] + methods, "rows": body})
    gm = geomeans(rows)
    by_m: Dict[int, Dict[str, dict]] = {}
    for g in gm:
        by_m.setdefault(g["m"], {})[g["method"]] = g
    heads = ["M"]
    for m in methods:
        heads += [f"{m} xcuBLAS", f"{m} %SOL"]
    body = []
    for mval in sorted(by_m):
        line = [str(mval)]
        for m in methods:
            g = by_m[mval].get(m, {})
            line += [_f(g.get("speedup_cublas"), ".2f"), _f(g.get("pct_sol"), ".0f")]
        body.append(line)
    out.append({"title": "geomean over shapes per M", "headers": heads, "rows": body})
    return out


def render_plain(tabs: List[Dict[str, object]]) -> str:
    parts = []
    for t in tabs:
        heads, body = t["headers"], t["rows"]
        widths = [max(len(str(h)), *(len(str(r[i])) for r in body)) if body else len(str(h))
                  for i, h in enumerate(heads)]
        line = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
        parts += [f"== {t['title']} ==", line(heads), line(["-" * w for w in widths])]
        parts += [line(r) for r in body]
        parts.append("")
    return "\n".join(parts)


def print_tables(tabs: List[Dict[str, object]], header: str = "") -> None:
    """Rich tables when rich is installed, else plain text; ASCII if stdout cannot encode the rest."""
    try:
        _print_tables(tabs, header)
    except UnicodeEncodeError:
        text = header + "\n" + render_plain(tabs)
        print(text.replace("µ", "u").encode("ascii", "replace").decode("ascii"))


def _print_tables(tabs: List[Dict[str, object]], header: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(header)
        print(render_plain(tabs))
        return
    console = Console(width=max(160, Console().width))
    if header:
        console.print(header)
    for t in tabs:
        table = Table(title=t["title"], header_style="bold", show_lines=False)
        for i, h in enumerate(t["headers"]):
            table.add_column(str(h), justify="left" if i == 0 else "right", no_wrap=True)
        for r in t["rows"]:
            table.add_row(*[str(c) for c in r])
        console.print(table)


# ---------------------------------------------------------------- files


def write_json(path: Path, meta: Dict[str, object], ceilings: Optional[Ceilings], rows: List[Row],
               complete: bool = True) -> None:
    doc = {"meta": meta, "complete": complete, "ceilings": ceilings.to_dict() if ceilings else None,
           "points": [r.to_dict() for r in rows], "geomeans": geomeans(rows)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path: Path, rows: List[Row]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
    os.replace(tmp, path)


def write_all(out: Path, stem: str, meta: Dict[str, object], ceilings: Optional[Ceilings], rows: List[Row],
              complete: bool = True) -> Dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "csv": out / f"{stem}.csv", "txt": out / f"{stem}.txt"}
    write_json(paths["json"], meta, ceilings, rows, complete)
    write_csv(paths["csv"], rows)
    paths["txt"].write_text(f"{meta.get('command', '')}\n\n" + render_plain(tables(rows)), encoding="utf-8")
    return paths


