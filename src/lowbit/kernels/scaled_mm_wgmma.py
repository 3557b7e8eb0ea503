"""scaled_mm_wgmma: the large-M W8A8 GEMM written in Gluon (Triton's explicit-layout dialect) for Hopper,
Y = (Xq Wq^T) * sx[:, None] * sw[None, :] (+ bias).

Why a second large-M kernel: Triton 3.6 does not keep an int8 wgmma in flight across K steps (the
SASS of ``kernels/scaled_mm_tma.py`` waits for every IGMMA group before the next step: ``WARPGROUP.DEPBAR.LE
gsb0, 0x0``, where fp8 waits with one group outstanding), so the int8 tensor cores idle between steps.
Here the pipeline is spelled out: ``STAGES`` shared-memory slots per operand, one mbarrier each, TMA
loads issued ``STAGES - 1`` steps ahead, ``warpgroup_mma(..., is_async=True)`` followed by
``warpgroup_mma_wait(1)`` (the previous step's MMA is done, so its slot is refilled while this one runs).

Memory layout: Xq (M, K) and Wq (N, K) K-contiguous int8 or fp8 e4m3 (both wgmma operands K-major, the
only form 8-bit wgmma takes), read through Gluon ``TensorDescriptor`` s with NVMMA-swizzled shared
layouts; Y (M, N) row-major. Persistent: one program per SM walks the output tiles in grouped order;
per-token sx (M,) and per-channel sw (N,) fp32 are applied in the epilogue (int32 or fp32 accumulator
-> fp32 -> scales -> bias -> Y's dtype), converted through shared memory to 16-byte row segments
(``coalesced_store``) and stored with masks (ragged M / N; the TMA zero-fills the K tail and rows past
M / N). The next tile's first STAGES - 1 loads are issued before this tile's epilogue.

Runs on sm_90 GPUs only (no interpreter): ``wgmma_applies`` says when; elsewhere ``scaled_mm`` uses
``kernels/scaled_mm_tma.py`` or the pointer kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton

from .scaled_mm_tma import num_sms, tma_operands_ok

try:  # Gluon ships with Triton >= 3.5
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonDescriptor
except ImportError:  # pragma: no cover - older Triton: the Triton TMA kernel serves
    gluon = None


@dataclass(frozen=True)
class WgmmaConfig:
    block_m: int = 128
    block_n: int = 256
    block_k: int = 128
    group_m: int = 8
    num_warps: int = 8  # 4 warps per 64 rows of the tile (one warp group each)
    stages: int = 4
    # Y through shared memory into 16-byte row segments (else stored from the MMA layout, 4-byte pieces);
    # H200 sweep (a8_tma/sweep_eab7842): 0-12 % faster at M = 2048 / 4096 on the Llama-3-8B shapes
    coalesced_store: bool = True


def instr_n(block_n: int, int8: bool) -> int:
    """The wgmma N of one instruction: the largest allowed size dividing BLOCK_N (int8 wgmma stops at 224)."""
    n = 224 if int8 else 256
    while block_n % n:
        n -= 16 if int8 else 8
    return n


if gluon is not None:
    @gluon.jit
    def _tile_offsets(tile, num_m, num_n, GROUP_M: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
        """(row, column) offsets of output tile ``tile`` in grouped order (as ``epilogue.grouped_tile_ids``)."""
        width = GROUP_M * num_n
        first_m = (tile // width) * GROUP_M
        rows = gl.minimum(num_m - first_m, GROUP_M)
        return (first_m + (tile % width) % rows) * BLOCK_M, ((tile % width) // rows) * BLOCK_N

    @gluon.jit
    def _issue_prologue(x_desc, w_desc, x_smem, w_smem, bars, produced, off_m, off_n, nbytes: gl.constexpr,
                        STAGES: gl.constexpr, BLOCK_K: gl.constexpr):
        """TMA loads of a tile's first STAGES - 1 K steps (k_tiles >= STAGES - 1, ``wgmma_applies``)."""
        for i in gl.static_range(STAGES - 1):
            slot = produced % STAGES
            mbarrier.expect(bars.index(slot), nbytes)
            tma.async_copy_global_to_shared(x_desc, [off_m, i * BLOCK_K], bars.index(slot), x_smem.index(slot))
            tma.async_copy_global_to_shared(w_desc, [off_n, i * BLOCK_K], bars.index(slot), w_smem.index(slot))
            produced += 1
        return produced

    @gluon.jit
    def scaled_mm_wgmma_kernel(x_desc, w_desc, sx_ptr, sw_ptr, b_ptr, y_ptr, M, N, K, stride_ym,
                               HAS_BIAS: gl.constexpr, ACC_INT: gl.constexpr, GROUP_M: gl.constexpr,
                               STAGES: gl.constexpr, INSTR_N: gl.constexpr, num_warps: gl.constexpr,
                               COALESCED_STORE: gl.constexpr = False):
        """Program p of P computes tiles p, p + P, ...; load / consume counters run across tiles, so slot
        = count % STAGES and the mbarrier phase = (count // STAGES) & 1."""
        BLOCK_M: gl.constexpr = x_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = x_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                      instr_shape=[16, INSTR_N, 32])
        x_smem = gl.allocate_shared_memory(x_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], x_desc.layout)
        w_smem = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout)
        bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(bars.index(i), count=1)
        nbytes: gl.constexpr = x_desc.block_type.nbytes + w_desc.block_type.nbytes

        num_m = gl.cdiv(M, BLOCK_M)
        num_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        num_tiles = num_m * num_n
        produced = 0
        consumed = 0
        tile = gl.program_id(0)
        if tile < num_tiles:  # the first tile's prologue; later ones are issued before the previous epilogue
            off_m, off_n = _tile_offsets(tile, num_m, num_n, GROUP_M, BLOCK_M, BLOCK_N)
            produced = _issue_prologue(x_desc, w_desc, x_smem, w_smem, bars, produced, off_m, off_n, nbytes,
                                       STAGES, BLOCK_K)
        for tile in range(gl.program_id(0), num_tiles, gl.num_programs(0)):
            off_m, off_n = _tile_offsets(tile, num_m, num_n, GROUP_M, BLOCK_M, BLOCK_N)
            acc = gl.zeros([BLOCK_M, BLOCK_N], gl.int32 if ACC_INT else gl.float32, mma)
            for kt in range(k_tiles):
                slot = consumed % STAGES
                mbarrier.wait(bars.index(slot), (consumed // STAGES) & 1)
                acc = warpgroup_mma(x_smem.index(slot), w_smem.index(slot).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))  # step kt - 1 done: its slot is free
                consumed += 1
                if kt + STAGES - 1 < k_tiles:
                    slot = produced % STAGES
                    mbarrier.expect(bars.index(slot), nbytes)
                    tma.async_copy_global_to_shared(x_desc, [off_m, (kt + STAGES - 1) * BLOCK_K], bars.index(slot),
                                                    x_smem.index(slot))
                    tma.async_copy_global_to_shared(w_desc, [off_n, (kt + STAGES - 1) * BLOCK_K], bars.index(slot),
                                                    w_smem.index(slot))
                    produced += 1
            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
            nxt = tile + gl.num_programs(0)
            if nxt < num_tiles:  # every slot is free: the next tile's loads run under this epilogue
                n_m, n_n = _tile_offsets(nxt, num_m, num_n, GROUP_M, BLOCK_M, BLOCK_N)
                produced = _issue_prologue(x_desc, w_desc, x_smem, w_smem, bars, produced, n_m, n_n, nbytes,
                                           STAGES, BLOCK_K)

            if COALESCED_STORE:
                out_l: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
            else:
                out_l: gl.constexpr = mma
            offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, out_l))
            offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, out_l))
            mask_m = offs_m < M
            mask_n = offs_n < N
            sx = gl.load(sx_ptr + offs_m, mask=mask_m, other=0.0)
            sw = gl.load(sw_ptr + offs_n, mask=mask_n, other=0.0)
            out = gl.convert_layout(acc, out_l).to(gl.float32) * gl.expand_dims(sx, 1) * gl.expand_dims(sw, 0)
            if HAS_BIAS:
                out += gl.expand_dims(gl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(gl.float32), 0)
            gl.store(y_ptr + gl.expand_dims(offs_m, 1) * stride_ym + gl.expand_dims(offs_n, 0),
                     out.to(y_ptr.dtype.element_ty), mask=gl.expand_dims(mask_m, 1) & gl.expand_dims(mask_n, 0))

        for i in gl.static_range(STAGES):
            mbarrier.invalidate(bars.index(i))


WGMMA_CANDIDATES = (
    WgmmaConfig(128, 256, 128, 8, 8, 4),
    WgmmaConfig(128, 256, 128, 8, 8, 3),
    WgmmaConfig(128, 128, 128, 8, 8, 4),
    WgmmaConfig(128, 128, 128, 8, 8, 5),
    WgmmaConfig(256, 128, 128, 8, 8, 3),
    WgmmaConfig(64, 128, 128, 8, 4, 5),
    WgmmaConfig(128, 256, 128, 8, 8, 3, False),
    WgmmaConfig(128, 256, 128, 8, 8, 4, False),
)


def wgmma_preferred(m: int, k: int) -> bool:
    """Where the Gluon kernel beat the Triton TMA kernel for int8 on the H200 (``a8_sweep --tma``,
    benchmarks/results/h200/a8_tma/): M >= 2048, or M >= 1024 with K >= 8192 (long K loops gain most
    from the MMA kept in flight; at M <= 1024 with K = 4096 its 128 x 256 tile lost)."""
    return m >= 2048 or (m >= 1024 and k >= 8192)


def wgmma_applies(m: int, k: int, xq: torch.Tensor, wq: torch.Tensor, block: Optional[int],
                  config: Optional[WgmmaConfig] = None) -> bool:
    """sm_90 GPU tensors, row-wise scales, M > 64, K % 16 == 0 with at least STAGES - 1 K tiles,
    K-contiguous 16-byte aligned operands."""
    cfg = config or WgmmaConfig()
    if gluon is None or not xq.is_cuda or block is not None or m <= 64 or not tma_operands_ok(k, xq, wq):
        return False
    if triton.cdiv(k, cfg.block_k) < cfg.stages - 1:
        return False
    return torch.cuda.get_device_capability(xq.device)[0] == 9


def scaled_mm_wgmma(xq: torch.Tensor, sx: torch.Tensor, wq: torch.Tensor, sw: torch.Tensor,
                    bias: Optional[torch.Tensor], out_dtype: torch.dtype,
                    config: Optional[WgmmaConfig] = None) -> torch.Tensor:
    """Row-wise W8A8 through the Gluon kernel; the caller checks ``wgmma_applies``."""
    m, k = xq.shape
    n = wq.shape[0]
    cfg = config or WgmmaConfig()
    op = gl.int8 if xq.dtype == torch.int8 else gl.float8e4nv
    x_layout = gl.NVMMASharedLayout.get_default_for([cfg.block_m, cfg.block_k], op)
    w_layout = gl.NVMMASharedLayout.get_default_for([cfg.block_n, cfg.block_k], op)
    x_desc = GluonDescriptor(xq, [m, k], [xq.stride(0), 1], [cfg.block_m, cfg.block_k], x_layout)
    w_desc = GluonDescriptor(wq, [n, k], [wq.stride(0), 1], [cfg.block_n, cfg.block_k], w_layout)
    y = torch.empty((m, n), device=xq.device, dtype=out_dtype)
    tiles = triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n)
    int8 = xq.dtype == torch.int8
    scaled_mm_wgmma_kernel[(min(num_sms(xq.device), tiles),)](
        x_desc, w_desc, sx, sw, bias if bias is not None else sw, y, m, n, k, y.stride(0),
        HAS_BIAS=bias is not None, ACC_INT=int8, GROUP_M=cfg.group_m, STAGES=cfg.stages,
        INSTR_N=instr_n(cfg.block_n, int8), num_warps=cfg.num_warps, COALESCED_STORE=cfg.coalesced_store)
    return y
