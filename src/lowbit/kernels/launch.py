"""Host-side helpers shared by the kernel launchers (output / split-K workspace handling)."""
from __future__ import annotations

import functools
import inspect
import operator
import threading
from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .unpack import plane_constexprs

try:  # Triton >= 3.3
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton: the pointer kernels serve every problem
    TensorDescriptor = None


def tma_rows_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors over these 2-D tensors can be made: contiguous last dim, 16-byte aligned base
    and row stride (in bytes)."""
    return all(t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0
               for t in tensors)


MAX_SPLIT_K_TILES = 1 << 16
_COUNTERS: Dict[Tuple[str, int], torch.Tensor] = {}


def split_k_counters(device: torch.device) -> torch.Tensor:
    """Persistent zeroed int32 arrival counters (one per output tile) for in-kernel split-K.

    Kernels leave them at 0 again, so one buffer serves every launch on the device's stream order.
    """
    key = (device.type, device.index or 0)
    buf = _COUNTERS.get(key)
    if buf is None:
        buf = _COUNTERS[key] = torch.zeros(MAX_SPLIT_K_TILES, dtype=torch.int32, device=device)
    return buf


def output_buffers(m: int, n: int, split_k: int, tiles: int, like: torch.Tensor,
                   dtype: Optional[torch.dtype] = None):
    """(Y (M, N) in ``dtype`` (default x's), fp32 workspace (SPLIT_K, M, N) or Y again, counters, split stride)."""
    if split_k > 1 and tiles > MAX_SPLIT_K_TILES:
        raise ValueError(f"split-K over {tiles} output tiles exceeds {MAX_SPLIT_K_TILES}")
    y = torch.empty((m, n), device=like.device, dtype=dtype or like.dtype)
    if split_k == 1:
        return y, y, y, 0
    ws = torch.empty((split_k, m, n), device=like.device, dtype=torch.float32)
    return y, ws, split_k_counters(like.device), ws.stride(0)


@functools.lru_cache(maxsize=4096)
def shipped_config(kernel: str, bits: int, m: int, n: int, k: int, device_index: int) -> Optional[dict]:
    """Config from the shipped table of this GPU (cached per problem: no lookup cost per call)."""
    from ..tuning import lookup, m_bucket

    name = torch.cuda.get_device_name(device_index)
    return lookup(kernel, bits, m_bucket(m), n, k, name)


@functools.lru_cache(maxsize=4096)
def shipped_best(bits: int, m: int, n: int, k: int, device_index: int) -> Optional[str]:
    """Kernel family ('gemv' | 'gemm' | 'dequant_mm') measured fastest for the nearest problem."""
    from ..tuning import best_kernel, m_bucket

    return best_kernel(bits, m_bucket(m), n, k, torch.cuda.get_device_name(device_index))


def resolve_config(kernel: str, config_cls, heuristic, m: int, n: int, k: int, bits: int, group_len: int,
                   x: torch.Tensor):
    """The shipped config for this GPU and problem, else the launcher's heuristic."""
    if x.is_cuda:
        shipped = shipped_config(kernel, bits, m, n, k, x.device.index or 0)
        if shipped is not None:
            return config_cls(**shipped)
    return heuristic(m, n, k, group_len)


def even_k(k: int, block_k: int, bits: int, k_order: int) -> bool:
    """EVEN_K of the intx kernels: every K tile the loop visits lies below K (no x mask along K); with
    mma-ordered words the loop runs to whole chunks (``unpack.stored_k_extent``), so K must fill them too."""
    return k % block_k == 0 and (not k_order or k % (128 // bits) == 0)


def launch_intx(kernel, grid, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                zeros: Optional[torch.Tensor], bias: Optional[torch.Tensor], bits: int, group_len: int,
                sym_zero: float, out_features: int, split_k: int, table: Optional[torch.Tensor] = None,
                extra_ptrs: Tuple[torch.Tensor, ...] = (), out_dtype: Optional[torch.dtype] = None,
                **meta) -> torch.Tensor:
    """Allocate Y (+ split-K workspace) and launch an intx matmul kernel with the shared argument
    order: pointers, sizes, strides, format constexprs, then the kernel's own ``meta``. ``table``
    (Gt, Nt, E) switches the kernel to lookup-table codes (LUT=True, ``lowbit.formats.lut``).
    ``extra_ptrs`` follow the counters (kernels with more pointer arguments); ``out_dtype``: Y's dtype
    (default x's)."""
    m, k = x.shape
    n = out_features
    y, ws, counters, stride_ws = output_buffers(m, n, split_k, grid[0], x, out_dtype)
    stride_tg, stride_tn = table_strides(table)
    args = (x, qweight, scales, zeros if zeros is not None else scales, table if table is not None else scales,
            bias if bias is not None else scales, y, ws, counters, *extra_ptrs,
            m, n, k, qweight.shape[0] * 32 // bits,
            x.stride(0), x.stride(1), qweight.stride(0), scales.stride(0), stride_tg, stride_tn, stride_ws,
            y.stride(0))
    kwargs = dict(GROUP_LEN=group_len, **plane_constexprs(bits), HAS_ZEROS=zeros is not None, SYM_ZERO=sym_zero,
                  HAS_BIAS=bias is not None, LUT=table is not None, SPLIT_K=split_k, **meta)
    compiled = kernel[grid](*args, **kwargs)
    if getattr(_RECORDING, "launches", None) is not None:
        _RECORDING.launches.append(
            _replayable(kernel, compiled, grid, args, kwargs, x, y))
    return y


# ---- eager launch plans -----------------------------------------------------------------------------
# A module's eager call spends most of its time on the host before the kernel starts (validation,
# dispatch, config lookup, Triton's argument binding and specialization: ~60-100 us on the H200 host vs
# ~10 us for tinygemm). ``recording()`` captures the launches ``launch_intx`` makes; a ``RecordedLaunch``
# replays one with a new activation of the same shape, strides, dtype, device and 16-byte alignment (so
# the same compiled kernel and the same integer arguments) -- only the output allocation and the launch
# itself remain. ``lowbit.nn.QuantLinear`` keeps one per input signature (``EagerPlans``).

_RECORDING = threading.local()


@contextmanager
def recording():
    """Collect what ``launch_intx`` launches inside the block: a list of ``RecordedLaunch`` (None for a
    launch that cannot be replayed, e.g. one taking TMA descriptors built from x)."""
    outer = getattr(_RECORDING, "launches", None)
    _RECORDING.launches = launches = []
    try:
        yield launches
    finally:
        _RECORDING.launches = outer


class RecordedLaunch:
    """One ``launch_intx`` call replayable with another x of the same signature: every kernel parameter in
    signature order (constexprs included, as Triton's launcher takes them) with the slots of x and Y left
    empty, and the launch itself -- the compiled kernel's C launcher on a GPU, the interpreter's grid call
    under TRITON_INTERPRET. Per call only Y is allocated: the split-K workspace of the recorded call is
    kept and reused, which is safe in stream order (as the shared arrival counters already require: one
    split-K launch at a time per device)."""

    __slots__ = ("kernel", "launch", "vals", "x_slots", "y_slots", "y_shape", "y_dtype", "x_ptr", "y_ptr", "raw",
                 "keep")

    def __init__(self, kernel, launch: Callable, vals: list, x_slots, y_slots, y: torch.Tensor, x_ptr: int,
                 raw: bool):
        self.kernel, self.launch, self.vals, self.x_slots, self.y_slots = kernel, launch, vals, x_slots, y_slots
        self.y_shape, self.y_dtype, self.x_ptr, self.y_ptr = tuple(y.shape), y.dtype, x_ptr, y.data_ptr()
        # raw: pointers go to the compiled launcher as integers (it then skips data_ptr() and the driver's
        # cuPointerGetAttribute check per pointer); ``keep`` holds the tensors behind the fixed ones
        self.raw = raw
        self.keep = tuple(v for v in vals if isinstance(v, torch.Tensor))
        if raw:
            self.vals = [v.data_ptr() if isinstance(v, torch.Tensor) else v for v in vals]

    def param(self, name: str):
        """The recorded value of the kernel parameter ``name`` (a pointer: its address when raw)."""
        return self.vals[list(_signature(self.kernel).parameters).index(name)]

    @property
    def out_features(self) -> int:
        return self.y_shape[1]

    @property
    def rows(self) -> int:
        return self.y_shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(self.y_shape, dtype=self.y_dtype, device=x.device)
        vals = self.vals.copy()
        xv, yv = (x.data_ptr(), y.data_ptr()) if self.raw else (x, y)
        for i in self.x_slots:
            vals[i] = xv
        for i in self.y_slots:
            vals[i] = yv
        self.launch(*vals)
        return y


@functools.lru_cache(maxsize=None)
def _signature(kernel) -> inspect.Signature:
    return inspect.signature(kernel.fn)


def _replayable(kernel, compiled, grid, args, kwargs, x, y) -> Optional[RecordedLaunch]:
    sig = _signature(kernel)
    options = {key: v for key, v in kwargs.items() if key not in sig.parameters}
    bound = sig.bind(*args, **{key: v for key, v in kwargs.items() if key in sig.parameters})
    bound.apply_defaults()
    vals = list(bound.arguments.values())
    if TensorDescriptor is not None and any(isinstance(v, TensorDescriptor) for v in vals):
        return None  # descriptors hold x's address: rebuilt per call by the launcher
    if compiled is not None and all(hasattr(compiled, a) for a in ("function", "packed_metadata", "run")):
        launch = _compiled_launch(compiled, tuple(grid) + (1,) * (3 - len(grid)))
    elif compiled is None and type(kernel).__name__ == "InterpretedFunction":  # TRITON_INTERPRET=1
        launch = functools.partial(kernel[grid], **options)
    else:
        return None
    slots = lambda t: tuple(i for i, v in enumerate(vals) if v is t)  # noqa: E731
    x_slots, y_slots = slots(x), slots(y)  # (with SPLIT_K = 1 the workspace / counters slots are Y's too)
    if not x_slots or not y_slots:
        return None
    for i in x_slots + y_slots:
        vals[i] = None  # no references to this call's x and Y
    return RecordedLaunch(kernel, launch, vals, x_slots, y_slots, y, x.data_ptr(), raw=compiled is not None)


def _compiled_launch(compiled, grid: tuple) -> Callable:
    """launch(*vals) of a ``triton.compiler.CompiledKernel``: its C launcher called directly with the
    current stream (what ``JITFunction.run`` does after binding, specializing and the cache lookup); while
    a launch hook is installed (profilers) the kernel's own runner, which builds the hook's metadata."""
    from triton import knobs
    from triton.runtime.driver import driver

    runner = compiled[grid]  # also loads the module / function handles
    run, function, metadata = compiled.run, compiled.function, compiled.packed_metadata
    hooks = knobs.runtime
    current_device, current_stream = driver.active.get_current_device, driver.active.get_current_stream
    g0, g1, g2 = grid

    def launch(*vals):
        if hooks.launch_enter_hook is not None or hooks.launch_exit_hook is not None:
            return runner(*vals)
        run(g0, g1, g2, current_stream(current_device()), function, metadata, None, None, None, *vals)

    return launch


def table_strides(table: Optional[torch.Tensor]) -> Tuple[int, int]:
    """Element strides of a (Gt, Nt, E) lookup table along groups and channels; 0 where it broadcasts."""
    if table is None:
        return 0, 0
    return (table.stride(0) if table.shape[0] > 1 else 0), (table.stride(1) if table.shape[1] > 1 else 0)


class EagerPlans:
    """A module's eager fast path: input signature -> the one replayable launch its op made for it.

    ``replay(x, weights)``: Y from the launch recorded for x's signature (shape, strides, dtype, device,
    16-byte alignment: what fixes the compiled kernel and its integer arguments), or None. ``weights`` are
    the module's tensors the op reads; a launch is used only while they are the same objects.
    ``record(x, weights, run)``: runs the full op ``run()`` (validation, dispatch, launch) under
    ``recording()`` and keeps the launch when the op was exactly one replayable ``launch_intx`` reading x
    itself and writing the returned Y (or a reshaped view of it). At most ``limit`` signatures are kept (a
    prefill of every length would otherwise grow it). Ops that are not one such launch (the reference
    backend, dequantize + cuBLAS, TMA descriptors) keep running ``run()``.
    """

    def __init__(self, limit: int = 64) -> None:
        self.limit = limit
        self.plans: Dict[tuple, tuple] = {}

    def clear(self) -> None:
        self.plans.clear()

    @staticmethod
    def signature(x: torch.Tensor) -> tuple:
        return x.shape, x.stride(), x.dtype, x.device, x.data_ptr() % 16

    def replay(self, x: torch.Tensor, weights: tuple) -> Optional[torch.Tensor]:
        plan = self.plans.get(self.signature(x))
        if plan is None:
            return None
        held, launch, flat_shape, out_shape = plan
        if not all(map(operator.is_, held, weights)):
            return None
        if flat_shape is None:
            return launch(x)
        return launch(x.view(flat_shape)).view(out_shape)

    def record(self, x: torch.Tensor, weights: tuple, run: Callable[[], torch.Tensor]) -> torch.Tensor:
        with recording() as launches:
            y = run()
        if len(launches) == 1 and launches[0] is not None and len(self.plans) < self.limit:
            launch = launches[0]
            m, n = launch.rows, launch.out_features
            x_ok = x.dim() == 2 or (x.is_contiguous() and x.numel() == m * x.shape[-1])
            if (x_ok and launch.x_ptr == x.data_ptr() and y.data_ptr() == launch.y_ptr
                    and y.shape == (*x.shape[:-1], n)):
                flat = (None, None) if x.dim() == 2 else ((m, x.shape[-1]), tuple(y.shape))
                self.plans[self.signature(x)] = (weights, launch, *flat)
        return y
