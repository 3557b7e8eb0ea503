"""QuantLinear's eager fast path (``kernels.launch.EagerPlans``): the first call per input signature records
its one kernel launch, later calls replay it with the new x -- same results as the full op, a fresh output
per call, no stale tensors after the module's buffers change."""
import copy

import pytest
import torch

from helpers import DEVICE, assert_close_matmul, gpu_only, reference_linear
from lowbit import IntxFormat, QuantLinear, ops
from lowbit.kernels import launch


def _module(n=96, k=256, bits=4, group=64, bias=True, dtype=torch.float16, sym=False):
    torch.manual_seed(0)
    w = IntxFormat(bits, group, symmetric=sym).quantize(torch.randn(n, k) * 0.05).to(DEVICE)
    b = (torch.randn(n) * 0.1).to(DEVICE, dtype) if bias else None
    return QuantLinear(w, b).to(DEVICE)


def _op(module, x):
    """The full op, no plan."""
    return ops.linear_wxa16_eager(x, module.qweight, module.scales, module.zeros, module.bias, module.bits,
                                  module.group_size or 0, module.in_features, module.k_order)


def _check(module, x, dtype):
    y = module(x)
    ref = reference_linear(x.reshape(-1, x.shape[-1]), module.weight, module.bias).reshape(*x.shape[:-1], -1)
    assert y.shape == (*x.shape[:-1], module.out_features) and y.dtype == dtype
    assert_close_matmul(y, ref, x, module.weight.dequantize(torch.float32), dtype)
    return y


@pytest.mark.parametrize("m, lead", [(1, ()), (3, ()), (16, ()), (6, (2,))])
@pytest.mark.parametrize("bits, sym", [(4, False), (3, True)])
def test_replay_matches_the_full_op(m, lead, bits, sym):
    dtype = torch.float16
    mod = _module(bits=bits, sym=sym)
    shape = (*lead, m // (lead[0] if lead else 1), mod.in_features)
    x0 = torch.randn(shape, device=DEVICE, dtype=dtype)
    _check(mod, x0, dtype)  # records
    assert len(mod.eager_plans().plans) == 1
    for seed in range(2):  # replays: new values each time, results of *this* x, a fresh output each call
        torch.manual_seed(seed + 1)
        x = torch.randn(shape, device=DEVICE, dtype=dtype)
        y1 = _check(mod, x, dtype)
        y2 = mod(x)
        assert y1.data_ptr() != y2.data_ptr()
        assert torch.equal(y1, _op(mod, x)) and torch.equal(y1, y2)
    assert len(mod.eager_plans().plans) == 1


def test_split_k_workspace_is_reused_in_stream_order():
    """A split-K launch (M = 1 GEMV) replays with the workspace of its recorded call and the shared arrival
    counters; the x and Y slots are the only ones filled per call."""
    dtype = torch.float16
    mod = _module(n=64, k=1024, group=128, bias=False)
    x = torch.randn(1, 1024, device=DEVICE, dtype=dtype)
    mod(x)
    (plan,) = mod.eager_plans().plans.values()
    rec = plan[1]
    assert rec.param("SPLIT_K") > 1, "expected a split-K config at M = 1, K = 1024"
    assert rec.param("ws_ptr") is not None and rec.param("cnt_ptr") is not None  # kept from the recorded call
    assert all(rec.vals[i] is None for i in rec.x_slots + rec.y_slots)
    for _ in range(3):
        x = torch.randn(1, 1024, device=DEVICE, dtype=dtype)
        assert torch.equal(mod(x), _op(mod, x))


def test_signatures_are_separate():
    """Another M, a misaligned view (Triton specializes 16-byte alignment) and another dtype each get
    their own launch."""
    mod = _module(bias=False)
    k = mod.in_features
    base = torch.randn(4 * k + 8, device=DEVICE, dtype=torch.float16)
    aligned = base[: 2 * k].view(2, k)
    shifted = base[1: 2 * k + 1].view(2, k)  # 2-byte offset
    for x in (aligned, shifted, base[: 4 * k].view(4, k), aligned, shifted):
        _check(mod, x, torch.float16)
    assert len(mod.eager_plans().plans) == 3


def test_non_contiguous_3d_input_runs_the_full_op():
    mod = _module(bias=False)
    x = torch.randn(mod.in_features, 3, 2, device=DEVICE, dtype=torch.float16).permute(2, 1, 0)
    for _ in range(2):
        _check(mod, x, torch.float16)
    assert not mod.eager_plans().plans  # its reshape copies: no launch reads x itself


def test_buffer_changes_invalidate_plans():
    dtype = torch.float16
    mod = _module()
    x = torch.randn(2, mod.in_features, device=DEVICE, dtype=dtype)
    mod(x)
    other = _module(bias=True)
    other.bias.mul_(-3)  # in place: the plan keeps reading the live tensor
    mod.bias = other.bias  # a new object: the old plan must not be used
    mod.qweight = other.qweight
    mod.scales, mod.zeros = other.scales, other.zeros
    assert torch.equal(mod(x), _op(other, x))
    mod.bias.add_(1.0)  # in-place edits are seen by the recorded launch
    assert torch.equal(mod(x), _op(other, x))
    mod.to(DEVICE)  # _apply drops every plan (they hold the old tensors)
    assert not mod.eager_plans().plans
    assert torch.equal(mod(x), _op(other, x))


def test_deepcopy_and_limit():
    mod = _module(bias=False)
    mod(torch.randn(1, mod.in_features, device=DEVICE, dtype=torch.float16))
    twin = copy.deepcopy(mod)
    assert "_eager_plans" not in twin.__dict__
    x = torch.randn(5, mod.in_features, device=DEVICE, dtype=torch.float16)
    assert torch.equal(twin(x), mod(x))
    with pytest.raises(ValueError, match="mma word order"):
        QuantLinear(IntxFormat(3, 64).quantize(torch.randn(8, 128)), k_order=1)  # 3 bits: natural order only
    mod.eager_plans().limit = 2
    for m in (2, 3, 4, 6):
        _check(mod, torch.randn(m, mod.in_features, device=DEVICE, dtype=torch.float16), torch.float16)
    assert len(mod.eager_plans().plans) == 2


def test_no_plan_without_a_single_replayable_launch():
    """The reference backend launches nothing: the full op runs every call."""
    mod = _module(bias=False)
    x = torch.randn(2, mod.in_features, device=DEVICE, dtype=torch.float32)  # fp32 x: the reference backend
    for _ in range(2):
        _check(mod, x, torch.float32)
    assert not mod.eager_plans().plans


@gpu_only
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_replay_bitwise_and_cuda_graph(m, dtype):
    """On the GPU the replay is the compiled kernel's runner: bitwise the full op's result, and capturable."""
    mod = _module(n=4096, k=4096, group=128, dtype=dtype)
    x = torch.randn(m, 4096, device="cuda", dtype=dtype)
    mod(x)
    # a shipped config with TMA (descriptors hold x's address: 4096x4096 at M = 64 on the H200) keeps the full op
    assert len(mod.eager_plans().plans) == 1 or m > 16
    x2 = torch.randn_like(x)
    assert torch.equal(mod(x2), _op(mod, x2))
    static_x = x2.clone()
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        mod(static_x)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(graph):
        static_y = mod(static_x)
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, _op(mod, x))


def test_recording_nests():
    """An inner recording (the module's) keeps its launches; the outer one sees only its own."""
    mod = _module(bias=False)
    x = torch.randn(1, mod.in_features, device=DEVICE, dtype=torch.float16)
    with launch.recording() as outer:
        mod(x)
        assert not outer and len(mod.eager_plans().plans) == 1
        _op(mod, x)
    assert len(outer) == 1 and isinstance(outer[0], launch.RecordedLaunch)


@pytest.mark.parametrize("make", ["nf4", "cb4"])
def test_lut_linear_replays(make):
    """LutLinear takes the same path: its table is one of the held weights."""
    from lowbit.formats.lut import CodebookFormat, NF4Format
    from lowbit.nn_lut import LutLinear

    torch.manual_seed(0)
    fmt = NF4Format(64) if make == "nf4" else CodebookFormat(4, 64, granularity="row")
    mod = LutLinear(fmt.quantize(torch.randn(96, 256) * 0.05)).to(DEVICE)
    x = torch.randn(3, 256, device=DEVICE, dtype=torch.float16)
    full = lambda x: lut_op(mod, x)  # noqa: E731
    assert torch.equal(mod(x), full(x))
    assert len(mod.eager_plans().plans) == 1
    x2 = torch.randn_like(x)
    y = mod(x2)
    assert torch.equal(y, full(x2))
    ref = reference_linear(x2, mod.weight)
    assert_close_matmul(y, ref, x2, mod.weight.dequantize(torch.float32), torch.float16)
    mod.table = mod.table.clone()  # a new table object: the recorded launch is not used
    assert torch.equal(mod(x2), y)
    assert len(mod.eager_plans().plans) == 1  # re-recorded under the same signature


def lut_op(mod, x):
    from lowbit.ops_lut import linear_luta16_eager
    return linear_luta16_eager(x, mod.qweight, mod.scales, mod.table, mod.bias, mod.bits, mod.group_size or 0,
                               mod.in_features, mod.k_order)
