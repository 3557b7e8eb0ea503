"""Where does eager time go? One W4 linear at M=1: QuantLinear (recorded launch) vs custom op vs launcher vs
raw Triton launch vs cuBLAS vs tinygemm (host time per call, back to back)."""
import time

import torch

from lowbit import IntxFormat, ops
from lowbit.formats.intx import symmetric_zero
from lowbit.kernels.gemv import gemv_wxa16
from lowbit.kernels.launch import output_buffers


def host_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t) / n * 1e6


qw = IntxFormat(4, 128).quantize(torch.randn(4096, 4096, device="cuda") * 0.02)
x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
args = (x, qw.qweight, qw.scales, qw.zeros, None, 4, 128, 4096)
print(f"F.linear bf16           {host_us(lambda: torch.nn.functional.linear(x, w)):7.1f} us/call (host)")
print(f"torch.ops.lowbit (op)   {host_us(lambda: torch.ops.lowbit.linear_wxa16(*args)):7.1f}")
print(f"ops._run_wxa16 (no op)  {host_us(lambda: ops._run_wxa16(x, *args[1:])):7.1f}")
print(f"gemv_wxa16 launcher     {host_us(lambda: gemv_wxa16(x, qw.qweight, qw.scales, qw.zeros, None, 4, 128, symmetric_zero(4), 4096)):7.1f}")
print(f"output_buffers          {host_us(lambda: output_buffers(1, 4096, 8, 64, x)):7.1f}")
print(f"torch.empty             {host_us(lambda: torch.empty((1, 4096), device='cuda', dtype=torch.bfloat16)):7.1f}")
from lowbit import dispatch
p = dispatch.WxA16Problem(1, 4096, 4096, 4, 128, torch.bfloat16, "cuda")
print(f"dispatch.select         {host_us(lambda: dispatch.select(p)):7.1f}")
print(f"_validate_wxa16         {host_us(lambda: ops._validate_wxa16(*args)):7.1f}")

from lowbit import QuantLinear
mod = QuantLinear(qw)
mod(x)
(plan,) = mod.eager_plans().plans.values()
print(f"QuantLinear (plan)      {host_us(lambda: mod(x)):7.1f}")
print(f"recorded launch only    {host_us(lambda: plan[1](x)):7.1f}")
from lowbit.bench.cases_wxa16 import tinygemm_nibbles, tinygemm_scales_and_zeros, _inner_k_tiles
wp = torch.ops.aten._convert_weight_to_int4pack(tinygemm_nibbles(qw.codes()[:, :4096]), _inner_k_tiles(4096))
sz = tinygemm_scales_and_zeros(qw)
print(f"tinygemm                {host_us(lambda: torch.ops.aten._weight_int4pack_mm(x, wp, 128, sz)):7.1f}")
