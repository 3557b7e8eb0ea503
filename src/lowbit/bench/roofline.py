"""Speed-of-light math (pure functions, no GPU).

A point moving ``B`` ideal bytes and doing ``F`` flops cannot finish before

    SOL(B, F) = max(stream(B), F / peak[math])

where ``stream(B)`` is the *measured* time to stream B bytes cold (interpolated log-log between the
measured sizes) and ``peak[math]`` the measured dense throughput of the math dtype. The asymptotic
bound uses the best bandwidth seen at any size instead, so it overstates what one layer can reach.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple


def interp_loglog(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation in log-log space; end segments are extrapolated."""
    if len(xs) != len(ys) or not xs:
        raise ValueError("interp_loglog needs two equally long, non-empty sequences")
    if any(v <= 0 for v in xs) or any(v <= 0 for v in ys) or x <= 0:
        raise ValueError("interp_loglog needs positive values")
    if len(xs) == 1:
        return ys[0] * x / xs[0]  # one point: assume time proportional to bytes
    pts = sorted(zip(xs, ys))
    lx = [math.log(p[0]) for p in pts]
    ly = [math.log(p[1]) for p in pts]
    t = math.log(x)
    i = 0
    while i < len(lx) - 2 and t > lx[i + 1]:
        i += 1
    slope = (ly[i + 1] - ly[i]) / (lx[i + 1] - lx[i])
    return math.exp(ly[i] + slope * (t - lx[i]))


def monotone_times(sizes: Sequence[int], times: Sequence[float]) -> List[float]:
    """Streaming B bytes is never slower than streaming more: running minimum from the largest size."""
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    out = list(times)
    best = math.inf
    for i in reversed(order):
        best = min(best, times[i])
        out[i] = best
    return out


@dataclass
class Ceilings:
    """Measured limits of the device: streaming curve and dense peaks (FLOP/s per math dtype)."""

    stream_bytes: List[int]
    stream_us: List[float]  # best of read / copy per size, made monotone
    peaks: Dict[str, float]  # "bf16" | "fp16" | "fp8" | "int8" -> FLOP/s (OP/s for int8)
    detail: Dict[str, object] = field(default_factory=dict)  # raw per-method numbers, for the record

    def __post_init__(self) -> None:
        if len(self.stream_bytes) != len(self.stream_us) or not self.stream_bytes:
            raise ValueError("Ceilings needs a non-empty streaming curve")
        self.stream_us = monotone_times(self.stream_bytes, self.stream_us)

    @property
    def peak_bandwidth(self) -> float:
        """Best bytes/s seen at any measured size (the asymptotic bandwidth)."""
        return max(b / (t * 1e-6) for b, t in zip(self.stream_bytes, self.stream_us))

    def stream_time_us(self, nbytes: float) -> float:
        return interp_loglog(self.stream_bytes, self.stream_us, nbytes)

    def peak(self, math_kind: str) -> Optional[float]:
        return self.peaks.get(math_kind)

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["peak_bandwidth"] = self.peak_bandwidth
        return d


@dataclass(frozen=True)
class SolBreakdown:
    memory_us: float
    compute_us: Optional[float]  # None when the math dtype's peak was not measured

    @property
    def sol_us(self) -> float:
        return self.memory_us if self.compute_us is None else max(self.memory_us, self.compute_us)

    @property
    def bound(self) -> str:
        return "memory" if self.compute_us is None or self.memory_us >= self.compute_us else "compute"


def sol(nbytes: float, flops: float, ceilings: Ceilings, math_kind: str) -> SolBreakdown:
    """Size-matched speed of light: measured streaming time of ``nbytes`` vs flops at measured peak."""
    peak = ceilings.peak(math_kind)
    return SolBreakdown(ceilings.stream_time_us(nbytes), None if not peak else flops / peak * 1e6)


def asymptotic(nbytes: float, flops: float, ceilings: Ceilings, math_kind: str) -> SolBreakdown:
    """Speed of light at the best bandwidth of any size (what a fixed-peak roofline claims)."""
    peak = ceilings.peak(math_kind)
    return SolBreakdown(nbytes / ceilings.peak_bandwidth * 1e6, None if not peak else flops / peak * 1e6)


def geomean(values: Iterable[Optional[float]]) -> Optional[float]:
    """Geometric mean of the positive finite values; None if there are none."""
    logs = [math.log(v) for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else None


def power_of_two_sizes(lo: int, hi: int) -> List[int]:
    """lo, 2*lo, ..., <= hi."""
    out, s = [], lo
    while s <= hi:
        out.append(s)
        s *= 2
    return out


def stream_from_model(sizes: Sequence[int], latency_us: float, bandwidth: float) -> Tuple[List[int], List[float]]:
    """A synthetic streaming curve t = latency + B / bandwidth (for fake runs and tests)."""
    return list(sizes), [latency_us + b / bandwidth * 1e6 for b in sizes]
