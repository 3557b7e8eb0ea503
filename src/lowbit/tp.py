"""Tensor parallelism for lowbit layers: shard packed weights directly, combine with torch.distributed.

A linear y = x W^T + b, W (N, K), is split over ``world_size`` ranks as Megatron-LM and vLLM do:

* **column-parallel** (``dim="column"`` or 0): rank r holds output channels [r N/ws, (r+1) N/ws); its
  y is a slice of the full y. ``ColumnParallel`` all-gathers the slices, or leaves them local for a
  following row-parallel layer. Bias: sliced like N.
* **row-parallel** (``dim="row"`` or 1): rank r holds input channels [r K/ws, (r+1) K/ws) and takes
  that slice of x; the local y are partial sums that ``RowParallel`` all-reduces. Bias: kept on rank 0
  only, so it is added once (vLLM's convention).

The packed tensors are sliced, never dequantized and requantized: a shard's ``dequantize()`` is bit for
bit the matching slice of the full ``dequantize()``. A packed tensor may be cut only between its
quantization units; ``lowbit.errors.ShardError`` names the violated one (and the dim must divide)::

    format                       column (split N)            row (split K)
    intx / lut, group g          any N / ws                  K / ws a multiple of g (per-channel: 32)
    fp8 per-channel, int8        any N / ws                  any K / ws
    fp8 128 x 128 blocks         N / ws a multiple of 128    K / ws a multiple of 128

intx / lut row shards slice every bit-plane: plane i (width p, bits from off_i) starts at word-row
Kp * off_i / 32 and k range [k0, k1) is its word-rows [k0 p / 32, k1 p / 32) (whole words: k0, k1
are multiples of 32); scales / zeros / per-group tables take groups [k0 / g, k1 / g).

Fused column layers (qkv = [q; k; v], gate_up = [gate; up]) shard every section: ``sections=(nq, nk,
nv)`` gives rank r the rows [q_r; k_r; v_r], so the local layer is again a fused qkv of fewer heads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .errors import ShardError
from .formats.fp8 import BLOCK, Fp8Weight
from .formats.int8 import Int8Weight
from .formats.intx import IntxWeight, bit_planes
from .formats.intx_experts import IntxExpertWeights
from .formats.lut import LutWeight

COLUMN, ROW = "column", "row"  # the strings of lowbit.bench.shapes
Dim = Union[str, int]
Range = Tuple[int, int]
Sections = Optional[Sequence[int]]


def parallel_dim(dim: Dim) -> str:
    """``"column"`` / 0 (split out_features N) or ``"row"`` / 1 (split in_features K)."""
    if dim in (COLUMN, 0):
        return COLUMN
    if dim in (ROW, 1):
        return ROW
    raise ShardError(f"dim must be 'column' (or 0: split out_features N) or 'row' (or 1: split in_features K), "
                     f"got {dim!r}")


def shard_ranges(size: int, rank: int, world_size: int, unit: int = 1, unit_name: str = "", what: str = "N",
                 sections: Sections = None) -> List[Range]:
    """Rank's [start, stop) ranges of a dim of ``size`` cut in ``world_size`` equal shards (each fused
    section cut separately); every cut must fall on a multiple of ``unit`` (a ``unit_name``)."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ShardError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ShardError(f"rank must be an int in [0, world_size={world_size}), got {rank!r}")
    parts = [size] if sections is None else [int(s) for s in sections]
    if sum(parts) != size or min(parts) <= 0:
        raise ShardError(f"sections {tuple(parts)} must be positive and sum to {what}={size}")
    out, start = [], 0
    for s in parts:
        label = f"{what}={s}" + (f" (section of {what}={size})" if len(parts) > 1 else "")
        if s % world_size:
            raise ShardError(f"{label} is not divisible by world_size={world_size}")
        per = s // world_size
        if world_size > 1 and (per % unit or start % unit):
            raise ShardError(f"{label} over world_size={world_size}: a shard of {per} starting at {start + rank * per} "
                             f"would cut a {unit_name}; {what} / world_size and section offsets must be multiples "
                             f"of {unit}")
        out.append((start + rank * per, start + (rank + 1) * per))
        start += s
    return out


def _take(t: Optional[torch.Tensor], dim: int, ranges: Sequence[Range]) -> Optional[torch.Tensor]:
    """Concatenated slices of ``t`` along ``dim``: a new compact tensor (never a view of the full one)."""
    if t is None:
        return None
    return torch.cat([t.narrow(dim, a, b - a) for a, b in ranges], dim)


def _copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.clone()


def _packed_rows(kp: int, bits: int, k_ranges: Sequence[Range]) -> List[Range]:
    """qweight word-rows that hold the k ranges in every bit-plane (layout: ``lowbit.formats.intx``)."""
    rows, off = [], 0
    for p in bit_planes(bits):
        base = kp * off // 32
        rows += [(base + a * p // 32, base + b * p // 32) for a, b in k_ranges]
        off += p
    return rows


@dataclass
class _Packed:
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: Optional[torch.Tensor]
    in_features: int
    ranges: List[Range]  # of N (column) or of groups (row): what a per-channel / per-group table takes


def _shard_packed(w, rank: int, ws: int, dim: str, sections: Sections) -> _Packed:
    """The intx layout (``IntxWeight``, ``LutWeight``, stacked experts): N on dim -1, K packed on dim -2."""
    if dim == COLUMN:
        r = shard_ranges(w.out_features, rank, ws, what="N", sections=sections)
        return _Packed(_take(w.qweight, -1, r), _take(w.scales, -1, r),
                       _take(getattr(w, "zeros", None), -1, r), w.in_features, r)
    _no_sections(sections)
    gs = w.group_size
    unit, name = (gs, f"quantization group (group_size={gs})") if gs else (
        32, "32-k packed word (per-channel weights; shards must be multiples of 32)")
    (k0, k1), = shard_ranges(w.in_features, rank, ws, unit, name, what="K")
    kp = w.scales.shape[-2] * gs if gs else w.qweight.shape[-2] * 32 // w.bits
    if ws == 1:
        k0, k1 = 0, kp  # keep the padded tail of a ragged K
    groups = [(0, 1)] if gs is None else [(k0 // gs, k1 // gs)]
    rows = _packed_rows(kp, w.bits, [(k0, k1)])
    return _Packed(_take(w.qweight, -2, rows), _take(w.scales, -2, groups),
                   _take(getattr(w, "zeros", None), -2, groups),
                   w.in_features if ws == 1 else k1 - k0, groups)


def _no_sections(sections: Sections) -> None:
    if sections is not None:
        raise ShardError("sections (fused output layers) apply to column-parallel sharding only")


def _shard_intx(w: IntxWeight, rank: int, ws: int, dim: str, sections: Sections) -> IntxWeight:
    p = _shard_packed(w, rank, ws, dim, sections)
    return IntxWeight(p.qweight, p.scales, p.zeros, w.bits, w.group_size, p.in_features)


def _shard_experts(w: IntxExpertWeights, rank: int, ws: int, dim: str, sections: Sections) -> IntxExpertWeights:
    p = _shard_packed(w, rank, ws, dim, sections)
    return IntxExpertWeights(p.qweight, p.scales, p.zeros, w.bits, w.group_size, p.in_features)


def _shard_lut(w: LutWeight, rank: int, ws: int, dim: str, sections: Sections) -> LutWeight:
    p = _shard_packed(w, rank, ws, dim, sections)
    t = w.table  # (Gt, Nt, E): slice the axis that is per group (row) / per channel (column)
    if dim == COLUMN and t.shape[1] == w.out_features > 1:
        t = _take(t, 1, p.ranges)
    elif dim == ROW and t.shape[0] == w.num_groups > 1:
        t = _take(t, 0, p.ranges)
    else:
        t = t.clone()
    return LutWeight(p.qweight, p.scales, t, w.bits, w.group_size, p.in_features)


def _blocks(ranges: Sequence[Range]) -> List[Range]:
    return [(a // BLOCK, -(-b // BLOCK)) for a, b in ranges]


def _shard_fp8(w: Fp8Weight, rank: int, ws: int, dim: str, sections: Sections) -> Fp8Weight:
    block = w.granularity == "block"
    unit, name = (BLOCK, f"{BLOCK}x{BLOCK} scale block") if block else (1, "")
    axis = 0 if dim == COLUMN else 1
    if dim == ROW:
        _no_sections(sections)
    r = shard_ranges(w.qweight.shape[axis], rank, ws, unit, name, "N" if axis == 0 else "K", sections)
    if block:
        scales = _take(w.scales, axis, _blocks(r))
    else:
        scales = _take(w.scales, 0, r) if dim == COLUMN else w.scales.clone()
    return Fp8Weight(_take(w.qweight, axis, r), scales, w.granularity)


def _shard_int8(w: Int8Weight, rank: int, ws: int, dim: str, sections: Sections) -> Int8Weight:
    if dim == COLUMN:
        r = shard_ranges(w.out_features, rank, ws, what="N", sections=sections)
        return Int8Weight(_take(w.qweight, 0, r), _take(w.scales, 0, r), _copy(w.inv_smooth))
    _no_sections(sections)
    r = shard_ranges(w.in_features, rank, ws, what="K")
    return Int8Weight(_take(w.qweight, 1, r), w.scales.clone(), _take(w.inv_smooth, 0, r))


_SHARDERS: Dict[type, Callable] = {
    IntxWeight: _shard_intx, LutWeight: _shard_lut, Fp8Weight: _shard_fp8, Int8Weight: _shard_int8,
    IntxExpertWeights: _shard_experts,
}


def shard_weight(weight, rank: int, world_size: int, dim: Dim, sections: Sections = None):
    """Rank's shard of a packed weight (same type); see the module docstring for the rules."""
    fn = _SHARDERS.get(type(weight))
    if fn is None:
        raise ShardError(f"no tensor-parallel rule for {type(weight).__name__}; known: "
                         f"{', '.join(t.__name__ for t in _SHARDERS)}")
    return fn(weight, rank, world_size, parallel_dim(dim), sections)


def shard_bias(bias: Optional[torch.Tensor], rank: int, world_size: int, dim: Dim,
               sections: Sections = None) -> Optional[torch.Tensor]:
    """Column: the rank's slice of N. Row: the whole bias on rank 0, None elsewhere (added once)."""
    if bias is None:
        return None
    if parallel_dim(dim) == COLUMN:
        return _take(bias.detach(), 0, shard_ranges(bias.shape[0], rank, world_size, what="N", sections=sections))
    shard_ranges(world_size, rank, world_size)  # validates rank / world_size
    return bias.detach().clone() if rank == 0 else None


def shard_linear(module: nn.Module, rank: int, world_size: int, dim: Dim, sections: Sections = None) -> nn.Module:
    """A new layer of the same class holding rank's shard (lowbit modules with a ``weight`` property
    and ``cls(weight, bias)``, or a dense ``nn.Linear``)."""
    dim = parallel_dim(dim)
    bias = shard_bias(module.bias, rank, world_size, dim, sections)
    if isinstance(module, nn.Linear):
        axis = 0 if dim == COLUMN else 1
        r = shard_ranges(module.weight.shape[axis], rank, world_size, what="NK"[axis], sections=sections)
        w = _take(module.weight.detach(), axis, r)
        out = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(w)
            if bias is not None:
                out.bias.copy_(bias)
        return out.requires_grad_(module.weight.requires_grad)
    return type(module)(shard_weight(module.weight, rank, world_size, dim, sections), bias)


class Shardable:
    """Mixin of the lowbit linear modules (``QuantLinear``, ``LutLinear``, ``Float8Linear``, ``Int8Linear``,
    ``W4A8Linear``): ``module.shard(rank, world_size, dim)``."""

    def shard(self, rank: int, world_size: int, dim: Dim, sections: Sections = None) -> nn.Module:
        """A new module holding rank's shard: ``dim`` "column"/0 splits N, "row"/1 splits K."""
        return shard_linear(self, rank, world_size, dim, sections)


# ---- running shards under torch.distributed --------------------------------------------------------------

def group_rank_size(group=None) -> Tuple[int, int]:
    """(rank, world size) in ``group`` (default WORLD); (0, 1) when torch.distributed is not initialized."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def all_gather_last_dim(y: torch.Tensor, group=None, sections: Sections = None) -> torch.Tensor:
    """Concatenate every rank's column shard along the last dim (fused ``sections`` put back in order)."""
    import torch.distributed as dist

    _, ws = group_rank_size(group)
    if ws == 1:
        return y
    parts = [torch.empty_like(y) for _ in range(ws)]
    dist.all_gather(parts, y.contiguous(), group=group)
    if sections is None:
        return torch.cat(parts, dim=-1)
    local = [s // ws for s in sections]
    split = [p.split(local, dim=-1) for p in parts]
    return torch.cat([split[r][i] for i in range(len(local)) for r in range(ws)], dim=-1)


def all_reduce_sum(y: torch.Tensor, group=None) -> torch.Tensor:
    """Sum the row shards' partial outputs over ``group`` (in place, in y's dtype, as vLLM does)."""
    import torch.distributed as dist

    if group_rank_size(group)[1] > 1:
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
    return y


class ColumnParallel(nn.Module):
    """Runs a column shard ``local`` on the full x; all-gathers y (``gather_output``) or returns the local
    slice (for a following ``RowParallel`` with ``input_is_parallel``)."""

    def __init__(self, local: nn.Module, group=None, gather_output: bool = True, sections: Sections = None) -> None:
        super().__init__()
        self.local, self.group, self.gather_output = local, group, gather_output
        self.sections = None if sections is None else tuple(int(s) for s in sections)

    @classmethod
    def from_full(cls, module: nn.Module, group=None, gather_output: bool = True,
                  sections: Sections = None) -> "ColumnParallel":
        """Shard ``module`` for this process's rank in ``group`` and wrap it."""
        rank, ws = group_rank_size(group)
        return cls(shard_linear(module, rank, ws, COLUMN, sections), group, gather_output, sections)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.local(x)
        return all_gather_last_dim(y, self.group, self.sections) if self.gather_output else y


class RowParallel(nn.Module):
    """Runs a row shard ``local`` on rank's slice of x (taken here unless ``input_is_parallel``) and
    all-reduces the partial sums (the bias lives on rank 0's shard)."""

    def __init__(self, local: nn.Module, group=None, input_is_parallel: bool = True) -> None:
        super().__init__()
        self.local, self.group, self.input_is_parallel = local, group, input_is_parallel

    @classmethod
    def from_full(cls, module: nn.Module, group=None, input_is_parallel: bool = True) -> "RowParallel":
        rank, ws = group_rank_size(group)
        return cls(shard_linear(module, rank, ws, ROW), group, input_is_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            rank, _ = group_rank_size(self.group)
            k = self.local.in_features
            x = x.narrow(-1, rank * k, k)
        return all_reduce_sum(self.local(x), self.group)


# ---- whole models ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ShardRule:
    """How ``shard_model_`` splits a layer; ``sections(parent, layer)`` gives fused sizes along N."""

    dim: str
    sections: Optional[Callable[[nn.Module, nn.Module], Sequence[int]]] = None


def _qkv_sections(attn: nn.Module, layer: nn.Module) -> Sequence[int]:
    q, kv = attn.n_heads * attn.head_dim, attn.n_kv * attn.head_dim
    return (q, kv, kv)


def _halves(parent: nn.Module, layer: nn.Module) -> Sequence[int]:
    return (layer.out_features // 2,) * 2


# Llama blocks: lowbit.models.llama (fused qkv_proj / gate_up_proj) and Hugging Face (separate projections).
LLAMA_PLAN: Dict[str, ShardRule] = {
    "qkv_proj": ShardRule(COLUMN, _qkv_sections), "gate_up_proj": ShardRule(COLUMN, _halves),
    **{n: ShardRule(COLUMN) for n in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")},
    "o_proj": ShardRule(ROW), "down_proj": ShardRule(ROW),
}
HEAD_ATTRS = ("n_heads", "n_kv", "num_heads", "num_key_value_heads")  # per-rank head counts after sharding


def shard_model_(model: nn.Module, rank: int, world_size: int, plan: Optional[Dict[str, ShardRule]] = None,
                 group=None) -> nn.Module:
    """In place: every layer whose last name is in ``plan`` (default ``LLAMA_PLAN``) becomes a local
    ``ColumnParallel`` (output left sharded) or ``RowParallel`` (input sharded, output all-reduced); the
    head counts (``HEAD_ATTRS``) of their parents are divided by ``world_size``. Embeddings, norms and
    the lm_head stay replicated. Returns ``model``."""
    plan = LLAMA_PLAN if plan is None else plan
    targets = []  # (parent, attribute name, layer)
    for name, mod in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if name and leaf in plan and not isinstance(mod, (ColumnParallel, RowParallel)):
            targets.append((model.get_submodule(name[: -len(leaf)].rstrip(".")), leaf, mod))
    heads = []
    for parent in {id(p): p for p, _, _ in targets}.values():  # checked before any layer is cut
        for attr in HEAD_ATTRS:
            n = getattr(parent, attr, None)
            if isinstance(n, int) and not isinstance(n, bool):
                if n % world_size:
                    raise ShardError(f"{type(parent).__name__}.{attr}={n} is not divisible by world_size={world_size}")
                heads.append((parent, attr, n // world_size))
    for parent, leaf, mod in targets:
        rule = plan[leaf]
        sections = None if rule.sections is None else tuple(rule.sections(parent, mod))
        local = shard_linear(mod, rank, world_size, rule.dim, sections)
        setattr(parent, leaf, ColumnParallel(local, group, gather_output=False) if rule.dim == COLUMN
                else RowParallel(local, group, input_is_parallel=True))
    for parent, attr, n in heads:
        setattr(parent, attr, n)
    return model
