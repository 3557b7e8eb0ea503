"""Run one lowbit linear a few times (for ncu): python scripts/profile_one.py N K M [bits]"""
import sys

import torch

from lowbit import IntxFormat, ops

n, k, m = (int(v) for v in sys.argv[1:4])
bits = int(sys.argv[4]) if len(sys.argv) > 4 else 4
qw = IntxFormat(bits, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    ops.intx_linear(x, qw)
torch.cuda.synchronize()
