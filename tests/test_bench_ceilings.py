"""The streaming read kernel reads every element exactly once (Triton interpreter on CPU)."""
import os

import pytest
import torch

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or the Triton interpreter")


@pytest.mark.parametrize("block,steps,warps", [(1024, 1, 4), (1024, 4, 4), (2048, 8, 8)])
def test_read_kernel_sums_each_chunk_once(block, steps, warps):
    import triton

    from lowbit.bench.ceilings import _read

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n = 3 * block * steps + 123  # a ragged tail exercises the mask
    x = torch.randint(-1000, 1000, (n,), dtype=torch.int32, device=dev)
    nprog = triton.cdiv(n, block * steps)
    out = torch.full((nprog,), 7, dtype=torch.int32, device=dev)
    _read(x, out, block, steps, warps)
    want = torch.stack([c.sum() for c in x.split(block * steps)]).to(torch.int32)
    assert torch.equal(out.cpu(), want.cpu())


def test_fake_ceilings_cover_half_mb_to_1gb():
    from lowbit.bench.ceilings import STREAM_SIZES, fake_ceilings

    c = fake_ceilings(["bf16", "int8"])
    assert STREAM_SIZES[0] == 1 << 19 and STREAM_SIZES[-1] == 1 << 30
    assert set(c.peaks) == {"bf16", "int8"} and c.detail["source"] == "fake"


def test_measure_ceilings_takes_the_faster_of_read_and_copy_per_size():
    from lowbit.bench.ceilings import measure_ceilings
    from lowbit.bench.timing import FakeTimer

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [1 << 15, 1 << 16]
    timer = FakeTimer(factors={"copy": 0.5})  # copy modelled twice as fast as the read kernel
    c = measure_ceilings(timer, [], sizes, dev)
    assert c.stream_bytes == sizes and c.peaks == {}
    for b, t in zip(sizes, c.stream_us):
        assert t == pytest.approx((2.0 + b / 3e12 * 1e6) * 0.5)
    stream = c.detail["stream"]
    assert stream["read_us"][0] == pytest.approx(2.0 + sizes[0] / 3e12 * 1e6) and not stream["errors"]
    # three read configs + one copy per size, two copies each (FakeTimer.copies_needed)
    assert timer.timed == ["read", "read", "read", "copy"] * 2 and set(timer.copies) == {2}
