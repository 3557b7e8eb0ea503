"""scaled_mm_tma: the large-M W8A8 GEMM on Hopper, Y = (Xq Wq^T) * sx[:, None] * sw[None, :] (+ bias).

A persistent kernel (one program per SM; the programs walk the output tiles in grouped order)
whose operand tiles come through the tensor-memory accelerator: ``TensorDescriptor`` s over
Xq (M, K) and Wq (N, K), both K-contiguous fp8 e4m3 or int8, so both wgmma operands are K-major
(what fp8 / int8 wgmma needs). Triton pipelines the TMA loads ``num_stages`` deep across the
K loop and, with ``tl.range(..., flatten=True)``, across tile boundaries, so the epilogue of one
tile overlaps the first loads of the next. (Triton 3.6's Hopper warp specialization of the K loop,
``tl.range(..., warp_specialize=True)``, compiles to producer / consumer groups with setmaxnreg, but
its kernels hung on the H200 -- tests and sweep cut by their timeouts -- so it is not used.) Accumulation: fp32 (fp8) or exact int32 (int8); the
per-token scale sx (M,) fp32 and per-channel scale sw (N,) fp32 are applied once in the epilogue,
then the bias, then a masked store of Y (M, N) row-major (ragged M / N tails: the TMA pads
out-of-bounds rows and the K tail with zeros).

Fp8 128 x 128 block scales (``SCALE_BLOCK``) are supported when a ``TmaConfig`` asks for them (CPU-tested,
not measured on a GPU yet; the default dispatch keeps them on the pointer kernel).

Requirements (``tma_applies``): row-wise scales by default, K * 1 byte and the base pointers 16-byte
aligned (K % 16 == 0), M > 64 (below, the swap-AB tiles of ``scaled_mm`` win), an sm_90+ GPU or the
Triton interpreter. Everything else goes to ``kernels/scaled_mm.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .epilogue import grouped_tile_ids
from .launch import TensorDescriptor, tma_rows_ok


@dataclass(frozen=True)
class TmaConfig:
    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3


@triton.jit
def scaled_mm_tma_kernel(x_desc, w_desc, sx_ptr, sw_ptr, b_ptr, y_ptr, M, N, K, stride_ym, stride_sxm, stride_swn,
                         HAS_BIAS: tl.constexpr, ACC_INT: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         GROUP_M: tl.constexpr, SCALE_BLOCK: tl.constexpr = 0):
    """Program p of P computes tiles p, p + P, ... (grouped order, ``epilogue.grouped_tile_ids``).
    SCALE_BLOCK 0: row-wise scales, sx (M,) and sw (N,) in the epilogue. SCALE_BLOCK B (fp8, BLOCK_K | B):
    sx (M, ceil(K/B)) row stride stride_sxm, sw (ceil(N/B), ceil(K/B)) row stride stride_swn; each K step's
    partial product (a fresh fp32 accumulator) is scaled by sx[m, kb] sw[n // B, kb] and added."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    ACC_TY: tl.constexpr = tl.int32 if ACC_INT else tl.float32
    for tile in tl.range(tl.program_id(0), num_m * num_n, tl.num_programs(0), flatten=True):
        pid_m, pid_n = grouped_tile_ids(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_TY)
        for kt in range(k_tiles):
            x = x_desc.load([pid_m * BLOCK_M, kt * BLOCK_K])
            w = w_desc.load([pid_n * BLOCK_N, kt * BLOCK_K])
            if SCALE_BLOCK == 0:
                acc = tl.dot(x, w.T, acc, out_dtype=ACC_TY)
            else:
                kb = (kt * BLOCK_K) // SCALE_BLOCK
                rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
                cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
                fx = tl.load(sx_ptr + rows * stride_sxm + kb, mask=rows < M, other=0.0)
                fw = tl.load(sw_ptr + (cols // SCALE_BLOCK) * stride_swn + kb, mask=cols < N, other=0.0)
                acc += tl.dot(x, w.T, out_dtype=tl.float32) * fx[:, None] * fw[None, :]
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        if SCALE_BLOCK == 0:
            sx = tl.load(sx_ptr + offs_m, mask=mask_m, other=0.0)
            sw = tl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)
            out = acc.to(tl.float32) * sx[:, None] * sw[None, :]
        else:
            out = acc
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(y_ptr.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])


# Candidates for the GPU sweep (scripts/a8_sweep.py); all compile to QGMMA / IGMMA without spills on
# sm_90 (scripts/compile_check_a8.py --tma).
TMA_CANDIDATES = (
    TmaConfig(128, 256, 128, 8, 8, 3),
    TmaConfig(128, 256, 128, 8, 8, 4),
    TmaConfig(128, 256, 128, 16, 8, 3),
    TmaConfig(128, 128, 128, 8, 8, 4),
    TmaConfig(128, 128, 128, 8, 4, 4),
    TmaConfig(128, 256, 64, 8, 8, 4),
    TmaConfig(256, 128, 128, 8, 8, 3),
    TmaConfig(64, 256, 128, 8, 4, 4),
    TmaConfig(64, 128, 128, 8, 4, 4),
    # BLOCK_K = 256: Triton 3.6 does not keep int8 wgmma in flight across K steps (wait 0 after every
    # step, where fp8 waits for all but one), so a longer step halves the bubbles (<= 227 KiB smem)
    TmaConfig(128, 256, 256, 8, 8, 2),
    TmaConfig(128, 128, 256, 8, 4, 3),
)


def tma_operands_ok(k: int, xq: torch.Tensor, wq: torch.Tensor) -> bool:
    """TMA descriptors over the 8-bit Xq (M, K) and Wq (N, K): K % 16 == 0 (16-byte rows) and ``tma_rows_ok``."""
    return k % 16 == 0 and tma_rows_ok(xq, wq)


def tma_applies(m: int, k: int, xq: torch.Tensor, wq: torch.Tensor, block: Optional[int],
                allow_block: bool = False) -> bool:
    """True when the persistent TMA kernel may run this problem (see the module docstring). Block scales
    (``allow_block``, fp8 128 x 128 blocks) run only when a ``TmaConfig`` asks for them: CPU-tested, not
    yet measured against the pointer kernel on a GPU."""
    if not tma_operands_ok(k, xq, wq):
        return False
    if block is not None and not (allow_block and block % 16 == 0):
        return False
    return tma_problem_ok(m, k, xq.device)


def tma_problem_ok(m: int, k: int, device: torch.device) -> bool:
    """The shape / device half of ``tma_applies`` (for operands the caller is about to allocate, so aligned):
    M > 64, K % 16 == 0, TensorDescriptor available, an sm_90+ GPU or the interpreter."""
    if TensorDescriptor is None or m <= 64 or k % 16:
        return False
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 9
    return True  # the interpreter (CPU tensors reach the kernels only under TRITON_INTERPRET=1)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs so that the persistent loop is exercised


# (config, relative throughput of one tile per SM): bigger tiles reuse each loaded byte more
# (H200 sweep, benchmarks/results/h200/a8_tma/: 128x256 at 4 stages within 1-5 % of the best tile at M >= 1024,
# 128x128 with 4 warps ahead of 8 warps for int8)
HEURISTIC_TILES = (
    (TmaConfig(128, 256, 128, 8, 8, 4), 1.0),
    (TmaConfig(128, 128, 128, 8, 4, 4), 0.8),
    (TmaConfig(64, 128, 128, 8, 4, 4), 0.55),
)


# Block scales keep a second fp32 accumulator (the step's partial product): 128 x 256 tiles spill on sm_90
# (compile_check_a8 --tma: 255 registers + 120 bytes of stack), so they take 128 x 128 tiles
BLOCK_SCALE_TILES = (TmaConfig(128, 128, 128, 8, 8, 4), TmaConfig(64, 128, 128, 8, 4, 4))


def heuristic_tma_config(m: int, n: int, k: int, sms: int = 132) -> TmaConfig:
    """Hand-chosen tile (no tuning on the call path): the one with the fewest estimated SM-time units,
    waves x tile area / relative tile throughput (a wave quantization model)."""
    def cost(entry):
        cfg, speed = entry
        tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
        return triton.cdiv(tiles, sms) * cfg.block_m * cfg.block_n / speed

    return min(HEURISTIC_TILES, key=cost)[0]


def scaled_mm_tma(xq: torch.Tensor, sx: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                  bias: Optional[torch.Tensor], out_dtype: torch.dtype,
                  config: Optional[TmaConfig] = None, block: Optional[int] = None) -> torch.Tensor:
    """W8A8 through the persistent TMA kernel: xq (M, K), wq (N, K) fp8 or int8; row-wise sx (M,), sw (N,)
    fp32, or (``block`` B, fp8) sx (M, ceil(K/B)), sw (ceil(N/B), ceil(K/B)). The caller checks
    ``tma_applies`` (or ``tma_problem_ok`` for operands it allocated)."""
    m, k = xq.shape
    n = wq.shape[0]
    cfg = config or (BLOCK_SCALE_TILES[0] if block else heuristic_tma_config(m, n, k, num_sms(xq.device)))
    if block is not None and block % cfg.block_k:
        raise ValueError(f"BLOCK_K={cfg.block_k} must divide the scale block {block}")
    y = torch.empty((m, n), device=xq.device, dtype=out_dtype)
    x_desc = TensorDescriptor(xq, [m, k], [xq.stride(0), 1], [cfg.block_m, cfg.block_k])
    w_desc = TensorDescriptor(wq, [n, k], [wq.stride(0), 1], [cfg.block_n, cfg.block_k])
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    sms = min(num_sms(xq.device), tiles)
    scaled_mm_tma_kernel[(sms,)](
        x_desc, w_desc, sx, sw, bias if bias is not None else sw, y, m, n, k, y.stride(0),
        sx.stride(0), sw.stride(0), HAS_BIAS=bias is not None, ACC_INT=xq.dtype == torch.int8,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        SCALE_BLOCK=block or 0,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y
