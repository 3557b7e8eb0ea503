"""Multi-process tensor-parallel runs for tests/test_tp_dist.py (gloo on CPU, NCCL on GPUs).

``launch(world_size, backend, out_dir)`` spawns ``world_size`` processes (torch.multiprocessing, a free
TCP port, a wall-clock timeout that kills them instead of hanging CI). Every rank builds the same full
modules from ``CASES`` (fixed seeds), shards them for its rank, runs them through ``ColumnParallel`` /
``RowParallel`` / ``shard_model_`` and saves the combined outputs to ``out_dir/rank{r}.pt``; a case that
raises is saved as its traceback string (the test fails with it).
"""
import contextlib
import os
import socket
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before lowbit imports its kernels

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch import nn  # noqa: E402

from lowbit.formats import Fp8Format, Int8Format, IntxFormat  # noqa: E402
from lowbit.formats.lut import CodebookFormat, NF4Format  # noqa: E402
from lowbit.nn import QuantLinear  # noqa: E402
from lowbit.nn_a8 import Float8Linear, Int8Linear  # noqa: E402
from lowbit.nn_lut import LutLinear  # noqa: E402
from lowbit.tp import COLUMN, ROW, ColumnParallel, RowParallel, shard_model_  # noqa: E402

DTYPE = torch.float16


def size(world_size: int) -> int:
    """N = K of the test layers: fp8 block shards need N / ws and K / ws multiples of 128."""
    return 128 * max(2, world_size)


def sections(world_size: int):
    """A fused "qkv" split of N (q half, k and v a quarter each)."""
    n = size(world_size)
    return (n // 2, n // 4, n // 4)


def _dense(seed: int, bias: bool = True, world_size: int = 2) -> nn.Linear:
    n = size(world_size)
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, n, generator=g) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin.to(DTYPE)


def _layer(cls, fmt, seed: int, bias: bool = True):
    """build(world_size): ``cls.from_linear`` of a seeded dense layer (the same on every rank and the test)."""
    return lambda ws: cls.from_linear(_dense(seed, bias, ws), fmt)


# name -> (build(world_size) -> the full module on the CPU, 8-bit activations (reference backend on the CPU))
CASES = {
    "intx4-asym-g64": (_layer(QuantLinear, IntxFormat(4, 64, False, "int", DTYPE), 1), False),
    "intx3-sym-g64": (_layer(QuantLinear, IntxFormat(3, 64, True, "int", DTYPE), 2, bias=False), False),
    "intx2-pc-floatzero": (_layer(QuantLinear, IntxFormat(2, None, False, "float", DTYPE), 3), False),
    "nf4-g64": (_layer(LutLinear, NF4Format(64, DTYPE), 4), False),
    "codebook3-row": (_layer(LutLinear, CodebookFormat(3, 64, "row", DTYPE, iters=3), 5), False),
    "fp8-row": (_layer(Float8Linear, Fp8Format("row"), 6), True),
    "fp8-block": (_layer(Float8Linear, Fp8Format("block"), 7), True),
    "int8": (_layer(Int8Linear, Int8Format(), 8), True),
}
MODES = (COLUMN, ROW)


def make_x(device, world_size: int) -> torch.Tensor:
    """(4, 5, K): M = 20 rows (the GEMM path; the interpreter's GEMV is slow)."""
    return torch.randn(4, 5, size(world_size), generator=torch.Generator().manual_seed(99)).to(device, DTYPE)


@contextlib.contextmanager
def backend_for(a8: bool, device: torch.device):
    """The Triton interpreter's fp32 -> fp8 cast is wrong (tests/test_a8.py): 8-bit-activation layers run
    the reference backend on the CPU; everything else runs its kernels (interpreter or GPU)."""
    old = os.environ.get("LOWBIT_BACKEND")
    if a8 and device.type == "cpu":
        os.environ["LOWBIT_BACKEND"] = "reference"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOWBIT_BACKEND", None)
        else:
            os.environ["LOWBIT_BACKEND"] = old


def build_mlp(world_size: int):
    """A Llama MLP (fused gate_up, down) quantized to intx4 g64: the shard_model_ plan's test subject."""
    from lowbit.models.llama import MLP, LlamaConfig

    cfg = LlamaConfig(name="t", vocab_size=64, hidden_size=size(world_size), intermediate_size=64 * world_size, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(10)
    mlp = MLP(cfg, DTYPE)
    for name in ("gate_up_proj", "down_proj"):
        setattr(mlp, name, QuantLinear.from_linear(getattr(mlp, name), IntxFormat(4, 64, False, "int", DTYPE)))
    return mlp


def build_llama(world_size: int):
    """A one-layer lowbit.models.llama decoder (fused qkv / gate_up, GQA), every linear intx4 g64."""
    from lowbit.api import IntxWeightOnlyConfig, quantize_
    from lowbit.models.llama import LlamaConfig, build_model

    cfg = LlamaConfig(name="t", vocab_size=256, hidden_size=size(world_size), intermediate_size=128 * world_size,
                      num_hidden_layers=1, num_attention_heads=2 * world_size, num_key_value_heads=world_size)
    return quantize_(build_model(cfg, dtype=DTYPE, seed=0), IntxWeightOnlyConfig(4, 64, scale_dtype="float16"))


def llama_tokens(device) -> torch.Tensor:
    return torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(5)).to(device)


def run_rank(rank: int, world_size: int, device: torch.device) -> dict:
    """Every case's combined tensor-parallel output on this rank (or the error's traceback)."""
    x = make_x(device, world_size)
    out = {}

    def record(name, fn):
        try:
            out[name] = fn().float().cpu()
        except Exception:  # noqa: BLE001 - saved and re-raised by the test (keeps the other ranks in step)
            out[name] = traceback.format_exc()

    for name, (build, a8) in CASES.items():
        with backend_for(a8, device):
            record(f"{name}/{COLUMN}", lambda: ColumnParallel.from_full(build(world_size).to(device))(x))
            record(f"{name}/{ROW}",
                   lambda: RowParallel.from_full(build(world_size).to(device), input_is_parallel=False)(x))
    qkv = CASES["intx4-asym-g64"][0]
    record("intx4-asym-g64/qkv-sections", lambda: ColumnParallel.from_full(qkv(world_size).to(device),
                                                                      sections=sections(world_size))(x))
    record("mlp/shard_model_", lambda: shard_model_(build_mlp(world_size).to(device), rank, world_size)(x))
    record("llama/shard_model_",
           lambda: shard_model_(build_llama(world_size).to(device), rank, world_size)(llama_tokens(device)))
    from lowbit import dispatch  # which backend ran the intx / LUT layers (the test checks it is not the reference)
    out["_backend"] = dispatch.select(dispatch.WxA16Problem(20, x.shape[-1] // world_size, x.shape[-1], 4, 64,
                                                            DTYPE, device.type))
    return out


def _worker(rank: int, world_size: int, backend: str, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=120))
    try:
        torch.save(run_rank(rank, world_size, device), Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world_size: int, backend: str, out_dir, timeout_s: float = 300.0) -> float:
    """Run ``_worker`` on ``world_size`` spawned processes; kill them and raise TimeoutError past
    ``timeout_s``. Returns the wall time in seconds."""
    t0 = time.monotonic()
    ctx = mp.start_processes(_worker, args=(world_size, backend, free_port(), str(out_dir)), nprocs=world_size,
                             join=False, start_method="spawn")
    while not ctx.join(timeout=1.0):
        if time.monotonic() - t0 > timeout_s:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"tensor-parallel workers ({backend}, world size {world_size}) still running after "
                               f"{timeout_s:.0f} s; killed")
    return time.monotonic() - t0
