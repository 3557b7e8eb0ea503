"""Linear-layer shapes that matter, written N x K (out_features x in_features, ``nn.Linear`` layout).

``resolve("llama3-8b,llama3-70b-tp4,6144x4096")`` -> list of ``LinearShape``. Tensor-parallel shards
``<model>-tp<d>`` split column-parallel layers (qkv, gate_up) along N and row-parallel layers
(o, down) along K, as Megatron/vLLM do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Dict, List, Tuple

COLUMN, ROW = "column", "row"


@dataclass(frozen=True)
class LinearShape:
    """One linear layer: y (M, N) = x (M, K) @ W^T with W (N, K)."""

    model: str
    layer: str
    n: int
    k: int
    parallel: str = COLUMN  # how tensor parallelism shards it: "column" (N) or "row" (K)

    @property
    def name(self) -> str:
        return f"{self.model}/{self.layer}"

    @property
    def label(self) -> str:
        return f"{self.name} {self.n}x{self.k}"

    def shard(self, tp: int) -> "LinearShape":
        """This layer's shard on one of ``tp`` tensor-parallel ranks."""
        if tp < 1:
            raise ValueError(f"tensor-parallel degree must be >= 1, got {tp}")
        dim = self.n if self.parallel == COLUMN else self.k
        if dim % tp:
            raise ValueError(f"{self.label}: {self.parallel}-parallel dim {dim} is not divisible by tp={tp}")
        model = self.model if tp == 1 else f"{self.model}-tp{tp}"
        if self.parallel == COLUMN:
            return replace(self, model=model, n=self.n // tp)
        return replace(self, model=model, k=self.k // tp)


def _llama(model: str, hidden: int, qkv: int, ffn: int) -> Tuple[LinearShape, ...]:
    return (
        LinearShape(model, "qkv", qkv, hidden, COLUMN),
        LinearShape(model, "o", hidden, hidden, ROW),
        LinearShape(model, "gate_up", 2 * ffn, hidden, COLUMN),
        LinearShape(model, "down", hidden, ffn, ROW),
    )


MODELS: Dict[str, Tuple[LinearShape, ...]] = {
    # qkv N = (n_heads + 2 * n_kv_heads) * head_dim = (32 + 2*8) * 128; gate_up is gate and up fused.
    "llama3-8b": _llama("llama3-8b", hidden=4096, qkv=6144, ffn=14336),
    "llama3-70b": _llama("llama3-70b", hidden=8192, qkv=10240, ffn=28672),
}

_TP = re.compile(r"^(?P<model>.+)-tp(?P<tp>\d+)$")
_CUSTOM = re.compile(r"^(?P<n>\d+)x(?P<k>\d+)$")


def model_shapes(name: str) -> List[LinearShape]:
    """Shapes of a named table, e.g. ``llama3-8b`` or ``llama3-70b-tp4``."""
    if name in MODELS:
        return list(MODELS[name])
    m = _TP.match(name)
    if m and m.group("model") in MODELS:
        tp = int(m.group("tp"))
        return [s.shard(tp) for s in MODELS[m.group("model")]]
    known = ", ".join(sorted(MODELS))
    raise ValueError(f"unknown shape table {name!r}; known: {known} (optionally -tp2/-tp4/...), or NxK")


def resolve(spec: str) -> List[LinearShape]:
    """Comma-separated table names and ``NxK`` customs -> shapes (duplicates dropped, order kept)."""
    out: List[LinearShape] = []
    for token in (t.strip().lower() for t in spec.split(",")):
        if not token:
            continue
        m = _CUSTOM.match(token)
        if m:
            n, k = int(m.group("n")), int(m.group("k"))
            if n <= 0 or k <= 0:
                raise ValueError(f"custom shape {token!r} must have positive N and K")
            shapes = [LinearShape("custom", f"{n}x{k}", n, k)]
        else:
            shapes = model_shapes(token)
        out.extend(s for s in shapes if s not in out)
    if not out:
        raise ValueError(f"no shapes in {spec!r}")
    return out


DEFAULT_M: Tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
QUICK_M: Tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)


def parse_m(spec: str) -> List[int]:
    """``"1,2,4"`` -> [1, 2, 4]; each M must be a positive integer."""
    try:
        ms = [int(t) for t in spec.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--m must be a comma-separated list of integers, got {spec!r}") from None
    if not ms or any(m <= 0 for m in ms):
        raise ValueError(f"--m needs positive integers, got {spec!r}")
    return sorted(set(ms))
