"""lowbit.hf: quantize on load through from_pretrained, save_pretrained -> from_pretrained round trip,
LowbitConfig JSON, errors. Tiny Llama / Mixtral built from configs, CPU reference backend (one test
runs the Triton kernels: the interpreter with fp16 on the CPU)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from hf_fixtures import logits, rel_err, tiny_llama, tiny_mixtral, tokens, within

transformers = pytest.importorskip("transformers", reason="needs transformers (the [hf] extra)")
pytest.importorskip("safetensors")
import lowbit.hf  # noqa: E402
from lowbit import FormatError, Int4WeightOnlyConfig, IntxWeightOnlyConfig, QuantLinear, UnsupportedError, quantize_  # noqa: E402
from lowbit.checkpoint import CheckpointError  # noqa: E402
from lowbit.hf import LowbitConfig, quantize_weight  # noqa: E402

AutoModel = transformers.AutoModelForCausalLM


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def save_dense(model, path):
    model.save_pretrained(path)
    return path


def quant_buffers(model):
    return {k: v for k, v in model.state_dict().items() if k.rpartition(".")[0] in quant_names(model)}


def quant_names(model):
    return {fqn for fqn, m in model.named_modules() if isinstance(m, QuantLinear)}


def dequantized_copy(dense, quantized):
    """``dense`` with every layer quantized in ``quantized`` replaced by its dequantized weight (fp32)."""
    for fqn, m in quantized.named_modules():
        if isinstance(m, QuantLinear):
            dense.get_submodule(fqn).weight.data = m.weight.dequantize(torch.float32)[:, : m.in_features].to(
                dense.get_submodule(fqn).weight.dtype)
    return dense


CONFIGS = [
    pytest.param(IntxWeightOnlyConfig(bits=4, group_size=32), id="int4-g32"),
    pytest.param(IntxWeightOnlyConfig(bits=3, group_size=64, symmetric=True), id="int3-g64-sym"),
    pytest.param(IntxWeightOnlyConfig(bits=8, group_size=None, zero_kind="float", scale_dtype="float32"), id="int8-perchannel-floatzero"),
]


@pytest.mark.parametrize("qcfg", CONFIGS)
def test_llama_quantize_on_load_save_reload(tmp_path, qcfg):
    dense = tiny_llama(attention_bias=True)  # biases exercise the bias hand-over
    src = save_dense(dense, tmp_path / "dense")
    x = tokens()
    ref = logits(dense, x)

    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(qcfg), dtype=torch.float32)
    names = quant_names(model)
    linears = {f for f, m in dense.named_modules() if isinstance(m, torch.nn.Linear)}
    assert names == linears - {"lm_head"} and isinstance(model.lm_head, torch.nn.Linear)
    # the same buffers as lowbit.quantize_ on the dense model
    direct = quantize_(tiny_llama(attention_bias=True), qcfg, lambda m, f: isinstance(m, torch.nn.Linear) and f != "lm_head")
    expect = direct.state_dict()
    for key, t in model.state_dict().items():
        assert t.dtype == expect[key].dtype and torch.equal(t, expect[key]), key
    out = logits(model, x)
    assert within(out, logits(dequantized_copy(tiny_llama(attention_bias=True), model), x), 1e-5)
    assert rel_err(out, ref) < {8: 0.02, 4: 0.12, 3: 0.5}[qcfg.bits]  # quantization error, not a wrong kernel

    model.save_pretrained(tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert saved["quant_method"] == "lowbit" and saved["quant_config"] == qcfg.to_dict()
    assert set(saved["modules"]) == names and saved["modules_to_not_convert"][0] == "lm_head"
    assert LowbitConfig.from_dict(saved) == model.config.quantization_config

    again = AutoModel.from_pretrained(tmp_path / "q")  # no quantization_config: config.json says lowbit
    assert quant_names(again) == names
    for key, t in quant_buffers(model).items():
        got = again.state_dict()[key]
        assert got.dtype == t.dtype and torch.equal(got, t), key
    assert torch.equal(logits(again, x), out)


def test_mixtral_round_trip(tmp_path):
    dense = tiny_mixtral()
    src = save_dense(dense, tmp_path / "dense")
    x = tokens()
    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(IntxWeightOnlyConfig(bits=4, group_size=32)),
                                      dtype=torch.float32)
    names = quant_names(model)
    assert {"model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.o_proj"} <= names
    # routers stay dense; experts: fused 3-D parameters (transformers 5) stay dense, per-expert nn.Linear (4.x) quantized
    assert not any(n.endswith(".gate") or "router" in n for n in names)
    experts = model.model.layers[0].mlp.experts if hasattr(model.model.layers[0], "mlp") else None
    if experts is not None and isinstance(getattr(experts, "gate_up_proj", None), torch.nn.Parameter):
        assert experts.gate_up_proj.dim() == 3 and experts.gate_up_proj.dtype == torch.float32
    else:
        assert any(".experts." in n for n in names)
    out = logits(model, x)
    assert rel_err(out, logits(dense, x)) < 0.1
    model.save_pretrained(tmp_path / "q")
    again = AutoModel.from_pretrained(tmp_path / "q")
    assert quant_names(again) == names and torch.equal(logits(again, x), out)


def test_bf16_generate_after_reload(tmp_path):
    src = save_dense(tiny_llama(dtype=torch.bfloat16), tmp_path / "dense")
    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(Int4WeightOnlyConfig(group_size=32)),
                                      dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.model.layers[0].mlp.up_proj.scales.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "q")
    again = AutoModel.from_pretrained(tmp_path / "q", dtype=torch.bfloat16)
    x = tokens(5)
    a = model.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=0)
    b = again.generate(x, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert a.shape == (2, 9) and torch.equal(a, b)


def test_triton_kernels_fp16(tmp_path, monkeypatch):
    """The loaded model on the Triton kernels (interpreter on the CPU) equals the reference backend."""
    from helpers import DEVICE

    src = save_dense(tiny_llama(dtype=torch.float16), tmp_path / "dense")
    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(Int4WeightOnlyConfig(group_size=32)),
                                      dtype=torch.float16, device_map=DEVICE)
    x = tokens(3).to(DEVICE)
    ref = logits(model, x)
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    out = logits(model, x)
    assert within(out, ref, 4e-3)  # fp16 accumulation-order differences only


def test_explicit_modules_to_not_convert(tmp_path):
    src = save_dense(tiny_llama(), tmp_path / "dense")
    qc = LowbitConfig(Int4WeightOnlyConfig(group_size=32), modules_to_not_convert=["lm_head", "mlp", r"model\.layers\.1\..*"])
    model = AutoModel.from_pretrained(src, quantization_config=qc, dtype=torch.float32)
    assert quant_names(model) == {f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"}
    model.save_pretrained(tmp_path / "q")
    assert quant_names(AutoModel.from_pretrained(tmp_path / "q")) == quant_names(model)


def _warm_up_bytes(model, expanded_device_map, hf_quantizer):
    """What transformers' ``caching_allocator_warmup`` would allocate on an accelerator holding every
    tensor of ``expanded_device_map``, computed by its own code: 5.x ``get_total_byte_count`` (asks
    ``hf_quantizer.param_element_size``), 4.x (model bytes as built) * 2 / ``get_accelerator_warm_up_factor``."""
    mu = transformers.modeling_utils
    gpu = torch.device("cuda", 0)  # a dict key only: nothing is allocated
    on_gpu = {name: gpu for name in expanded_device_map}
    if hasattr(mu, "get_total_byte_count"):
        return {q: mu.get_total_byte_count(model, on_gpu, hf)[gpu] for q, hf in (("quantized", hf_quantizer), ("dense", None))}
    dense = sum(model.get_parameter_or_buffer(n).numel() * model.get_parameter_or_buffer(n).element_size() for n in on_gpu)
    return {"quantized": dense * 2 // hf_quantizer.get_accelerator_warm_up_factor(), "dense": dense}


@pytest.mark.parametrize("qcfg", [pytest.param(Int4WeightOnlyConfig(group_size=32), id="int4-g32"),
                                  pytest.param(IntxWeightOnlyConfig(bits=3, group_size=None), id="int3-perchannel")])
def test_allocator_warm_up_is_sized_at_the_quantized_model(tmp_path, monkeypatch, qcfg):
    """transformers warms the CUDA caching allocator up with one allocation of the bytes the loaded model
    will take. With quantize on load that must be the quantized model, not the dense checkpoint (on 5.17
    it was the dense one: a Llama-3-8B warm-up of 15 GiB under a 12 GiB cap died). Computed by
    transformers' own functions on the meta model it is about to load into (intercepted at that call)."""
    mu = transformers.modeling_utils
    seen = []
    real = mu.caching_allocator_warmup
    monkeypatch.setattr(mu, "caching_allocator_warmup",
                        lambda model, dmap, hf: (seen.append(_warm_up_bytes(model, dmap, hf)), real(model, dmap, hf))[1])
    src = save_dense(tiny_llama(dtype=torch.bfloat16, attention_bias=True), tmp_path / "dense")
    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(qcfg), dtype=torch.bfloat16, device_map="cpu")
    assert len(seen) == 1 and quant_names(model)
    loaded = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    dense = sum(t.numel() * t.element_size() for t in tiny_llama(dtype=torch.bfloat16, attention_bias=True).state_dict().values())
    assert seen[0]["dense"] == dense
    if hasattr(mu, "get_total_byte_count"):  # 5.x: per tensor, exact
        assert seen[0]["quantized"] == loaded, (seen, loaded)
    else:  # 4.x: one integer divisor of the dense bytes, rounded so as not to exceed the quantized model
        assert 0.75 * loaded <= seen[0]["quantized"] <= loaded, (seen, loaded)
    assert dense > 2 * loaded

    model.save_pretrained(tmp_path / "q")  # reloading: the model is built with its final buffers
    again = AutoModel.from_pretrained(tmp_path / "q", dtype=torch.bfloat16, device_map="cpu")
    assert len(seen) == 2 and seen[1]["quantized"] == loaded == sum(
        t.numel() * t.element_size() for t in again.state_dict().values())


def test_quantize_weight_chunked_is_bit_identical():
    w = torch.randn(70, 96, generator=torch.Generator().manual_seed(0))
    for cfg in (IntxWeightOnlyConfig(bits=4, group_size=32), IntxWeightOnlyConfig(bits=3, group_size=None, symmetric=True)):
        fmt = cfg.format()
        whole, parts = fmt.quantize(w), quantize_weight(w, fmt, max_elements=96 * 8)  # 9 chunks, the last of 6 rows
        for name in ("qweight", "scales", "zeros"):
            a, b = getattr(whole, name), getattr(parts, name)
            assert (a is None and b is None) or torch.equal(a, b), name


def test_config_json_round_trip_and_validation():
    qc = LowbitConfig(IntxWeightOnlyConfig(bits=5, group_size=64), modules_to_not_convert=["lm_head"])
    d = json.loads(qc.to_json_string())
    assert d["quant_method"] == "lowbit" and d["quant_config"]["type"] == "IntxWeightOnlyConfig"
    assert LowbitConfig.from_dict(d) == qc
    with pytest.raises(FormatError, match="unknown config type"):
        LowbitConfig({"type": "NoSuchConfig"})
    with pytest.raises(FormatError, match="unknown keys"):
        LowbitConfig.from_dict({**d, "bogus": 1})
    with pytest.raises(FormatError, match="layout version"):
        LowbitConfig.from_dict({**d, "layout_version": 99})
    with pytest.raises(FormatError, match="bits must be"):
        LowbitConfig({"type": "IntxWeightOnlyConfig", "bits": 9})
    with pytest.raises(UnsupportedError, match="weight-only intx"):
        LowbitConfig(object())
    with pytest.raises(FormatError, match="checkpoint_format"):
        LowbitConfig(checkpoint_format="gguf")


def test_quantize_on_load_needs_quant_config(tmp_path):
    src = save_dense(tiny_llama(), tmp_path / "dense")
    with pytest.raises(FormatError, match="needs a quant_config"):
        AutoModel.from_pretrained(src, quantization_config=LowbitConfig())


@pytest.fixture
def saved_lowbit(tmp_path):
    src = save_dense(tiny_llama(), tmp_path / "dense")
    model = AutoModel.from_pretrained(src, quantization_config=LowbitConfig(Int4WeightOnlyConfig(group_size=32)),
                                      dtype=torch.float32)
    model.save_pretrained(tmp_path / "q")
    return tmp_path / "q"


def _edit_tensors(path, fn):
    from safetensors.torch import load_file, save_file

    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    assert len(files) == 1
    tensors = load_file(os.path.join(path, files[0]))
    fn(tensors)
    save_file(tensors, os.path.join(path, files[0]), metadata={"format": "pt"})


def test_reload_missing_key_is_named(saved_lowbit):
    _edit_tensors(saved_lowbit, lambda t: t.pop("model.layers.1.mlp.down_proj.qweight"))
    with pytest.raises(CheckpointError, match=r"missing \(1\): model\.layers\.1\.mlp\.down_proj\.qweight"):
        AutoModel.from_pretrained(saved_lowbit)


def test_reload_malformed_key_is_named(saved_lowbit):
    def bad(t):
        t["model.layers.0.self_attn.k_proj.scales"] = t["model.layers.0.self_attn.k_proj.scales"][:1].clone()
        t["model.layers.0.self_attn.v_proj.zeros"] = t["model.layers.0.self_attn.v_proj.zeros"].float()

    _edit_tensors(saved_lowbit, bad)
    with pytest.raises(CheckpointError, match="malformed") as e:
        AutoModel.from_pretrained(saved_lowbit)
    assert "k_proj.scales" in str(e.value) and "v_proj.zeros" in str(e.value)


def test_reload_module_entry_for_a_missing_layer(saved_lowbit):
    cfg_file = saved_lowbit / "config.json"
    cfg = json.loads(cfg_file.read_text())
    entry = cfg["quantization_config"]["modules"]["model.layers.0.mlp.up_proj"]
    cfg["quantization_config"]["modules"]["model.layers.7.mlp.up_proj"] = entry
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="layers.7.mlp.up_proj: recorded in quantization_config.modules"):
        AutoModel.from_pretrained(saved_lowbit)


def test_register_is_idempotent():
    from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

    lowbit.hf.register()
    lowbit.hf.register()
    assert AUTO_QUANTIZER_MAPPING["lowbit"] is lowbit.hf.LowbitHfQuantizer


def test_core_import_does_not_need_transformers():
    code = "import sys, lowbit, lowbit.checkpoint, lowbit.convert; assert 'transformers' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_layer_by_layer_peak_memory(tmp_path, monkeypatch):
    """bf16 weights loaded one tensor at a time and quantized on the GPU: the peak stays near the
    quantized model + one dense layer + the chunked quantizer's temporaries, below the dense model.
    The peak is the larger of transformers' allocator warm-up (one allocation of what it expects the
    model to take: ``param_element_size``, the quantized bytes = ``resident``) and, while loading,
    the quantized layers so far + one dense weight + temporaries (<= 64 B per chunk element). On 5.17
    before ``param_element_size`` was overridden the warm-up was the dense checkpoint (0.99 GB here)."""
    from lowbit.hf.measure import generate, measure_quantize_on_load, write_random_checkpoint
    from lowbit.hf.modules import CHUNK_ELEMENTS

    cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=2048, intermediate_size=8192, num_hidden_layers=8,
                                   num_attention_heads=16, num_key_value_heads=4, tie_word_embeddings=False)
    write_random_checkpoint(cfg, str(tmp_path / "ckpt"), device="cuda")
    monkeypatch.setenv("LOWBIT_BACKEND", "triton")
    model, r = measure_quantize_on_load(str(tmp_path / "ckpt"), Int4WeightOnlyConfig())
    assert r["quantized_layers"] == 56
    assert r["peak"] <= r["resident"] + 2 * r["largest_layer_dense"] + 64 * CHUNK_ELEMENTS, r
    assert r["peak"] < 0.75 * r["dense_checkpoint"], r
    x = tokens(5).cuda()
    out = logits(model, x)
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")
    ref = logits(model, x)
    # bf16 kernels vs dequantize + matmul through 8 random layers: a norm-wise bound (the per-op
    # kernel tests bound each matmul elementwise); the elementwise 3e-2 failed on the H200 at 004e29c
    rel = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
    assert rel < 3e-2, rel
    assert len(generate(model, 4)["tokens"]) == 4
