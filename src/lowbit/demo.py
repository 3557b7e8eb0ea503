"""``lowbit run``: quantize a Llama-style stack in every weight-only format and report what it buys.

On any machine: bytes per weight (measured from the packed tensors), model size, and output error
vs the bf16 model (SQNR in dB, relative error). On a GPU also the eager forward latency at
M=1 and M=64 against bf16 (``lowbit bench`` is the rigorous, cold-cache measurement).
"""
from __future__ import annotations

import copy
import math
import time
from typing import List, Optional

import torch
from torch import nn

from .api import Int4WeightOnlyConfig, IntxWeightOnlyConfig, quantize_


class LlamaStyleBlock(nn.Module):
    """The linear layers of a Llama decoder layer (attention math omitted: it has no weights)."""

    def __init__(self, hidden: int, inter: int, kv: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(hidden, hidden + 2 * kv, bias=False)
        self.o = nn.Linear(hidden, hidden, bias=False)
        self.gate_up = nn.Linear(hidden, 2 * inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=False)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.o(self.qkv(x)[..., : self.hidden])
        g, u = self.gate_up(h).chunk(2, dim=-1)
        return h + self.down(nn.functional.silu(g) * u)


def llama_style_model(hidden: int, layers: int) -> nn.Module:
    inter = int(hidden * 3.5) // 128 * 128
    return nn.Sequential(*[LlamaStyleBlock(hidden, inter, hidden // 4) for _ in range(layers)])


def _sqnr_db(ref: torch.Tensor, y: torch.Tensor) -> float:
    noise = (ref - y).float().pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.float().pow(2).sum().item() / noise)


def _nbytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def _eager_us(model: nn.Module, x: torch.Tensor) -> Optional[float]:
    if x.device.type != "cuda":
        return None
    import triton.testing

    return triton.testing.do_bench(lambda: model(x), return_mode="median") * 1e3


def _print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="right")
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print(title)
        for r in [header] + rows:
            print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


CONFIGS = [
    ("W8 g128", IntxWeightOnlyConfig(bits=8, group_size=128)),
    ("W6 g128", IntxWeightOnlyConfig(bits=6, group_size=128)),
    ("W5 g128", IntxWeightOnlyConfig(bits=5, group_size=128)),
    ("W4 g128 (Int4WeightOnly)", Int4WeightOnlyConfig(group_size=128)),
    ("W4 g32 sym", IntxWeightOnlyConfig(bits=4, group_size=32, symmetric=True)),
    ("W3 g64", IntxWeightOnlyConfig(bits=3, group_size=64)),
    ("W2 g32", IntxWeightOnlyConfig(bits=2, group_size=32)),
]


def run_demo(device: Optional[str] = None, hidden: int = 1024, layers: int = 2) -> int:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    dense = llama_style_model(hidden, layers)
    for p in dense.parameters():
        nn.init.normal_(p, std=0.5 / math.sqrt(p.shape[-1]))
    dense = dense.to(device, torch.bfloat16)
    n_weights = sum(p.numel() for p in dense.parameters())
    x1 = torch.randn(1, hidden, device=device, dtype=torch.bfloat16)
    x64 = torch.randn(64, hidden, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        ref = dense(x64).float()
        base_bytes = _nbytes(dense)
        t1, t64 = _eager_us(dense, x1), _eager_us(dense, x64)
        rows = [["bf16", "16.00", f"{base_bytes / 2**20:.1f}", "1.00x", "inf", "0", *_times(t1, t64)]]
        for name, cfg in CONFIGS:
            t0 = time.perf_counter()
            q = quantize_(copy.deepcopy(dense), cfg)
            y = q(x64).float()
            nb = _nbytes(q)
            rows.append([
                name, f"{8 * nb / n_weights:.2f}", f"{nb / 2**20:.1f}", f"{base_bytes / nb:.2f}x",
                f"{_sqnr_db(ref, y):.1f}", f"{((y - ref).norm() / ref.norm()).item():.3g}",
                *_times(_eager_us(q, x1), _eager_us(q, x64)),
            ])
            del q
    title = (f"lowbit run: Llama-style model, hidden={hidden}, {layers} layers, {n_weights / 1e6:.1f}M weights, "
             f"device={device}")
    _print_table(title, ["format", "bits/weight", "MiB", "smaller", "SQNR dB", "rel err",
                         "eager M=1 µs", "eager M=64 µs"], rows)
    if device != "cuda":
        print("No GPU here: sizes and errors are real; speed needs a CUDA GPU (`lowbit bench` there).")
    return 0


def _times(t1: Optional[float], t64: Optional[float]) -> List[str]:
    return ["-" if t is None else f"{t:.1f}" for t in (t1, t64)]
