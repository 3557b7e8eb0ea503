"""save_quantized / load_quantized: safetensors shards + JSON, exact round trips, clear errors."""
import json
import os
import pickle

import pytest
import torch
from torch import nn

import lowbit
from lowbit import (CheckpointError, Int4WeightOnlyConfig, IntxFormat, IntxWeightOnlyConfig, QuantLinear,
                    load_quantized, quantize_, save_quantized)
from lowbit.convert import PermutedQuantLinear

safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB, HIDDEN, INTER = 50, 64, 160


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.norm = nn.LayerNorm(HIDDEN)
        self.up = nn.Linear(HIDDEN, INTER, bias=False)
        self.down = nn.Linear(INTER, HIDDEN)
        self.proj = nn.Linear(HIDDEN, HIDDEN)
        self.keep = nn.Linear(HIDDEN, HIDDEN)  # stays dense
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied: stored once, recorded as an alias
        self.register_buffer("step", torch.tensor(3))

    def forward(self, ids):
        h = self.norm(self.embed(ids))
        h = self.down(torch.nn.functional.silu(self.up(h))) + self.proj(h)
        return self.head(self.keep(h))


def tiny(seed):
    torch.manual_seed(seed)
    return Tiny().half()


def quantized_tiny(seed=0):
    model = tiny(seed)
    quantize_(model, Int4WeightOnlyConfig(group_size=32), filter_fn=lambda m, fqn: fqn == "up")
    # K=160 in groups of 32: 5 groups; symmetric, no zeros tensor
    quantize_(model, IntxWeightOnlyConfig(bits=3, group_size=32, symmetric=True), filter_fn=lambda m, fqn: fqn == "down")
    w = IntxFormat(6, None, False, "float", torch.float16).quantize(model.proj.weight.detach())
    perm = torch.randperm(HIDDEN, generator=torch.Generator().manual_seed(seed))
    model.proj = PermutedQuantLinear(w, perm, model.proj.bias)  # act-order layer, float zero points
    return model


IDS = torch.tensor([[1, 7, 3], [4, 0, 49]])


def test_round_trip_is_bit_identical(tmp_path):
    model = quantized_tiny()
    y = model(IDS)
    save_quantized(model, tmp_path, config=Int4WeightOnlyConfig(group_size=32), max_shard_size=8000)

    files = sorted(os.listdir(tmp_path))
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert set(files) == set(shards) | {"model.safetensors.index.json", "lowbit_config.json"}
    cfg = json.loads((tmp_path / "lowbit_config.json").read_text())
    assert cfg["formats"] == {"intx": {"layout_version": 1}} and cfg["config"]["group_size"] == 32
    assert cfg["modules"]["proj"]["class"] == "PermutedQuantLinear" and cfg["modules"]["proj"]["zero_kind"] == "float"
    assert cfg["modules"]["down"]["zero_kind"] is None and cfg["aliases"] == {"head.weight": "embed.weight"}
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert "head.weight" not in index["weight_map"] and "up.qweight" in index["weight_map"]

    fresh = tiny(seed=1)  # different random weights, plain nn.Linear layers
    assert load_quantized(fresh, tmp_path) is fresh
    assert isinstance(fresh.up, QuantLinear) and isinstance(fresh.proj, PermutedQuantLinear)
    assert isinstance(fresh.keep, nn.Linear) and fresh.head.weight is fresh.embed.weight
    for key, t in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], t) and fresh.state_dict()[key].dtype == t.dtype, key
    assert torch.equal(fresh(IDS), y)


def test_load_into_meta_device_model(tmp_path):
    model = quantized_tiny()
    save_quantized(model, tmp_path)
    with torch.device("meta"):
        fresh = tiny(seed=1)
    load_quantized(fresh, tmp_path)
    assert all(t.device.type == "cpu" for t in fresh.state_dict().values())
    assert torch.equal(fresh(IDS), model(IDS))


def test_load_into_already_quantized_model(tmp_path):
    model = quantized_tiny(seed=0)
    save_quantized(model, tmp_path)
    other = quantized_tiny(seed=5)
    load_quantized(other, tmp_path)
    assert torch.equal(other(IDS), model(IDS))


def test_never_unpickles(tmp_path, monkeypatch):
    save_quantized(quantized_tiny(), tmp_path)

    def refuse(*a, **k):
        raise AssertionError("load_quantized must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    load_quantized(tiny(seed=1), tmp_path)


def _error(model, path):
    before = {name: type(m) for name, m in model.named_modules()}
    with pytest.raises(CheckpointError) as info:
        load_quantized(model, path)
    assert {name: type(m) for name, m in model.named_modules()} == before  # untouched on failure
    return info.value


class Wider(Tiny):
    def __init__(self):
        super().__init__()
        self.extra = nn.Linear(HIDDEN, 8)  # not in the checkpoint
        del self.keep  # in the checkpoint, not in this model
        self.keep = nn.Identity()


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    save_quantized(quantized_tiny(), tmp_path)
    err = _error(Wider().half(), tmp_path)
    assert err.missing == ["extra.bias", "extra.weight"]
    assert err.unexpected == ["keep.bias", "keep.weight"]
    assert err.malformed == []
    assert "missing (2): extra.bias, extra.weight" in str(err) and "unexpected (2): keep.bias, keep.weight" in str(err)


def test_malformed_tensors_and_modules_are_listed(tmp_path):
    save_quantized(quantized_tiny(), tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = tmp_path / index["weight_map"]["up.scales"]
    tensors = safetensors_torch.load_file(shard)
    tensors["up.scales"] = tensors["up.scales"].float()  # wrong dtype
    safetensors_torch.save_file(tensors, shard)
    model = tiny(seed=1)
    model.down = nn.Linear(INTER + 32, HIDDEN).half()  # wrong shape for the recorded module
    err = _error(model, tmp_path)
    assert err.missing == [] and err.unexpected == []
    assert any(m.startswith("up.scales: checkpoint has float32 (2, 160), expected bfloat16") for m in err.malformed)
    assert any(m.startswith("down: the model's layer is 192->64, the checkpoint's 160->64") for m in err.malformed)


def test_dense_dtype_mismatch_and_missing_shard(tmp_path):
    save_quantized(quantized_tiny(), tmp_path)
    fp32 = tiny(seed=1).float()  # ordinary float tensors are cast, like load_state_dict
    load_quantized(fp32, tmp_path)
    assert fp32.keep.weight.dtype == torch.float32 and fp32.up.scales.dtype == torch.bfloat16

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    os.remove(tmp_path / index["weight_map"]["norm.weight"])
    err = _error(tiny(seed=1), tmp_path)
    assert "norm.weight: shard" in str(err) and "does not exist" in str(err)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="lowbit_config.json is missing"):
        load_quantized(tiny(0), tmp_path)
    save_quantized(quantized_tiny(), tmp_path)
    cfg = json.loads((tmp_path / "lowbit_config.json").read_text())
    cfg["formats"]["intx"]["layout_version"] = 2
    (tmp_path / "lowbit_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="intx layout version 2"):
        load_quantized(tiny(0), tmp_path)


def test_resaving_removes_stale_shards(tmp_path):
    model = quantized_tiny()
    save_quantized(model, tmp_path, max_shard_size=4000)
    many = len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")])
    save_quantized(model, tmp_path, max_shard_size="1GB")
    assert many > 1 and [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")] == ["model-00001-of-00001.safetensors"]
    load_quantized(tiny(1), tmp_path)
    with pytest.raises(ValueError, match="max_shard_size"):
        save_quantized(model, tmp_path, max_shard_size="lots")
    assert lowbit.save_quantized is save_quantized


def test_module_entries_and_perm_are_validated(tmp_path):
    save_quantized(quantized_tiny(), tmp_path)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = tmp_path / index["weight_map"]["proj.perm"]
    tensors = safetensors_torch.load_file(shard)
    tensors["proj.perm"] = torch.zeros_like(tensors["proj.perm"])  # right shape/dtype, not a permutation
    safetensors_torch.save_file(tensors, shard)
    err = _error(tiny(1), tmp_path)
    assert err.malformed == ["proj.perm: not a permutation of range(in_features)"]

    model = tiny(1)
    model.up = nn.Conv1d(HIDDEN, INTER, 1).half()  # named in lowbit_config.json, wrong kind of module
    del model.down
    err = _error(model, tmp_path)
    assert "up: expected nn.Linear or QuantLinear, the model has Conv1d" in err.malformed
    assert "down: named in lowbit_config.json but the model has no such module" in err.malformed
    assert err.missing == [] and err.unexpected == []  # the modules' own keys are not listed again


def test_views_of_one_storage_are_saved_apart(tmp_path):
    # Two parameters viewing one storage (a fused weight split in two): safetensors refuses shared
    # memory, so the second is copied; config must be a dict or have to_dict().
    model = tiny(0)
    fused = torch.randn(2 * HIDDEN, HIDDEN).half()
    model.keep.weight = nn.Parameter(fused[:HIDDEN])
    model.norm.weight = nn.Parameter(fused[HIDDEN:, 0])
    save_quantized(model, tmp_path, config={"note": "dense"})
    fresh = tiny(1)
    load_quantized(fresh, tmp_path)
    assert torch.equal(fresh.keep.weight, fused[:HIDDEN]) and torch.equal(fresh.norm.weight, fused[HIDDEN:, 0])
    with pytest.raises(TypeError, match="config must be"):
        save_quantized(model, tmp_path, config=3)
