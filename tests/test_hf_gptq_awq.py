"""lowbit.hf.load_gptq_awq: GPTQ / AWQ checkpoint directories (config.json quantization_config +
safetensors with qweight/qzeros/scales/g_idx) onto lowbit QuantLinears without requantizing.

Fixtures: a tiny Llama built from a config, every linear but lm_head packed by the real packers
(AutoRound's port of AutoGPTQ's v1 packer; AutoAWQ's WQLinear_GEMM). Oracle: the same model with
each weight replaced by the packer's own dequantization (its module forward / dequantize_gemm).
One layer's act-order g_idx is ours (the packer ignores g_idx), set on the real packed tensors.
"""
import json

import pytest
import torch

from hf_fixtures import awq_checkpoint, gptq_checkpoint, logits, tiny_llama, tokens, within

transformers = pytest.importorskip("transformers", reason="needs transformers (the [hf] extra)")
import lowbit.hf  # noqa: E402
from lowbit import QuantLinear, UnsupportedError  # noqa: E402
from lowbit.checkpoint import CheckpointError  # noqa: E402
from lowbit.convert import PermutedQuantLinear  # noqa: E402
from lowbit.hf import LowbitConfig, load_gptq_awq  # noqa: E402

ACT_ORDER = "model.layers.1.mlp.down_proj"


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def build(kind, path, **kw):
    model = tiny_llama(seed=2)
    oracle = gptq_checkpoint(model, path, **kw) if kind == "gptq" else awq_checkpoint(model, path, **kw)
    return oracle


def quant_modules(model):
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, QuantLinear)}


@pytest.mark.parametrize("kind", ["gptq", "awq"])
def test_checkpoint_loads_on_lowbit_and_round_trips(tmp_path, kind):
    oracle = build(kind, tmp_path / kind, **({"act_order_layer": ACT_ORDER} if kind == "gptq" else {}))
    model = load_gptq_awq(str(tmp_path / kind), dtype=torch.float32)
    mods = quant_modules(model)
    assert len(mods) == 14 and isinstance(model.lm_head, torch.nn.Linear)
    assert all(m.bits == 4 and m.group_size == 32 and m.scales.dtype == torch.float16 for m in mods.values())
    assert isinstance(mods[ACT_ORDER], PermutedQuantLinear) == (kind == "gptq")
    for fqn, m in mods.items():  # dequantized weights equal the packer's dequantization exactly
        w = m.weight.dequantize(torch.float32)[:, : m.in_features]
        if isinstance(m, PermutedQuantLinear):
            w = torch.empty_like(w).index_copy_(1, m.perm, w)
        assert torch.equal(w, oracle.get_submodule(fqn).weight.float()), fqn
    x = tokens()
    out = logits(model, x)
    assert within(out, logits(oracle, x), 1e-5)

    qc = model.config.quantization_config
    assert qc.checkpoint_format == "lowbit" and qc.source_config["quant_method"] == kind
    model.save_pretrained(tmp_path / "lowbit")
    saved = json.loads((tmp_path / "lowbit" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "lowbit" and saved["modules"][ACT_ORDER]["class"] == type(mods[ACT_ORDER]).__name__
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lowbit", dtype=torch.float32)
    assert {f: type(m) for f, m in quant_modules(again).items()} == {f: type(m) for f, m in mods.items()}
    assert torch.equal(logits(again, x), out)


def _rewrite_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("kind,changes,match", [
    ("gptq", {"bits": 1}, "GPTQ bits must be one of"),
    ("gptq", {"checkpoint_format": "marlin"}, "marlin"),
    ("awq", {"version": "gemv"}, "only 'gemm'"),
    ("awq", {"zero_point": False}, "zero_point"),
    ("awq", {"quant_method": "bitsandbytes"}, "GPTQ and AWQ"),
])
def test_unsupported_settings_are_refused(tmp_path, kind, changes, match):
    build(kind, tmp_path / kind)
    _rewrite_config(tmp_path / kind, **changes)
    with pytest.raises(UnsupportedError, match=match):
        load_gptq_awq(str(tmp_path / kind))


def test_not_a_quantized_checkpoint(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "dense")
    with pytest.raises(UnsupportedError, match="no quantization_config"):
        load_gptq_awq(str(tmp_path / "dense"))


def test_missing_and_orphan_tensors_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    build("gptq", tmp_path / "g")
    file = str(tmp_path / "g" / "model.safetensors")
    t = load_file(file)
    del t["model.layers.0.self_attn.k_proj.qzeros"]
    t["model.layers.0.self_attn.nope.qweight"] = t["model.layers.0.self_attn.q_proj.qweight"].clone()
    save_file(t, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        load_gptq_awq(str(tmp_path / "g"))
    msg = str(e.value)
    assert "missing (1): model.layers.0.self_attn.k_proj.qzeros" in msg and "self_attn.nope.qweight" in msg


def test_wrong_group_size_in_config_is_a_format_error(tmp_path):
    build("gptq", tmp_path / "g")
    _rewrite_config(tmp_path / "g", group_size=64)  # scales hold K/32 groups, the config claims K/64
    with pytest.raises(lowbit.FormatError, match=r"q_proj \(GPTQ\): scales must have shape"):
        load_gptq_awq(str(tmp_path / "g"))


def test_quantization_config_argument_is_refused(tmp_path):
    build("awq", tmp_path / "a")
    with pytest.raises(TypeError, match="drop quantization_config"):
        load_gptq_awq(str(tmp_path / "a"), quantization_config=LowbitConfig())
