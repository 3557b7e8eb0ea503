"""The sweep: shapes x M x methods, same process, same inputs, same timer.

Per shape: build the quantized weight once, bind every case, make its R weight copies lazily (reused
over M). Per point: one input x; each case runs once, is checked against the fp32 reference (a
wrong result is recorded FAIL and never timed), then timed cold (graph) and eager. A failing case
records ERROR for its row and the sweep continues.
"""
from __future__ import annotations

import contextlib
import gc
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch

from .cases import Bound, Case, OpSpec, clone_tensors, make_shape_data, make_x, matmul_flops, tensor_nbytes
from .results import ERROR, FAIL, OK, SKIP, Row
from .shapes import LinearShape
from .timing import Cost, Timer


@dataclass
class Sweep:
    spec: OpSpec
    shapes: List[LinearShape]
    ms: List[int]
    cases: List[Case]
    device: torch.device
    seed: int = 0
    time_budget_s: Optional[float] = None
    notes: List[str] = field(default_factory=list)


def rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref||_F / ||ref||_F in fp32 (inf for NaN/shape mismatch)."""
    if tuple(y.shape) != tuple(ref.shape):
        return float("inf")
    yf = y.float()
    err = torch.linalg.vector_norm(yf - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30)
    e = float(err)
    return e if e == e else float("inf")


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:300]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device, collect: bool = False) -> None:
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def exact_fp32():
    """References are true fp32 matmuls, whatever TF32 setting the process has."""
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


def run_sweep(sw: Sweep, timer: Timer, progress: Optional[Callable[[str], None]] = None,
              on_shape_done: Optional[Callable[[List[Row]], None]] = None) -> List[Row]:
    """Run every point; returns raw rows (``results.derive`` adds the metrics)."""
    rows: List[Row] = []
    deadline = None if sw.time_budget_s is None else time.perf_counter() + sw.time_budget_s
    for shape in sw.shapes:
        if _past(deadline):
            rows.extend(_skip_all(sw, shape, sw.ms, progress))
            continue
        rows.extend(_run_shape(sw, shape, timer, progress, deadline))
        _free(sw.device, collect=True)
        if on_shape_done:
            on_shape_done(rows)
    return rows


def _past(deadline: Optional[float]) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def _skip_all(sw: Sweep, shape: LinearShape, ms: List[int], progress) -> List[Row]:
    rows = []
    for m in ms:
        for case in sw.cases:
            rows.append(_row(shape, m, case, sw.spec, SKIP, "time budget exhausted"))
            if progress:
                progress(f"{shape.name} M={m} skipped")
    return rows


def _row(shape: LinearShape, m: int, case: Case, spec: OpSpec, status: str = OK, note: str = "") -> Row:
    return Row(shape.model, shape.layer, shape.n, shape.k, m, case.name, case.role, status, note,
               math=case.math_kind(spec), flops=matmul_flops(m, shape.n, shape.k))


def _run_shape(sw: Sweep, shape: LinearShape, timer: Timer, progress, deadline: Optional[float]) -> List[Row]:
    rows: List[Row] = []
    try:
        data = make_shape_data(shape, sw.spec, sw.device, sw.seed)
    except Exception as e:  # noqa: BLE001 - record and go on with the next shape
        for m in sw.ms:
            for case in sw.cases:
                rows.append(_row(shape, m, case, sw.spec, ERROR, f"shape setup: {_short(e)}"))
        return rows
    bound: Dict[str, object] = {}  # name -> Bound | error string
    for case in sw.cases:
        try:
            bound[case.name] = case.bind(data)
        except Exception as e:  # noqa: BLE001
            bound[case.name] = f"bind: {_short(e)}"
    copies: Dict[str, list] = {}
    for i, m in enumerate(sw.ms):
        if _past(deadline):
            rows.extend(_skip_all(sw, shape, sw.ms[i:], progress))
            break
        x = make_x(m, shape.k, sw.spec, sw.device, sw.seed)
        ref = None
        for case in sw.cases:
            b = bound[case.name]
            row = _row(shape, m, case, sw.spec)
            rows.append(row)
            if progress:
                progress(f"{shape.name} M={m} {case.name}")
            ok, why = case.supports(sw.spec, shape, m)
            if not ok:
                row.status, row.note = SKIP, why
                continue
            if isinstance(b, str):
                row.status, row.note = ERROR, b
                continue
            try:
                if b.reference is None and ref is None:
                    with exact_fp32():
                        ref = x.float() @ data.w_ref.t()
                _measure(row, case, b, x, ref, sw, copies, timer)
            except Exception as e:  # noqa: BLE001 - one failing case must not stop the sweep
                row.status, row.note = ERROR, _short(e)
                row.kernel_us = row.eager_us = row.wall_us = None
                if sw.device.type == "cuda":
                    traceback.print_exc(limit=2)
                    try:
                        torch.cuda.synchronize(sw.device)
                    except Exception:  # noqa: BLE001
                        pass
        del x, ref
        _free(sw.device)
    del data, bound, copies
    return rows


def _measure(row: Row, case: Case, b: Bound, x: torch.Tensor, shared_ref, sw: Sweep,
             copies: Dict[str, list], timer: Timer) -> None:
    shape = (row.m, row.n, row.k)
    row.ideal_bytes = b.ideal_bytes(*shape)
    row.note = b.note
    xin = b.prepare_x(x)
    with torch.no_grad():
        y = b.run(xin, b.weights)  # also compiles / warms up before any capture
        _sync(sw.device)
        if b.reference is not None:
            with exact_fp32():
                ref = b.reference(x)
        else:
            ref = shared_ref
        row.tol = case.tol(sw.spec, b)
        row.rel_err = rel_error(y, ref)
        del y, ref
        if not row.rel_err <= row.tol:
            row.status = FAIL
            row.note = f"rel err {row.rel_err:.3g} > tol {row.tol:.3g}" + (f"; {b.note}" if b.note else "")
            return
        if case.name not in copies:
            r = timer.copies_needed(tensor_nbytes(b.weights))
            copies[case.name] = [b.weights] + [clone_tensors(b.weights) for _ in range(r - 1)]
        ws = copies[case.name]
        row.copies = len(ws)
        cost = Cost(case.name, row.ideal_bytes, row.flops)
        calls = [lambda w=w: b.run(xin, w) for w in ws]
        row.kernel_us = timer.kernel_us(calls, cost)
        row.eager_us = timer.eager_us(lambda: b.run(xin, b.weights), cost)
        row.wall_us = timer.wall_us(lambda: b.run(xin, b.weights), cost, row.kernel_us)
