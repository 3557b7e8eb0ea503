"""GPU-only checks (skipped without CUDA): CUDA graphs, inductor, bf16 at real model shapes."""
import pytest
import torch

import lowbit
from lowbit import IntxFormat, ops

from helpers import assert_close_matmul, gpu_only, reference_linear

pytestmark = gpu_only


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("m", [1, 4, 16, 127, 128, 129, 512])
def test_llama_shape(dtype, bits, m):
    n, k = 6144 // 4, 4096  # llama3-8b qkv, N scaled down
    w = torch.randn(n, k, device="cuda") * 0.02
    qw = IntxFormat(bits, 128, False, "int", dtype).quantize(w)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    assert_close_matmul(ops.intx_linear(x, qw), reference_linear(x, qw), x, qw.dequantize(), dtype)


@pytest.mark.parametrize("m", [1, 8, 64, 256])
def test_cuda_graph_replay_matches_eager(m):
    qw = IntxFormat(4, 128).quantize(torch.randn(1024, 2048, device="cuda") * 0.02)
    x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
    eager = ops.intx_linear(x, qw)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ops.intx_linear(x, qw)  # warm up (compile) outside the capture
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = ops.intx_linear(x, qw)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ops.intx_linear(x, qw))
    assert not torch.equal(out, eager)


def test_inductor_fullgraph_and_reduce_overhead():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(1024, 2048), torch.nn.SiLU(), torch.nn.Linear(2048, 512))
    model = lowbit.quantize_(model.cuda().bfloat16(), lowbit.Int4WeightOnlyConfig())
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):
        out = compiled(x)
    torch.testing.assert_close(out, eager)
