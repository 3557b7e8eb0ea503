"""Shared test helpers: devices/dtypes, the fp32 oracle and a K-scaled tolerance."""
import math

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# The interpreter's bf16 tl.dot is wrong (known Triton issue): bf16 is tested on the GPU only.
KERNEL_DTYPES = [torch.float16] + ([torch.bfloat16] if HAS_CUDA else [])
gpu_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def reference_linear(x, weight, bias=None):
    """fp32 dequantize-then-matmul."""
    y = x.float() @ weight.dequantize(torch.float32).t()
    if bias is not None:
        y = y + bias.float()
    return y


def assert_close_matmul(y, ref, x, w_dense, dtype):
    """Per-element bound eps*(|ref| + 4 sqrt(K) rms(x) rms(w)): tight enough to catch an off-by-one code."""
    eps = torch.finfo(dtype).eps
    k = x.shape[-1]
    scale = 4 * math.sqrt(k) * x.float().pow(2).mean().sqrt() * w_dense.float().pow(2).mean().sqrt()
    tol = eps * (ref.abs() + scale)
    err = (y.float() - ref).abs()
    bad = ~(err <= tol)
    assert not bad.any(), (
        f"{int(bad.sum())} of {err.numel()} elements off; max err {err.max().item():.4g}, "
        f"tol at worst {tol.flatten()[err.flatten().argmax()].item():.4g}"
    )
