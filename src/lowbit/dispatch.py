"""Kernel choice: each backend answers ``can_implement(problem) -> (ok, reason)``.

``select`` walks the priority list and returns the first backend that can run the problem; if
``LOWBIT_BACKEND`` names a backend family (``reference`` or ``triton``) only that family is tried,
and failure raises ``UnsupportedError`` listing every backend's reason. Falling back to the
reference backend without being asked is logged once per reason, never silent.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import Callable, List, Tuple

import torch

from .errors import UnsupportedError

log = logging.getLogger("lowbit")

KERNEL_DTYPES = (torch.float16, torch.bfloat16)
GEMV_MAX_M = 8


@dataclass(frozen=True)
class WxA16Problem:
    m: int
    n: int
    k: int
    bits: int
    group_len: int
    dtype: torch.dtype
    device_type: str


def triton_available(device_type: str) -> Tuple[bool, str]:
    if device_type == "cuda":
        return True, ""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, ""
    return False, f"triton kernels need a CUDA device (or TRITON_INTERPRET=1), got device {device_type!r}"



def eager_unless_compiling(op: Callable, eager: Callable) -> Callable:
    """A call that runs the torch.library custom op ``op`` while tracing/compiling (torch.compile sees
    one opaque node) and its implementation ``eager`` otherwise (skipping ~tens of µs of torch.library
    dispatch per call)."""
    def call(*args):
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return op(*args)
        return eager(*args)

    name = getattr(op, "_qualname", getattr(op, "__name__", op))
    call.__doc__ = f"``{name}`` while tracing/compiling, ``{eager.__name__}`` in eager mode."
    return call


@dataclass(frozen=True)
class Backend:
    name: str
    family: str
    can_implement: Callable[[WxA16Problem], Tuple[bool, str]]


def _triton_common(p: WxA16Problem) -> Tuple[bool, str]:
    ok, why = triton_available(p.device_type)
    if not ok:
        return ok, why
    if p.dtype not in KERNEL_DTYPES:
        return False, f"triton kernels take fp16/bf16 activations, got {p.dtype}"
    return True, ""


def _gemv_ok(p: WxA16Problem) -> Tuple[bool, str]:
    if p.m > GEMV_MAX_M:
        return False, f"gemv handles M <= {GEMV_MAX_M}, got M={p.m}"
    return _triton_common(p)


WXA16_BACKENDS: List[Backend] = [
    Backend("triton_gemv", "triton", _gemv_ok),
    Backend("triton_gemm", "triton", _triton_common),
    Backend("triton_dequant_mm", "triton", _triton_common),
    Backend("reference", "reference", lambda p: (True, "")),
]
DEQUANT_MM_MIN_M = 256  # without a shipped table: dequantize + cuBLAS from here on


def preferred_backend(p: WxA16Problem) -> str:
    """The measured winner from the shipped table for this GPU, else the rule of thumb."""
    if p.device_type == "cuda" and torch.cuda.is_available():
        from .kernels.launch import shipped_best

        best = shipped_best(p.bits, p.m, p.n, p.k, torch.cuda.current_device())
        if best is not None:
            return "triton_" + best
    if p.m <= GEMV_MAX_M:
        return "triton_gemv"
    return "triton_dequant_mm" if p.m >= DEQUANT_MM_MIN_M else "triton_gemm"

_logged: set = set()


def forced_family() -> str:
    fam = os.environ.get("LOWBIT_BACKEND", "").strip().lower()
    if fam and fam not in ("reference", "triton"):
        raise UnsupportedError(f"LOWBIT_BACKEND must be 'reference' or 'triton', got {fam!r}")
    return fam


def select(problem: WxA16Problem) -> str:
    """Name of the backend to run ``problem``; raises UnsupportedError with every reason.

    Cached per (problem, LOWBIT_BACKEND): the choice costs one dict lookup after the first call.
    """
    return _select(problem, forced_family())


@functools.lru_cache(maxsize=4096)
def _select(problem: WxA16Problem, family: str, backends: Tuple[Backend, ...] = tuple(WXA16_BACKENDS)) -> str:
    preferred = preferred_backend(problem) if family != "reference" and isinstance(problem, WxA16Problem) else None
    reasons = []
    for b in sorted(backends, key=lambda b: b.name != preferred):  # stable: priority order otherwise
        if family and b.family != family:
            continue
        ok, why = b.can_implement(problem)
        if ok:
            if b.family == "reference" and not family and reasons:
                key = tuple(reasons)
                if key not in _logged:
                    _logged.add(key)
                    log.warning("lowbit: falling back to the reference backend: %s", "; ".join(reasons))
            return b.name
        reasons.append(f"{b.name}: {why}")
    raise UnsupportedError(f"no lowbit backend can run {problem}: " + "; ".join(reasons))


# ---- 8-bit activations (fp8 / int8 / W4A8): ``lowbit.ops_a8`` --------------------------------------

A8_MIN_CAPABILITY = {"fp8": (8, 9), "w4a8": (8, 9), "int8": (8, 0)}


@dataclass(frozen=True)
class A8Problem:
    kind: str  # "fp8" | "int8" | "w4a8"
    m: int
    n: int
    k: int
    dtype: torch.dtype
    device_type: str
    capability: Tuple[int, int] = (0, 0)  # of the CUDA device; (0, 0) elsewhere


def _a8_triton_ok(p: A8Problem) -> Tuple[bool, str]:
    ok, why = _triton_common(p)
    if not ok:
        return ok, why
    need = A8_MIN_CAPABILITY[p.kind]
    if p.device_type == "cuda" and p.capability < need:
        return False, (f"{p.kind} tensor cores need CUDA capability >= {need[0]}.{need[1]}, "
                       f"got {p.capability[0]}.{p.capability[1]}")
    return True, ""


A8_BACKENDS: List[Backend] = [
    Backend("triton_scaled_mm", "triton", _a8_triton_ok),
    Backend("reference", "reference", lambda p: (True, "")),
]


def select_a8(problem: A8Problem) -> str:
    """Backend for an 8-bit-activation problem: the Triton kernels, else the fp32 reference of the
    quantized operands (logged once per reason); LOWBIT_BACKEND=triton makes that an UnsupportedError."""
    return _select(problem, forced_family(), tuple(A8_BACKENDS))


# --- lookup-table weights (lowbit::linear_luta16): the same kernels with LUT=True ---
LUT_MAX_BITS = 4  # the kernels decode codes of at most two bit-planes (2**4 = 16 table entries)


def _lut_ok(p: WxA16Problem, base: Callable[[WxA16Problem], Tuple[bool, str]]) -> Tuple[bool, str]:
    if p.bits > LUT_MAX_BITS:
        return False, f"LUT kernels take codes of at most {LUT_MAX_BITS} bits, got {p.bits}"
    return base(p)


LUTA16_BACKENDS: List[Backend] = [
    Backend("triton_gemv", "triton", lambda p: _lut_ok(p, _gemv_ok)),
    Backend("triton_gemm", "triton", lambda p: _lut_ok(p, _triton_common)),
    Backend("triton_dequant_mm", "triton", lambda p: _lut_ok(p, _triton_common)),
    Backend("reference", "reference", lambda p: (True, "")),
]


def select_lut(problem: WxA16Problem) -> str:
    """``select`` for lookup-table weights (same kernel choice as intx of the same bits)."""
    return _select(problem, forced_family(), tuple(LUTA16_BACKENDS))


# --- 2:4-sparse int4 weights (lowbit::linear_sparse24_wxa16, lowbit.ops_sparse24) ---
# Crossovers: the sparse GEMV (CUDA cores) up to SPARSE24_GEMV_MAX_M rows, the tensor-core GEMM up to
# SPARSE24_GEMM_MAX_M, then dequantize + cuBLAS (the dense kernels' large-M path reading fewer bytes).
# Placeholders until an H200 run of ``lowbit bench --op sparse24`` measures them (docs/sparse24.md);
# each must keep the sparse path at least as fast as dense W4A16 at the same M.
SPARSE24_GEMV_MAX_M = 4
# H200 (benchmarks/results/h200/sparse24/sparse_vs_dense.txt): the tensor-core sparse GEMM ran at
# 0.06-0.42x our dense W4A16 at M = 2..128 while dequantize + cuBLAS reached 0.34-1.0x, so the GEMM
# is kept for explicit use (LOWBIT_BACKEND / direct calls) but never auto-dispatched.
SPARSE24_GEMM_MAX_M = 0
# Above the GEMV and up to this M: the weight expanded to dense int4 words, then the dense W4A16 dispatch (the
# packed tensor-core GEMM). 0 = not auto-dispatched: written and CPU-tested at stop 28, not yet measured on a GPU
# (`lowbit bench --op sparse24 --baselines lowbit_w4,sparse24_expand_mm,sparse24_dequant_mm,...`, docs/sparse24.md)
SPARSE24_EXPAND_MAX_M = 0


def _sparse24_gemv_ok(p: WxA16Problem) -> Tuple[bool, str]:
    if p.m > SPARSE24_GEMV_MAX_M:
        return False, f"sparse24 gemv handles M <= {SPARSE24_GEMV_MAX_M}, got M={p.m}"
    return _triton_common(p)


def _sparse24_gemm_ok(p: WxA16Problem) -> Tuple[bool, str]:
    if p.m > SPARSE24_GEMM_MAX_M:
        return False, f"sparse24 tensor-core gemm handles M <= {SPARSE24_GEMM_MAX_M} (measured crossover), got M={p.m}"
    return _triton_common(p)


def _sparse24_expand_ok(p: WxA16Problem) -> Tuple[bool, str]:
    if p.m > SPARSE24_EXPAND_MAX_M:
        return False, f"sparse24 expand + dense GEMM handles M <= {SPARSE24_EXPAND_MAX_M}, got M={p.m}"
    return _triton_common(p)


def _semi_structured_ok(p: WxA16Problem) -> Tuple[bool, str]:
    if os.environ.get("LOWBIT_SPARSE24_SEMI_STRUCTURED", "") != "1":
        return False, "torch semi-structured path is opt-in (LOWBIT_SPARSE24_SEMI_STRUCTURED=1) until measured faster"
    if p.device_type != "cuda":
        return False, f"semi-structured sparse matmul needs a CUDA device, got {p.device_type!r}"
    from .kernels.sparse24 import semi_structured_ok

    return semi_structured_ok(p.m, p.n, p.k, p.dtype, torch.device("cuda"))


SPARSE24_BACKENDS: List[Backend] = [
    Backend("triton_sparse24_gemv", "triton", _sparse24_gemv_ok),
    Backend("triton_sparse24_gemm", "triton", _sparse24_gemm_ok),
    Backend("triton_sparse24_expand_mm", "triton", _sparse24_expand_ok),
    Backend("torch_semi_structured", "triton", _semi_structured_ok),
    Backend("triton_sparse24_dequant_mm", "triton", _triton_common),
    Backend("reference", "reference", lambda p: (True, "")),
]


def select_sparse24(problem: WxA16Problem) -> str:
    """Backend for a 2:4-sparse int4 problem: first of SPARSE24_BACKENDS (priority order) that can run it."""
    return _select(problem, forced_family(), tuple(SPARSE24_BACKENDS))
