"""Shipped kernel configs: ``configs/<gpu>.json``, looked up by (kernel, bits, M bucket, N, K).

No autotuning on the call path: ``lookup`` reads the shipped table once per GPU name and returns
the entry nearest to the problem (same kernel; nearest bit-width; same M bucket, else the
nearest; then nearest (log N, log K)). No table for the GPU -> None, and the launcher uses its
heuristic. ``lowbit tune`` (``lowbit.tuning.tune``) writes new tables.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Dict, List, Optional

CONFIG_DIR = Path(__file__).parent / "configs"


def gpu_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia_h200'."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def m_bucket(m: int) -> int:
    """Next power of two >= m."""
    return 1 << max(0, (m - 1).bit_length())


@functools.lru_cache(maxsize=None)
def load_table(slug: str) -> List[Dict]:
    path = CONFIG_DIR / f"{slug}.json"
    extra = os.environ.get("LOWBIT_CONFIG_DIR")
    if extra and (Path(extra) / f"{slug}.json").exists():
        path = Path(extra) / f"{slug}.json"
    if not path.exists():
        return []
    try:
        return json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError):
        return []  # a corrupt table is ignored: heuristics still work


def nearest_entry(entries: List[Dict], kernel: Optional[str], bits: int, m: int, n: int, k: int) -> Optional[Dict]:
    cands = [e for e in entries if kernel is None or e["kernel"] == kernel]
    if not cands:
        return None
    mb = m_bucket(m)

    def dist(e):
        return (abs(e["bits"] - bits), abs(math.log2(e["m"]) - math.log2(mb)),
                abs(math.log2(e["n"] / n)) + abs(math.log2(e["k"] / k)))

    return min(cands, key=dist)


def lookup(kernel: str, bits: int, m: int, n: int, k: int, device_name: str) -> Optional[Dict]:
    """Config of ``kernel`` for the nearest tuned problem (None: no table for this GPU)."""
    e = nearest_entry(load_table(gpu_slug(device_name)), kernel, bits, m, n, k)
    return None if e is None else e["config"]


def best_kernel(bits: int, m: int, n: int, k: int, device_name: str) -> Optional[str]:
    """Kernel family that won the nearest tuned problem (entries flagged ``best``)."""
    entries = [e for e in load_table(gpu_slug(device_name)) if e.get("best")]
    e = nearest_entry(entries, None, bits, m, n, k)
    return None if e is None else e["kernel"]
