"""Every W4 format through its module (shipped-table dispatch) vs the fp32 oracle of its own weight, at the
M buckets whose table entries changed in stop 24 (folded-scale tiles): catches a config that is fast but
wrong for a format the probe did not run (symmetric int4, group 64, NF4, FP4).

    PYTHONPATH=src python scripts/table_check.py      # GPU; prints one line per point, WRONG when > 6e-3
"""
import torch
from torch import nn

from lowbit import IntxFormat
from lowbit.formats.lut import Fp4Format, NF4Format
from lowbit.nn import QuantLinear
from lowbit.nn_lut import LutLinear

FORMATS = {"int4 g128 asym": lambda: IntxFormat(4, 128, False, "int", torch.bfloat16),
           "int4 g128 sym": lambda: IntxFormat(4, 128, True, "int", torch.bfloat16),
           "int4 g64 asym": lambda: IntxFormat(4, 64, False, "int", torch.bfloat16),
           "nf4 g64": lambda: NF4Format(64), "fp4 g32": lambda: Fp4Format(32)}
bad = 0
for n, k in ((28672, 4096), (4096, 14336), (8192, 8192)):
    lin = nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    for name, make in FORMATS.items():
        fmt = make()
        mod = (QuantLinear if isinstance(fmt, IntxFormat) else LutLinear).from_linear(lin, fmt)
        w = mod.weight.dequantize(torch.float32)
        for m in (128, 256, 512, 1024, 2048):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.float() @ w.t()
            err = ((mod(x).float() - ref).norm() / ref.norm()).item()
            bad += err > 6e-3
            print(f"{name:15s} {n}x{k} M={m:5d}: rel err {err:.2e}{'  <-- WRONG' if err > 6e-3 else ''}", flush=True)
print("wrong points:", bad)
