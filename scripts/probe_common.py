"""What the GPU probe scripts share (``import probe_common`` from ``scripts/``): the ``--m`` / ``--shapes`` /
``--json`` command line over N x K shapes, the relative error of an output against its fp32 reference, one
variant measured as (cold CUDA-graph time over weight copies, error), a do_bench timer of CUDA-graph replays,
and the JSON dump of the result rows."""
import argparse
import json
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import triton

from lowbit.bench.timing import Cost

LLAMA3_8B_SHAPES = "6144x4096,4096x4096,28672x4096,4096x14336"  # qkv, o, gate_up, down as N x K


def probe_parser(m: str, shapes: str = LLAMA3_8B_SHAPES, **kwargs) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--m`` (comma list), ``--shapes`` (comma list of NxK) and ``--json`` (rows out)."""
    p = argparse.ArgumentParser(**kwargs)
    p.add_argument("--m", default=m)
    p.add_argument("--shapes", default=shapes)
    p.add_argument("--json", default=None)
    return p


def shapes_nk(spec: str) -> List[Tuple[int, int]]:
    """'6144x4096,4096x4096' -> [(6144, 4096), (4096, 4096)]."""
    return [tuple(map(int, s.split("x"))) for s in spec.split(",")]


def ints(spec: str) -> List[int]:
    return [int(v) for v in spec.split(",")]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| (Frobenius), in fp32."""
    ref = ref.float()
    return ((y.float() - ref).norm() / ref.norm()).item()


def measure(timer, call: Callable, copies: Sequence, ref: torch.Tensor) -> Tuple[float, float]:
    """(cold kernel us of ``call(q)`` over the weight copies, ``timer.kernel_us``; error of ``call(copies[0])``)."""
    err = rel_err(call(copies[0]), ref)
    return timer.kernel_us([lambda q=q: call(q) for q in copies], Cost("probe", 0, 0)), err


def graph_us(fn: Callable, warmup: int = 5, rep: int = 20) -> float:
    """One call captured in a CUDA graph, replays timed by do_bench (L2 flushed between replays): the GPU time
    without the host's launch overhead, which dominates a few-microsecond eager call (median, us)."""
    fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return triton.testing.do_bench(g.replay, warmup=warmup, rep=rep, return_mode="median") * 1e3


def write_rows(rows: list, path: Optional[str]) -> None:
    """The result rows as indented JSON (nothing when ``path`` is None)."""
    if path:
        with open(path, "w") as f:
            json.dump(rows, f, indent=1)
