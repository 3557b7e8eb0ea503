"""Save and load quantized models: safetensors shards + JSON, never pickle.

``save_quantized(model, path)`` writes::

    path/model-00001-of-0000N.safetensors   every tensor of model.state_dict() (the QuantLinear
    ...                                      buffers and all ordinary parameters/buffers), in
                                             state-dict order, each shard <= max_shard_size
    path/model.safetensors.index.json        {"metadata": {"total_size": bytes}, "weight_map": {key: shard}}
    path/lowbit_config.json                  format, checkpoint version, intx layout version, the
                                             quantization config dict, one entry per quantized module
                                             (class, bits, group_size, in/out features, zero kind,
                                             scale dtype, bias) and the aliases of tied tensors

``load_quantized(model, path)`` checks the checkpoint against the model first and, if anything is
off, raises ``CheckpointError`` listing every missing, unexpected and malformed key, leaving the
model untouched. Then it replaces each module named in lowbit_config.json (an ``nn.Linear`` of the
same shape, or a QuantLinear) by a QuantLinear / PermutedQuantLinear of the recorded shapes and
loads all tensors shard by shard. Quantized buffers and integer tensors must match dtype exactly;
ordinary floating tensors are cast to the model's dtype (as ``load_state_dict`` does).
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .convert.modules import PermutedQuantLinear
from .errors import FormatError
from .formats.intx import LAYOUT_VERSION, SCALE_DTYPES, IntxWeight, check_group_size, padded_k
from .nn import QuantLinear, use_mma_words_

CHECKPOINT_FORMAT = "lowbit-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_NAME = "lowbit_config.json"
INDEX_NAME = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
MODULE_CLASSES = {"QuantLinear": QuantLinear, "PermutedQuantLinear": PermutedQuantLinear}
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2)}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class CheckpointError(FormatError):
    """The checkpoint does not match the model (or is not a readable lowbit checkpoint).

    ``missing``, ``unexpected`` and ``malformed`` list the offending keys (malformed entries say why).
    """

    def __init__(self, path: str, missing: List[str] = (), unexpected: List[str] = (),
                 malformed: List[str] = (), reason: str = "") -> None:
        self.path, self.missing, self.unexpected = path, sorted(missing), sorted(unexpected)
        self.malformed = list(malformed)
        lines = [f"lowbit checkpoint {path}: {reason or 'does not match the model'}"]
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected), ("malformed", self.malformed)):
            if items:
                lines.append(f"  {label} ({len(items)}): " + ", ".join(items))
        super().__init__("\n".join(lines))


def _safetensors():
    try:
        import safetensors.torch  # noqa: F401
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("lowbit checkpoints need the 'safetensors' package (pip install safetensors)") from e
    return safetensors.torch, safe_open


def _parse_size(size: Union[int, str]) -> int:
    if isinstance(size, int) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(size).upper())
    if not m:
        raise ValueError(f"max_shard_size must be a positive int (bytes) or like '5GB', '500MB', got {size!r}")
    limit = int(float(m.group(1)) * _UNITS[m.group(2) or ""])
    if limit <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return limit


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _module_meta(module: QuantLinear) -> Dict:
    # shapes and dtypes only: built from the buffers as they are (``module.weight`` would convert the words
    # back to the natural order, twice, for every layer at every save and HF load)
    w = IntxWeight(module.qweight, module.scales, module.zeros, module.bits, module.group_size, module.in_features)
    meta = w.meta()
    meta.update(
        {"class": type(module).__name__, "zero_kind": w.zero_kind,
         "scale_dtype": _dtype_name(module.scales.dtype), "bias": module.bias is not None}
    )
    return meta


def _atomic_write_json(obj, file: str) -> None:
    tmp = file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, file)


def save_quantized(model: nn.Module, path: str, *, config=None, max_shard_size: Union[int, str] = "5GB") -> None:
    """Write ``model`` (QuantLinear modules and everything else in its state dict) to directory
    ``path``. ``config``: the quantization config (an object with ``to_dict()`` or a dict), recorded
    in lowbit_config.json. Tied tensors are stored once and recorded as aliases."""
    _reject_a8_modules(model)
    st, _ = _safetensors()
    _reject_unsupported_modules(model)
    _reject_sparse24_modules(model)
    limit = _parse_size(max_shard_size)
    if config is not None and hasattr(config, "to_dict"):
        config = config.to_dict()
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be None, a dict or have to_dict(), got {type(config).__name__}")
    os.makedirs(path, exist_ok=True)
    modules = {fqn: _module_meta(m) for fqn, m in model.named_modules() if isinstance(m, QuantLinear)}

    tensors: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    copy = set()  # views of a storage already saved under another name: safetensors refuses shared memory
    seen: Dict[Tuple, str] = {}
    storages = set()
    for name, t in model.state_dict().items():
        t = t.detach()
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            aliases[name] = seen[ident]
            continue
        seen[ident] = name
        ptr = (t.device, t.untyped_storage().data_ptr())
        if t.numel() and ptr in storages:
            copy.add(name)
        storages.add(ptr)
        tensors[name] = t

    def to_cpu(name):  # one shard at a time, so a GPU model is never copied to the host whole
        t = tensors[name].to("cpu")
        return t.clone() if name in copy else t.contiguous()

    shards: List[List[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for file, names in zip(files, shards):
        st.save_file({n: to_cpu(n) for n in names}, os.path.join(path, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in names})
    for stale in os.listdir(path):
        if SHARD_PATTERN.fullmatch(stale) and stale not in files:
            os.remove(os.path.join(path, stale))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _atomic_write_json({"metadata": {"total_size": total}, "weight_map": weight_map}, os.path.join(path, INDEX_NAME))
    from . import __version__

    _atomic_write_json(
        {"format": CHECKPOINT_FORMAT, "checkpoint_version": CHECKPOINT_VERSION, "lowbit_version": __version__,
         "formats": {"intx": {"layout_version": LAYOUT_VERSION}}, "config": config, "modules": modules,
         "aliases": aliases, "index": INDEX_NAME},
        os.path.join(path, CONFIG_NAME),
    )


def _read_json(file: str, path: str) -> Dict:
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(path, reason=f"{os.path.basename(file)} is missing (not a lowbit checkpoint?)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(path, reason=f"cannot read {os.path.basename(file)}: {e}") from None


def _quant_specs(fqn: str, meta: Mapping) -> Dict[str, Tuple[Tuple[int, ...], Optional[torch.dtype]]]:
    """Expected (shape, dtype) of a quantized module's tensors; dtype None = any floating dtype."""
    bits, gs, k, n = meta["bits"], meta["group_size"], meta["in_features"], meta["out_features"]
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits={bits!r}")
    check_group_size(gs)
    if not (isinstance(k, int) and isinstance(n, int) and k > 0 and n > 0):
        raise ValueError(f"in_features={k!r}, out_features={n!r}")
    scale_dtype = _DTYPES.get(meta["scale_dtype"])
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype={meta['scale_dtype']!r}")
    if meta["class"] not in MODULE_CLASSES:
        raise ValueError(f"class={meta['class']!r} (known: {sorted(MODULE_CLASSES)})")
    kp = padded_k(k, gs)
    g = kp // (gs or kp)
    specs = {"qweight": ((kp * bits // 32, n), torch.int32), "scales": ((g, n), scale_dtype)}
    if meta["zero_kind"] == "int":
        specs["zeros"] = ((g, n), torch.uint8)
    elif meta["zero_kind"] == "float":
        specs["zeros"] = ((g, n), scale_dtype)
    elif meta["zero_kind"] is not None:
        raise ValueError(f"zero_kind={meta['zero_kind']!r}")
    if meta["bias"]:
        specs["bias"] = ((n,), None)
    if meta["class"] == "PermutedQuantLinear":
        specs["perm"] = ((k,), torch.int64)
    return {f"{fqn}.{key}" if fqn else key: spec for key, spec in specs.items()}


def _target_device(module: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device if t.device.type != "meta" else torch.device("cpu")
    return torch.device("cpu")


def _new_module(meta: Mapping, specs: Mapping, fqn: str, device: torch.device) -> QuantLinear:
    """A QuantLinear of the recorded shapes, allocated (uninitialised) on ``device``."""
    def empty(key):
        shape, dtype = specs[f"{fqn}.{key}" if fqn else key]
        return torch.empty(shape, dtype=dtype, device="meta")

    zeros = empty("zeros") if meta["zero_kind"] else None
    weight = IntxWeight(empty("qweight"), empty("scales"), zeros, meta["bits"], meta["group_size"], meta["in_features"])
    bias = torch.empty(meta["out_features"], device="meta") if meta["bias"] else None
    if meta["class"] == "PermutedQuantLinear":
        module = PermutedQuantLinear(weight, empty("perm"), bias)
    else:
        module = QuantLinear(weight, bias)
    return module.to_empty(device=device)


def load_quantized(model: nn.Module, path: str, *, device=None) -> nn.Module:
    """Load a ``save_quantized`` directory into ``model`` (in place; also returned).

    ``device``: where new QuantLinear modules and tensors of meta-device models go (default: the
    device of the module/tensor they replace, CPU for meta). Raises ``CheckpointError`` (before
    changing anything) listing every missing, unexpected and malformed key.
    """
    _, safe_open = _safetensors()
    cfg = _read_config(path)
    index = _read_json(os.path.join(path, cfg.get("index", INDEX_NAME)), path)
    weight_map: Dict[str, str] = index.get("weight_map", {})
    aliases: Dict[str, str] = cfg.get("aliases", {})

    header, unexpected, malformed = _read_headers(path, weight_map, safe_open)
    replaced, bad_modules, bad = _plan_modules(model, cfg.get("modules", {}))
    malformed += bad
    expected = _expected_tensors(model, replaced, bad_modules)
    available = set(weight_map) | {a for a, target in aliases.items() if target in weight_map}
    missing = [k for k in expected if k not in available]
    unexpected += [k for k in available if k not in expected and k.rpartition(".")[0] not in bad_modules]
    for key, (shape, dtype, quantized) in expected.items():
        src_key = aliases.get(key, key)
        if key not in available or src_key not in header:
            continue
        ck_shape, ck_dtype = header[src_key]
        if ck_shape != shape or not _dtype_ok(ck_dtype, dtype, quantized):
            want = "a float dtype" if dtype is None else _dtype_name(dtype)
            got = _dtype_name(ck_dtype) if ck_dtype is not None else "an unknown dtype"
            malformed.append(f"{key}: checkpoint has {got} {ck_shape}, expected {want} {shape}")
        elif quantized and key.endswith("perm"):
            with safe_open(os.path.join(path, weight_map[src_key]), framework="pt") as f:
                perm = f.get_tensor(src_key)
            if not torch.equal(torch.sort(perm).values, torch.arange(perm.numel())):
                malformed.append(f"{key}: not a permutation of range(in_features)")
    if missing or unexpected or malformed:
        raise CheckpointError(path, missing, unexpected, malformed)

    for fqn, (meta, specs) in replaced.items():
        new = _new_module(meta, specs, fqn, _target_device(model.get_submodule(fqn), device))
        if meta["bias"]:
            new.bias = new.bias.to(header[aliases.get(f"{fqn}.bias", f"{fqn}.bias")][1])
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    _load_tensors(model, path, weight_map, aliases, expected, device, safe_open)
    return use_mma_words_(model)  # modules created here start in the natural word order


def _read_config(path: str) -> Dict:
    cfg = _read_json(os.path.join(path, CONFIG_NAME), path)
    if cfg.get("format") != CHECKPOINT_FORMAT or cfg.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise CheckpointError(path, reason=(
            f"unsupported checkpoint (format={cfg.get('format')!r}, version={cfg.get('checkpoint_version')!r}); "
            f"this lowbit reads {CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}"))
    layout = cfg.get("formats", {}).get("intx", {}).get("layout_version")
    if layout != LAYOUT_VERSION:
        raise CheckpointError(path, reason=f"intx layout version {layout!r}; this lowbit reads {LAYOUT_VERSION}")
    return cfg


def _read_headers(path: str, weight_map: Mapping[str, str], safe_open):
    """Shapes and dtypes of every indexed tensor from the shard headers (no tensor data)."""
    header: Dict[str, Tuple[Tuple[int, ...], Optional[torch.dtype]]] = {}
    unexpected, malformed = [], []
    for file in sorted(set(weight_map.values())):
        names = [n for n, f in weight_map.items() if f == file]
        full = os.path.join(path, file)
        if not os.path.isfile(full):
            malformed += [f"{n}: shard {file} does not exist" for n in names]
            continue
        try:
            with safe_open(full, framework="pt") as f:
                keys = set(f.keys())
                for n in names:
                    if n not in keys:
                        malformed.append(f"{n}: not in shard {file} (the index says it is)")
                        continue
                    sl = f.get_slice(n)
                    header[n] = (tuple(sl.get_shape()), _DTYPES.get(_st_dtype(sl.get_dtype())))
                unexpected += [f"{n} (in {file}, not in the index)" for n in sorted(keys - set(names))]
        except Exception as e:  # a truncated or corrupt shard: report it, never guess
            malformed += [f"{n}: shard {file} unreadable ({e})" for n in names]
    return header, unexpected, malformed


def _plan_modules(model: nn.Module, modules: Mapping[str, Mapping]):
    """-> ({fqn: (meta, specs)} to replace, fqns reported as malformed as a whole, messages)."""
    replaced: Dict[str, Tuple[Mapping, Dict]] = {}
    bad_modules, malformed = set(), []

    def bad(fqn, why):
        bad_modules.add(fqn)
        malformed.append(f"{fqn or '<root>'}: {why}")

    for fqn, meta in modules.items():
        try:
            specs = _quant_specs(fqn, meta)
        except (KeyError, TypeError, ValueError, FormatError) as e:
            bad(fqn, f"bad module entry in {CONFIG_NAME} ({e})")
            continue
        if not fqn:
            bad(fqn, "the saved model is itself a quantized layer; load it into a container module")
            continue
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            bad(fqn, f"named in {CONFIG_NAME} but the model has no such module")
            continue
        if not isinstance(module, (nn.Linear, QuantLinear)):
            bad(fqn, f"expected nn.Linear or QuantLinear, the model has {type(module).__name__}")
        elif (module.in_features, module.out_features) != (meta["in_features"], meta["out_features"]):
            bad(fqn, f"the model's layer is {module.in_features}->{module.out_features}, the checkpoint's "
                     f"{meta['in_features']}->{meta['out_features']}")
        elif isinstance(module, nn.Linear) and (module.bias is not None) != bool(meta["bias"]):
            bad(fqn, f"bias={module.bias is not None} in the model, {bool(meta['bias'])} in the checkpoint")
        else:
            replaced[fqn] = (meta, specs)
    return replaced, bad_modules, malformed


def _expected_tensors(model: nn.Module, replaced: Mapping, bad_modules) -> Dict:
    """{key: (shape, dtype, quantized)} of the model once the planned modules are replaced."""
    expected = {}
    for key, t in model.state_dict().items():
        owner = key.rpartition(".")[0]
        if owner not in replaced and owner not in bad_modules:
            expected[key] = (tuple(t.shape), t.dtype, False)
    for _, specs in replaced.values():
        expected.update({key: (shape, dtype, True) for key, (shape, dtype) in specs.items()})
    return expected


def _load_tensors(model, path, weight_map, aliases, expected, device, safe_open) -> None:
    """Shard by shard: read, cast ordinary float tensors to the model's dtype, load_state_dict."""
    targets = model.state_dict(keep_vars=True)
    assign = any(t.device.type == "meta" for t in targets.values())
    by_source: Dict[str, List[str]] = {}
    for key in expected:
        by_source.setdefault(aliases.get(key, key), []).append(key)
    for file in sorted(set(weight_map.values())):
        part = {}
        with safe_open(os.path.join(path, file), framework="pt") as f:
            for src in (n for n, shard in weight_map.items() if shard == file):
                t = f.get_tensor(src)
                for key in by_source.get(src, []):
                    dest = targets[key]
                    dev = dest.device if dest.device.type != "meta" else torch.device(device or "cpu")
                    part[key] = t.to(device=dev, dtype=dest.dtype)
        model.load_state_dict(part, strict=False, assign=assign)


def _dtype_ok(have: Optional[torch.dtype], want: Optional[torch.dtype], quantized: bool) -> bool:
    """Exact for quantized buffers and integer tensors; any float for a QuantLinear bias (want None)
    and float -> float (cast on load) for ordinary tensors."""
    if have is None:
        return False
    if want is None:
        return have.is_floating_point
    return have == want or (not quantized and have.is_floating_point and want.is_floating_point)


def _st_dtype(name: str) -> str:
    """safetensors dtype names (F16, BF16, I32, U8, ...) -> torch dtype names."""
    return {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8", "U8": "uint8",
            "I16": "int16", "I32": "int32", "I64": "int64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn",
            "F8_E5M2": "float8_e5m2"}.get(name, name)


def _reject_a8_modules(model: nn.Module) -> None:
    """The checkpoint format records intx QuantLinear modules only (layout version 1)."""
    from .nn_a8 import W4A8Linear, _W8A8Linear

    for fqn, m in model.named_modules():
        if isinstance(m, (_W8A8Linear, W4A8Linear)):
            raise CheckpointError(f"{fqn}: save_quantized does not support {type(m).__name__} (8-bit activation "
                                  "modules) yet; keep the float model and quantize_ it after loading")


def _reject_unsupported_modules(model: nn.Module) -> None:
    """Lookup-table layers (``LutLinear``) have no checkpoint entry yet: say so instead of writing
    a directory that ``load_quantized`` would reject."""
    from .nn_lut import LutLinear

    _reject_modules(model, LutLinear, "lookup-table weights", "qweight, scales, table, bias",
                    "quantized with the same config")


def _reject_sparse24_modules(model: nn.Module) -> None:
    """2:4-sparse layers (``Sparse24Linear``) have no checkpoint entry yet (the format is intx-only)."""
    from .nn_sparse24 import Sparse24Linear

    _reject_modules(model, Sparse24Linear, "2:4 sparse int4", "qweight, meta, scales, zeros, bias",
                    "quantize_d with the same Int4Sparse24WeightConfig")


def _reject_modules(model: nn.Module, cls, what: str, tensors: str, rebuild: str) -> None:
    """UnsupportedError naming the first ``cls`` modules of ``model`` and the state-dict way around."""
    from .errors import UnsupportedError

    found = [fqn for fqn, m in model.named_modules() if isinstance(m, cls)]
    if found:
        raise UnsupportedError(
            f"save_quantized does not support {cls.__name__} ({what}) yet: {', '.join(found[:5])}"
            f"{' ...' if len(found) > 5 else ''}; save model.state_dict() ({tensors}) "
            f"and load it into a model {rebuild} instead")
