"""Tensor parallelism under torch.distributed: 2 spawned processes (gloo on CPU; NCCL when 2+ GPUs exist)
run column- and row-parallel shards of intx, LUT, fp8 and int8 layers, a fused-qkv column shard and a
``shard_model_``-ed Llama MLP; the combined outputs must equal the unsharded module's output.

One launch per backend (module fixture) runs every case; each test checks one case's saved output.
"""
import os

import pytest
import torch

from lowbit.tp import COLUMN, ROW, shard_linear
from tp_worker import CASES, MODES, backend_for, build_llama, build_mlp, launch, llama_tokens, make_x, sections

# 2 by default (CPU CI); scripts/gpu_tp.sh sets the GPU count for NCCL
WORLD = int(os.environ.get("LOWBIT_TP_WORLD", "2"))
BACKENDS = ["gloo", pytest.param("nccl", marks=pytest.mark.skipif(
    torch.cuda.device_count() < WORLD, reason=f"NCCL tensor parallelism needs {WORLD} GPUs"))]


@pytest.fixture(scope="module", params=BACKENDS)
def tp(request, tmp_path_factory):
    """(backend, device of the unsharded reference, each rank's saved outputs)."""
    backend = request.param
    out = tmp_path_factory.mktemp(f"tp_{backend}")
    launch(WORLD, backend, out, timeout_s=300)
    device = torch.device("cuda:0" if backend == "nccl" else "cpu")
    return backend, device, [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _combined(results, key):
    got = [r[key] for r in results]
    for g in got:
        if isinstance(g, str):
            pytest.fail(f"{key} raised on a rank:\n{g}")
    for g in got[1:]:  # all-gather / all-reduce leave every rank with the same tensor
        assert torch.equal(g, got[0]), key
    return got[0]


def _assert_close(got, want, dtype=torch.float16):
    """Within a few output roundings: eps * (|want| + 4 rms(want)) per element, times 4 (two fp16 results
    plus the fp16 all-reduce of partial sums)."""
    want = want.float()
    tol = 4 * torch.finfo(dtype).eps * (want.abs() + 4 * want.pow(2).mean().sqrt())
    err = (got.to(want.device) - want).abs()
    assert got.shape == want.shape
    assert bool((err <= tol).all()), f"max err {err.max().item():.4g} vs tol {tol.min().item():.4g}..; " \
                                     f"{int((err > tol).sum())} of {err.numel()} off"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CASES))
def test_sharded_layer_matches_unsharded(tp, name, mode):
    _, device, results = tp
    got = _combined(results, f"{name}/{mode}")
    build, a8 = CASES[name]
    full = build(WORLD).to(device)
    x = make_x(device, WORLD)
    with backend_for(a8, device):
        want = full(x)
        if a8 and mode == ROW and getattr(full, "block", 0) == 0:
            # per-token activation scales: each rank quantizes its own slice of x (as vLLM's row-parallel
            # fp8 layers do), so the exact answer is the sum of the shards' outputs, not the unsharded op
            k = full.in_features // WORLD
            want = sum(shard_linear(full, r, WORLD, ROW)(x[..., r * k:(r + 1) * k]).float() for r in range(WORLD))
            unsharded = full(x).float()
            assert ((got.to(device) - unsharded).norm() / unsharded.norm()).item() < 0.06  # fp8/int8 act error
    _assert_close(got, want)


def test_fused_qkv_sections_gather_in_order(tp):
    _, device, results = tp
    got = _combined(results, "intx4-asym-g64/qkv-sections")
    assert sum(sections(WORLD)) == got.shape[-1]
    _assert_close(got, CASES["intx4-asym-g64"][0](WORLD).to(device)(make_x(device, WORLD)))


def test_shard_model_llama_mlp(tp):
    _, device, results = tp
    got = _combined(results, "mlp/shard_model_")
    _assert_close(got, build_mlp(WORLD).to(device)(make_x(device, WORLD)))


def test_shard_model_llama_decoder(tp):
    """A whole decoder (attention with per-rank heads, MLP, replicated embeddings / lm_head): same logits."""
    _, device, results = tp
    got = _combined(results, "llama/shard_model_")
    want = build_llama(WORLD).to(device)(llama_tokens(device))
    _assert_close(got, want)


def test_comparison_catches_a_wrong_combination(tp):
    """The tolerance is tight enough: rank outputs gathered in the wrong order fail it."""
    _, device, results = tp
    got = _combined(results, f"intx4-asym-g64/{COLUMN}")
    swapped = torch.cat(got.chunk(WORLD, dim=-1)[::-1], dim=-1)
    with pytest.raises(AssertionError):
        _assert_close(swapped, CASES["intx4-asym-g64"][0](WORLD).to(device)(make_x(device, WORLD)))


def test_kernels_ran_not_the_reference(tp):
    """intx / LUT layers ran Triton kernels (the interpreter on the CPU, when TRITON_INTERPRET=1 is set)."""
    backend, device, results = tp
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU without TRITON_INTERPRET=1: the reference backend runs")
    assert all(r["_backend"].startswith("triton_") for r in results), [r["_backend"] for r in results]
