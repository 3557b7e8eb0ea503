"""Run one lowbit linear a few times (for ncu), in the word order QuantLinear runs (the mma word order
where it applies): python scripts/profile_one.py N K M [bits]"""
import sys

import torch

from lowbit import IntxFormat, ops
from lowbit.formats.intx import runs_mma_words, runtime_words

n, k, m = (int(v) for v in sys.argv[1:4])
bits = int(sys.argv[4]) if len(sys.argv) > 4 else 4
qw = IntxFormat(bits, 128).quantize(torch.randn(n, k, device="cuda") * 0.02)
qweight, k_order = runtime_words(qw.qweight, runs_mma_words(qw), bits)
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    ops.linear_wxa16(x, qweight, qw.scales, qw.zeros, None, bits, 128, k, k_order)
torch.cuda.synchronize()
