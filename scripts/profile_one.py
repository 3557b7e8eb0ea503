"""Run one lowbit linear a few times (for ncu), as the modules run it (QuantLinear / LutLinear: the mma word
order where it applies, the eager launch path):
    python scripts/profile_one.py N K M [bits] [format] [group]
format: int (default, asymmetric intX), nf4 (lookup table), sparse24 (2:4-sparse int4, magnitude-pruned) or fp8
(W8A8-fp8 row-wise, activation quantization included);
group: 128 by default."""
import sys

import torch

from lowbit import IntxFormat, QuantLinear
from lowbit.formats.lut import NF4Format
from lowbit.formats.fp8 import Fp8Format
from lowbit.formats.sparse24 import Sparse24Format
from lowbit.nn_a8 import Float8Linear
from lowbit.nn_lut import LutLinear
from lowbit.nn_sparse24 import Sparse24Linear

n, k, m = (int(v) for v in sys.argv[1:4])
bits = int(sys.argv[4]) if len(sys.argv) > 4 else 4
fmt = sys.argv[5] if len(sys.argv) > 5 else "int"
group = int(sys.argv[6]) if len(sys.argv) > 6 else 128
w = torch.randn(n, k, device="cuda") * 0.02
if fmt == "nf4":
    mod = LutLinear(NF4Format(group).quantize(w))
elif fmt == "fp8":
    mod = Float8Linear(Fp8Format().quantize(w))
elif fmt == "sparse24":
    mod = Sparse24Linear(Sparse24Format(group).quantize(w))
else:
    mod = QuantLinear(IntxFormat(bits, group).quantize(w))
x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    mod(x)
torch.cuda.synchronize()
