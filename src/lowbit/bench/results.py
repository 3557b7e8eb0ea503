"""One result row per (shape, M, method), the derived metrics, and the per-M geomeans."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Optional, Tuple

from .roofline import Ceilings, asymptotic, geomean, sol

OK, FAIL, ERROR, SKIP = "ok", "FAIL", "ERROR", "SKIP"
REF_CUBLAS, REF_TINYGEMM = "cublas", "tinygemm"


@dataclass
class Row:
    model: str
    layer: str
    n: int
    k: int
    m: int
    method: str
    role: str
    status: str = OK
    note: str = ""
    math: str = ""
    ideal_bytes: int = 0
    flops: int = 0
    rel_err: Optional[float] = None
    tol: Optional[float] = None
    copies: Optional[int] = None
    kernel_us: Optional[float] = None
    eager_us: Optional[float] = None  # do_bench median
    wall_us: Optional[float] = None  # isolated eager call, host wall clock (Python + launch included)
    # derived by ``derive``
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    sol_us: Optional[float] = None
    sol_memory_us: Optional[float] = None
    sol_compute_us: Optional[float] = None
    bound: Optional[str] = None
    pct_sol: Optional[float] = None
    pct_peak: Optional[float] = None
    speedup_cublas: Optional[float] = None
    speedup_tinygemm: Optional[float] = None

    @property
    def shape(self) -> str:
        return f"{self.model}/{self.layer}"

    @property
    def key(self) -> Tuple[str, str, int, int, int]:
        return (self.model, self.layer, self.n, self.k, self.m)

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


ROW_FIELDS = [f.name for f in fields(Row)]


def derive(rows: List[Row], ceilings: Optional[Ceilings]) -> None:
    """Fill TFLOP/s, GB/s, SOL (size-matched and asymptotic) and speedups in place."""
    by_key: Dict[Tuple, Dict[str, Row]] = {}
    for r in rows:
        by_key.setdefault(r.key, {})[r.method] = r
    for r in rows:
        if r.status != OK or not r.kernel_us:
            continue
        t = r.kernel_us * 1e-6
        r.tflops = r.flops / t / 1e12
        r.gbps = r.ideal_bytes / t / 1e9
        if ceilings is not None and r.ideal_bytes > 0:
            s = sol(r.ideal_bytes, r.flops, ceilings, r.math)
            r.sol_us, r.sol_memory_us, r.sol_compute_us, r.bound = s.sol_us, s.memory_us, s.compute_us, s.bound
            r.pct_sol = 100.0 * s.sol_us / r.kernel_us
            r.pct_peak = 100.0 * asymptotic(r.ideal_bytes, r.flops, ceilings, r.math).sol_us / r.kernel_us
        peers = by_key[r.key]
        for ref, attr in ((REF_CUBLAS, "speedup_cublas"), (REF_TINYGEMM, "speedup_tinygemm")):
            other = peers.get(ref)
            if other is not None and other.status == OK and other.kernel_us:
                setattr(r, attr, other.kernel_us / r.kernel_us)


GEOMEAN_METRICS = ("speedup_cublas", "speedup_tinygemm", "pct_sol", "pct_peak")


def geomeans(rows: List[Row]) -> List[Dict[str, object]]:
    """Per (method, M): geomean over shapes of each metric, and how many shapes contributed."""
    groups: Dict[Tuple[str, int], List[Row]] = {}
    order: List[str] = []
    for r in rows:
        if r.method not in order:
            order.append(r.method)
        groups.setdefault((r.method, r.m), []).append(r)
    out = []
    for (method, m), rs in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        ok = [r for r in rs if r.status == OK]
        d: Dict[str, object] = {"method": method, "m": m, "points": len(ok), "failed": len(rs) - len(ok)}
        for metric in GEOMEAN_METRICS:
            d[metric] = geomean(getattr(r, metric) for r in ok)
        out.append(d)
    return out


def methods_in(rows: List[Row]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r.method not in seen:
            seen.append(r.method)
    return seen


def primary_method(rows: List[Row]) -> Optional[str]:
    """Ours if present, else the first method that is not cuBLAS."""
    for r in rows:
        if r.role == "ours":
            return r.method
    others = [m for m in methods_in(rows) if m != REF_CUBLAS]
    return others[0] if others else (rows[0].method if rows else None)
