"""Shared @triton.jit epilogue: write Y, or reduce split-K partials inside the same launch.

Split-K without a second kernel and without float atomics: every program of an output tile stores
its fp32 partial to ``ws[pid_k]``, then bumps the tile's arrival counter (acq_rel, gpu scope).
The program that arrives last sums ``ws[0..SPLIT_K)`` in index order, so the result is bitwise
deterministic whatever the arrival order, adds the bias, writes Y and resets the counter to 0
for the next launch (the counters live in a persistent zeroed buffer, ``launch.split_k_counters``).
"""
import triton
import triton.language as tl


@triton.jit
def split_k_tiles(K, pid_k, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    """[t0, t1): the K tiles of split ``pid_k`` (contiguous, ceil-divided; the last may be short)."""
    k_tiles = tl.cdiv(K, BLOCK_K)
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    t0 = pid_k * tiles_per_split
    return t0, min(t0 + tiles_per_split, k_tiles)


@triton.jit
def write_output(acc, bias, y_ptr, y_offs, mask, ws_ptr, ws_offs, ws_split_stride, cnt_ptr, tile_id, pid_k,
                 SPLIT_K: tl.constexpr):
    """acc/bias/y_offs/ws_offs/mask share one shape; bias is fp32 (0 when there is none)."""
    if SPLIT_K == 1:
        tl.store(y_ptr + y_offs, (acc + bias).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ws_ptr + pid_k * ws_split_stride + ws_offs, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is stored before the release below
        arrived = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros_like(acc)
            for i in range(SPLIT_K):  # fixed order: deterministic
                total += tl.load(ws_ptr + i * ws_split_stride + ws_offs, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.store(y_ptr + y_offs, (total + bias).to(y_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt_ptr + tile_id, 0, sem="relaxed", scope="gpu")


@triton.jit
def grouped_tile_ids(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program ``pid`` in grouped order: GROUP_M consecutive row tiles walk N
    together, so the weight tiles they share are read while still in L2."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    rows_in_group = min(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % rows_in_group, (pid % width) // rows_in_group


@triton.jit
def write_linear_output(acc, b_ptr, y_ptr, offs_m, mask_m, offs_n, mask_n, stride_ym, ws_ptr, stride_ws, cnt_ptr,
                        tile_id, pid_k, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Y[offs_m, offs_n] = acc + bias[offs_n] (through ``write_output``); acc is [BLOCK_M, BLOCK_N], or
    the tile transposed [BLOCK_N, BLOCK_M] when TRANSPOSED (the swap-AB GEMMs)."""
    if TRANSPOSED:
        mask = mask_n[:, None] & mask_m[None, :]
        y_offs = offs_m[None, :] * stride_ym + offs_n[:, None]
        bias = tl.zeros((offs_n.shape[0], 1), dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
    else:
        mask = mask_m[:, None] & mask_n[None, :]
        y_offs = offs_m[:, None] * stride_ym + offs_n[None, :]
        bias = tl.zeros((1, offs_n.shape[0]), dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    write_output(acc, bias, y_ptr, y_offs, mask, ws_ptr, y_offs, stride_ws, cnt_ptr, tile_id, pid_k, SPLIT_K)
