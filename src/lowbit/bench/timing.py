"""Timers: one interface, a CUDA implementation and a fake one for tests.

Kernel time (``kernel_us``): R calls, each reading its own copy of the weights (R copies total
>= ``min_copy_bytes``, so L2 holds nothing between calls), captured into one CUDA graph; the graph
is replayed ``replays`` times and the median replay time / R is returned: cold cache, no launch
overhead. Eager latency (``eager_us``): ``triton.testing.do_bench`` median of plain calls (it
flushes L2 before each call, which also hides host overhead shorter than the flush). Isolated call
(``wall_us``): flush L2, synchronize, then host wall clock of one call + synchronize — Python,
dispatch and launch overhead fully included, as one eager call on an idle GPU costs.

Select the fake timer with ``LOWBIT_BENCH_FAKE_TIMER=1`` (or pass ``timer=`` to ``main``).
"""
from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence

MiB = 1 << 20
FAKE_ENV = "LOWBIT_BENCH_FAKE_TIMER"


@dataclass(frozen=True)
class Cost:
    """What one call should cost ideally; the fake timer models time from it, real timers ignore it."""

    label: str
    nbytes: float
    flops: float


class Timer(Protocol):
    def copies_needed(self, weight_nbytes: int) -> int: ...

    def kernel_us(self, calls: Sequence[Callable[[], object]], cost: Cost) -> float: ...

    def eager_us(self, call: Callable[[], object], cost: Cost) -> float: ...

    def wall_us(self, call: Callable[[], object], cost: Cost, est_us: float) -> float: ...


def copies_for(weight_nbytes: int, min_total_bytes: int, max_copies: int, min_copies: int = 2) -> int:
    """R such that R * weight_nbytes >= min_total_bytes, clamped to [min_copies, max_copies]."""
    if weight_nbytes <= 0:
        return min_copies
    r = math.ceil(min_total_bytes / weight_nbytes)
    return max(min_copies, min(max_copies, r))


def fake_requested() -> bool:
    return os.environ.get(FAKE_ENV, "").strip() not in ("", "0")


@dataclass
class CudaTimer:
    """CUDA-graph kernel timer + do_bench eager timer (see module docstring)."""

    replays: int = 10
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_copy_bytes: int = 256 * MiB
    max_copies: int = 1000
    _flush: object = field(default=None, init=False, repr=False)

    def copies_needed(self, weight_nbytes: int) -> int:
        return copies_for(weight_nbytes, self.min_copy_bytes, self.max_copies)

    def kernel_us(self, calls: Sequence[Callable[[], object]], cost: Cost) -> float:
        import torch

        if not calls:
            raise ValueError("kernel_us needs at least one call")
        cur = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(cur)
        with torch.cuda.stream(side):  # warm-up off the capture stream, as the CUDA graph docs advise
            calls[0]()
        cur.wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for call in calls:
                    call()  # outputs are dropped: the graph pool reuses their memory
            graph.replay()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            times: List[float] = []
            for _ in range(max(1, self.replays)):
                start.record()
                graph.replay()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        finally:
            del graph
        return statistics.median(times) * 1e3 / len(calls)

    def eager_us(self, call: Callable[[], object], cost: Cost) -> float:
        import triton.testing

        return float(triton.testing.do_bench(call, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median")) * 1e3

    def wall_us(self, call: Callable[[], object], cost: Cost, est_us: float) -> float:
        import time

        import torch

        reps = max(3, min(50, int(self.rep_ms * 1e3 / max(est_us + 100.0, 1.0))))
        if self._flush is None:  # >= 256 MB of writes evicts the 50-60 MB L2
            self._flush = torch.empty(max(self.min_copy_bytes, 256 * MiB) // 4, dtype=torch.int32, device="cuda")
        flush = self._flush
        times: List[float] = []
        for _ in range(reps):
            flush.zero_()
            torch.cuda.synchronize()
            t = time.perf_counter()
            call()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1e6)
        return statistics.median(times)


@dataclass
class FakeTimer:
    """Deterministic model t = overhead + bytes/bandwidth + flops/peak, scaled per label.

    Records what it was asked to time (``timed``: labels, ``copies``: R per kernel timing) so tests
    can check that failing callables are never timed. Runs each callable once so the code path is
    exercised.
    """

    bandwidth: float = 3.0e12
    peak_flops: float = 800e12
    overhead_us: float = 2.0
    eager_extra_us: float = 8.0
    factors: Dict[str, float] = field(default_factory=dict)
    timed: List[str] = field(default_factory=list)
    copies: List[int] = field(default_factory=list)

    def copies_needed(self, weight_nbytes: int) -> int:
        return 2

    def _model_us(self, cost: Cost) -> float:
        t = self.overhead_us + cost.nbytes / self.bandwidth * 1e6 + cost.flops / self.peak_flops * 1e6
        return t * self.factors.get(cost.label, 1.0)

    def kernel_us(self, calls: Sequence[Callable[[], object]], cost: Cost) -> float:
        calls[0]()
        self.timed.append(cost.label)
        self.copies.append(len(calls))
        return self._model_us(cost)

    def eager_us(self, call: Callable[[], object], cost: Cost) -> float:
        call()
        return self._model_us(cost) + self.eager_extra_us

    def wall_us(self, call: Callable[[], object], cost: Cost, est_us: float) -> float:
        return est_us + 2 * self.eager_extra_us


def default_timer(quick: bool, replays: Optional[int] = None, min_copy_mb: float = 256.0,
                  max_copies: int = 1000) -> CudaTimer:
    """The CUDA timer with the preset's effort: quick = fewer replays and a shorter do_bench."""
    if quick:
        t = CudaTimer(replays=10, warmup_ms=5.0, rep_ms=20.0)  # the median of >= 10 replays, always
    else:
        t = CudaTimer(replays=20, warmup_ms=25.0, rep_ms=100.0)
    if replays is not None:
        t.replays = replays
    t.min_copy_bytes = int(min_copy_mb * MiB)
    t.max_copies = max_copies
    return t
