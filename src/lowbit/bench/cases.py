"""Benchmark cases: what gets timed, on which inputs, checked against what.

A ``Case`` is one method (ours or a baseline). Per shape it ``bind``s to a ``Bound``: the weight
object (copied R times for cold timing), a ``run(x, weights)`` callable, an optional
``prepare_x`` done outside the timed region (GEMM-only rows), an optional own fp32 reference, and
the ideal bytes of its storage format. Adding a method is a ``Case`` subclass and ``register``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..formats.intx import IntxFormat, IntxWeight
from .shapes import LinearShape

OPS = ("wxa16", "fp8", "int8", "w4a8", "sparse24")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
OURS, BASELINE, PEER = "ours", "baseline", "peer"


@dataclass(frozen=True)
class OpSpec:
    """The problem family of a run: ``wxa16`` (n-bit weights, 16-bit activations), ``fp8``, ``int8``."""

    op: str = "wxa16"
    bits: int = 4
    group_size: Optional[int] = 128
    dtype: torch.dtype = torch.bfloat16
    symmetric: bool = False

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.dtype not in DTYPES.values():
            raise ValueError(f"dtype must be bf16 or fp16, got {self.dtype}")

    @property
    def dtype_name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp16"

    @property
    def title(self) -> str:
        if self.op == "wxa16":
            g = "per-channel" if self.group_size is None else f"g{self.group_size}"
            sym = "sym" if self.symmetric else "asym"
            return f"w{self.bits}a16 {g} {sym} {self.dtype_name}"
        if self.op == "w4a8":
            g = "per-channel" if self.group_size is None else f"g{self.group_size}"
            return f"w{self.bits}a8-fp8 {g} {'sym' if self.symmetric else 'asym'} (activations {self.dtype_name})"
        if self.op == "sparse24":
            g = "per-channel" if self.group_size is None else f"g{self.group_size}"
            return f"2:4 sparse w4a16 {g} {'sym' if self.symmetric else 'asym'} {self.dtype_name}"
        return f"{self.op} (activations {self.dtype_name})"


def matmul_flops(m: int, n: int, k: int) -> int:
    return 2 * m * n * k


def intx_weight_bytes(n: int, k: int, bits: int, group_size: Optional[int], scale_bytes: int,
                      zero_bytes: int) -> int:
    """Ideal bytes of an n-bit grouped weight: exactly bits/8 per value + scales/zeros per group."""
    groups = 1 if group_size is None else math.ceil(k / group_size)
    return math.ceil(n * k * bits / 8) + groups * n * (scale_bytes + zero_bytes)


def tensor_nbytes(obj: object) -> int:
    """Bytes held by the tensors of a tensor / sequence / dict / module (for the copy count)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, torch.nn.Module):
        return sum(tensor_nbytes(t) for t in list(obj.parameters()) + list(obj.buffers()))
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_nbytes(v) for v in obj)
    return 0


def clone_tensors(obj):
    """Deep copy with fresh storage (tensors cloned; modules deep-copied)."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tensors(v) for v in obj)
    return copy.deepcopy(obj)


def default_tol(out_dtype: torch.dtype) -> float:
    """Relative Frobenius tolerance: 2 x the output dtype's epsilon (fp32/int: 1e-4); correct rows sit near eps/5."""
    if out_dtype in (torch.bfloat16, torch.float16):
        return 2 * torch.finfo(out_dtype).eps
    return 1e-4


@dataclass
class ShapeData:
    """Per-shape inputs shared by all cases: the quantized weight and the fp32 weight it equals."""

    shape: LinearShape
    spec: OpSpec
    device: torch.device
    w_ref: torch.Tensor  # fp32 (N, K): every case computes x @ w_ref^T (up to its own quantization)
    qw: Optional[IntxWeight] = None

    @property
    def w_dense(self) -> torch.Tensor:
        return self.w_ref.to(self.spec.dtype)


def make_shape_data(shape: LinearShape, spec: OpSpec, device: torch.device, seed: int = 0) -> ShapeData:
    gen = torch.Generator(device=device).manual_seed(seed)
    w = torch.randn(shape.n, shape.k, generator=gen, device=device) * 0.02
    if spec.op in ("wxa16", "w4a8"):
        fmt = IntxFormat(bits=spec.bits, group_size=spec.group_size, symmetric=spec.symmetric,
                         zero_kind="int", scale_dtype=spec.dtype)
        qw = fmt.quantize(w)
        del w
        return ShapeData(shape, spec, device, qw.dequantize(torch.float32), qw)
    return ShapeData(shape, spec, device, w.to(spec.dtype).float())


def make_x(m: int, k: int, spec: OpSpec, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(seed + 7919 * m + k)
    return torch.randn(m, k, generator=gen, device=device).to(spec.dtype)


@dataclass
class Bound:
    """A case bound to one shape."""

    weights: object
    run: Callable[[object, object], torch.Tensor]  # run(x_prepared, weights) -> y
    weight_bytes: int  # ideal bytes of the weight format (not of the padded tensors)
    x_bytes_per_elem: float
    y_bytes_per_elem: float
    out_dtype: torch.dtype
    prepare_x: Callable[[torch.Tensor], object] = lambda x: x
    reference: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # own fp32 y(x); None: shared
    note: str = ""

    def ideal_bytes(self, m: int, n: int, k: int) -> int:
        return int(self.weight_bytes + m * k * self.x_bytes_per_elem + m * n * self.y_bytes_per_elem)


@dataclass
class Case:
    """A method. Subclasses override ``bind`` (and ``available`` / ``supports`` when constrained)."""

    name: str
    label: str
    role: str = BASELINE
    ops: Tuple[str, ...] = ("wxa16",)
    default: bool = True  # part of the default baseline set of its ops

    def math_kind(self, spec: OpSpec) -> str:
        return spec.dtype_name

    def available(self, spec: OpSpec, device: torch.device) -> Tuple[bool, str]:
        return True, ""

    def supports(self, spec: OpSpec, shape: LinearShape, m: int) -> Tuple[bool, str]:
        return True, ""

    def tol(self, spec: OpSpec, bound: Bound) -> float:
        return default_tol(bound.out_dtype)

    def bind(self, data: ShapeData) -> Bound:
        raise NotImplementedError


REGISTRY: Dict[str, Case] = {}


def register(case: Case) -> Case:
    REGISTRY[case.name] = case
    return case


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def load_builtin_cases() -> None:
    """Import the modules that register the built-in cases (idempotent)."""
    from . import cases_a8, cases_gemm, cases_lut, cases_sparse24, cases_wxa16  # noqa: F401


def select_cases(spec: OpSpec, baselines: Optional[List[str]]) -> List[Case]:
    """Ours (if the op has one) + the named baselines (None: the op's defaults), registry order."""
    load_builtin_cases()
    for_op = [c for c in REGISTRY.values() if spec.op in c.ops]
    if baselines is None:
        return [c for c in for_op if c.role == OURS or c.default]
    unknown = [b for b in baselines if b not in REGISTRY]
    if unknown:
        names = ", ".join(c.name for c in for_op)
        raise ValueError(f"unknown baseline(s) {unknown}; for op {spec.op!r} choose from: {names}")
    wrong_op = [b for b in baselines if spec.op not in REGISTRY[b].ops]
    if wrong_op:
        raise ValueError(f"baseline(s) {wrong_op} do not apply to op {spec.op!r}")
    return [c for c in for_op if c.role == OURS or c.name in baselines]


def needs_cuda(device: torch.device) -> Tuple[bool, str]:
    return (True, "") if device.type == "cuda" else (False, "needs a CUDA device")
