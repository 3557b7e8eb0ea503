"""Measure the device's ceilings at the start of a run (CUDA only).

Streaming: for each size B (0.5 MB .. 1 GB, powers of two) the faster of
  * a read-only Triton reduction over B bytes (best of a few block sizes), and
  * a device copy moving B bytes in total (B/2 read + B/2 written),
each timed cold like the kernels: R slices of one buffer (R * B >= 256 MB) captured in one graph.
Dense peaks: FLOP/s of an 8192^3 matmul per math dtype (bf16/fp16 ``mm``, fp8 ``_scaled_mm``
row-wise, int8 ``_int_mm``).
"""
from __future__ import annotations

import functools
from typing import Dict, Iterable, List, Tuple

import torch
import triton
import triton.language as tl

from .roofline import Ceilings, power_of_two_sizes, stream_from_model
from .timing import Cost, Timer

MiB = 1 << 20
STREAM_SIZES = power_of_two_sizes(MiB // 2, 1024 * MiB)
# (BLOCK int32 per step, steps per program, warps): small chunks keep small sizes spread over all SMs.
READ_CONFIGS: Tuple[Tuple[int, int, int], ...] = ((1024, 1, 4), (1024, 4, 4), (2048, 8, 8))
PEAK_SIZE = 8192


@triton.jit
def _read_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    """out[pid] = sum of x[pid*BLOCK*STEPS : (pid+1)*BLOCK*STEPS] (int32, wrapping): reads every byte once."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * BLOCK * STEPS
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(STEPS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def _read(x: torch.Tensor, out: torch.Tensor, block: int, steps: int, warps: int) -> None:
    n = x.numel()
    grid = (triton.cdiv(n, block * steps),)
    _read_kernel[grid](x, out, n, BLOCK=block, STEPS=steps, num_warps=warps)


def measure_stream(timer: Timer, sizes: Iterable[int] = STREAM_SIZES, device: str = "cuda") -> Dict[str, List]:
    """Per size: best read-kernel time, copy time (µs; None if it failed), and the winning read config."""
    res: Dict[str, List] = {"bytes": [], "read_us": [], "copy_us": [], "read_config": [], "errors": []}
    for nbytes in sizes:
        r = timer.copies_needed(nbytes)
        words = nbytes // 4
        buf = torch.zeros(r * words, dtype=torch.int32, device=device)  # defined data (the interpreter rejects int32 overflow)
        slices = [buf[i * words:(i + 1) * words] for i in range(r)]
        best, best_cfg = None, None
        for block, steps, warps in READ_CONFIGS:
            try:
                nprog = triton.cdiv(words, block * steps)
                out = torch.empty(r * nprog, dtype=torch.int32, device=device)
                calls = [functools.partial(_read, s, out[i * nprog:(i + 1) * nprog], block, steps, warps)
                         for i, s in enumerate(slices)]
                calls[0]()  # compile outside the capture
                t = timer.kernel_us(calls, Cost("read", nbytes, 0))
                if best is None or t < best:
                    best, best_cfg = t, (block, steps, warps)
            except Exception as e:  # noqa: BLE001 - the copy still gives a ceiling
                res["errors"].append(f"read {nbytes} B {(block, steps, warps)}: {type(e).__name__}: {e}")
        half = words // 2
        t_copy = None
        try:
            dst = torch.empty(r * half, dtype=torch.int32, device=device)
            calls = [functools.partial(dst[i * half:(i + 1) * half].copy_, buf[i * half:(i + 1) * half])
                     for i in range(r)]
            t_copy = timer.kernel_us(calls, Cost("copy", nbytes, 0))
        except Exception as e:  # noqa: BLE001
            res["errors"].append(f"copy {nbytes} B: {type(e).__name__}: {e}")
        del buf, slices
        if device == "cuda":
            torch.cuda.empty_cache()
        res["bytes"].append(nbytes)
        res["read_us"].append(best)
        res["copy_us"].append(t_copy)
        res["read_config"].append(best_cfg)
    return res


def _peak_mm(timer: Timer, kind: str, dtype: torch.dtype) -> float:
    s = PEAK_SIZE
    a = torch.randn(s, s, device="cuda", dtype=dtype)
    b = torch.randn(s, s, device="cuda", dtype=dtype)
    return 2 * s**3 / (timer.eager_us(lambda: torch.mm(a, b), Cost(f"peak_{kind}", 0, 2 * s**3)) * 1e-6)


def _peak_fp8(timer: Timer) -> float:
    s = PEAK_SIZE
    a = torch.randn(s, s, device="cuda").to(torch.float8_e4m3fn)
    w = torch.randn(s, s, device="cuda").to(torch.float8_e4m3fn)
    sa = torch.ones(s, 1, device="cuda")
    sb = torch.ones(1, s, device="cuda")
    fn = lambda: torch._scaled_mm(a, w.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)  # noqa: E731
    return 2 * s**3 / (timer.eager_us(fn, Cost("peak_fp8", 0, 2 * s**3)) * 1e-6)


def _peak_int8(timer: Timer) -> float:
    s = PEAK_SIZE
    a = torch.randint(-128, 127, (s, s), device="cuda", dtype=torch.int8)
    w = torch.randint(-128, 127, (s, s), device="cuda", dtype=torch.int8)
    fn = lambda: torch._int_mm(a, w.t())  # noqa: E731
    return 2 * s**3 / (timer.eager_us(fn, Cost("peak_int8", 0, 2 * s**3)) * 1e-6)


def measure_peaks(timer: Timer, kinds: Iterable[str]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """Dense peak FLOP/s per math kind; failures are reported, not raised."""
    peaks: Dict[str, float] = {}
    errors: Dict[str, str] = {}
    for kind in sorted(set(kinds)):
        try:
            if kind in ("bf16", "fp16"):
                peaks[kind] = _peak_mm(timer, kind, torch.bfloat16 if kind == "bf16" else torch.float16)
            elif kind == "fp8":
                peaks[kind] = _peak_fp8(timer)
            elif kind == "int8":
                peaks[kind] = _peak_int8(timer)
            else:
                errors[kind] = "no peak measurement for this math kind"
        except Exception as e:  # noqa: BLE001 - one failing peak must not stop the run
            errors[kind] = f"{type(e).__name__}: {e}"
        torch.cuda.empty_cache()
    return peaks, errors


def measure_ceilings(timer: Timer, kinds: Iterable[str], sizes: Iterable[int] = STREAM_SIZES,
                     device: str = "cuda") -> Ceilings:
    """Streaming curve (best of read and copy per size) and dense peaks, measured now."""
    stream = measure_stream(timer, sizes, device)
    pts = [(b, min(t for t in (r, c) if t is not None))
           for b, r, c in zip(stream["bytes"], stream["read_us"], stream["copy_us"]) if r is not None or c is not None]
    if not pts:
        raise RuntimeError("no streaming measurement succeeded: " + "; ".join(stream["errors"][:3]))
    peaks, errors = measure_peaks(timer, kinds)
    detail = {"stream": stream, "peak_errors": errors, "peak_size": PEAK_SIZE, "source": "measured"}
    return Ceilings([p[0] for p in pts], [p[1] for p in pts], peaks, detail)


def fake_ceilings(kinds: Iterable[str] = ("bf16", "fp16", "fp8", "int8")) -> Ceilings:
    """Synthetic ceilings for tests/fake runs: 2 µs + B / 3 TB/s; 800 TFLOP/s bf16, 1600 fp8/int8."""
    sizes, times = stream_from_model(STREAM_SIZES, 2.0, 3.0e12)
    table = {"bf16": 800e12, "fp16": 800e12, "fp8": 1600e12, "int8": 1600e12}
    return Ceilings(sizes, times, {k: table[k] for k in kinds if k in table}, {"source": "fake"})
