import json

import pytest
import torch
from torch import nn

import lowbit
from lowbit import FormatError, Int4WeightOnlyConfig, IntxWeightOnlyConfig, QuantLinear, quantize_

from helpers import DEVICE, assert_close_matmul


class TinyMLP(nn.Module):
    def __init__(self, hidden=128, inter=320):
        super().__init__()
        self.up = nn.Linear(hidden, inter, bias=False)
        self.down = nn.Linear(inter, hidden, bias=True)
        self.head = nn.Linear(hidden, 40)

    def forward(self, x):
        return self.head(self.down(torch.nn.functional.silu(self.up(x))))


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyMLP().to(DEVICE, torch.float16)


@pytest.mark.parametrize("config", [Int4WeightOnlyConfig(group_size=64),
                                    IntxWeightOnlyConfig(bits=3, group_size=32, symmetric=True),
                                    IntxWeightOnlyConfig(bits=6, group_size=None, zero_kind="float")])
def test_quantize_replaces_linears_and_stays_close(config):
    model = _model()
    x = torch.randn(2, 3, 128).to(DEVICE, torch.float16)
    dense = model(x).float()
    quantize_(model, config)
    assert all(isinstance(m, QuantLinear) for m in (model.up, model.down, model.head))
    y = model(x).float()
    rel = (y - dense).norm() / dense.norm()
    assert rel < {3: 0.35, 4: 0.15, 6: 0.05}[config.bits], rel


def test_quantlinear_matches_its_dequantized_weight():
    lin = nn.Linear(200, 72).to(DEVICE, torch.float16)
    ql = QuantLinear.from_linear(lin, IntxWeightOnlyConfig(bits=5, group_size=64).format())
    x = torch.randn(4, 200).to(DEVICE, torch.float16)
    w = ql.weight.dequantize()
    ref = x.float() @ w.t() + lin.bias.float()
    assert_close_matmul(ql(x), ref, x, w, torch.float16)
    assert "bits=5" in repr(ql)


def test_filter_fn_selects_modules():
    model = _model()
    quantize_(model, Int4WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn != "head")
    assert isinstance(model.up, QuantLinear) and isinstance(model.head, nn.Linear)


def test_state_dict_round_trip_into_fresh_model(tmp_path):
    config = IntxWeightOnlyConfig(bits=4, group_size=64)
    model = quantize_(_model(seed=0), config)
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path)
    fresh = quantize_(_model(seed=1), config)  # different weights before loading
    x = torch.randn(3, 128).to(DEVICE, torch.float16)
    assert not torch.equal(fresh(x), model(x))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(fresh(x), model(x))


def test_config_json_round_trip():
    for cfg in (Int4WeightOnlyConfig(group_size=32), IntxWeightOnlyConfig(bits=3, symmetric=True, scale_dtype="float16")):
        back = lowbit.config_from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert back == cfg and type(back) is type(cfg)


@pytest.mark.parametrize("make", [lambda: IntxWeightOnlyConfig(bits=0), lambda: IntxWeightOnlyConfig(group_size=100),
                                  lambda: Int4WeightOnlyConfig(bits=3), lambda: IntxWeightOnlyConfig(scale_dtype="int8"),
                                  lambda: lowbit.config_from_dict({"type": "Nope"})])
def test_bad_configs(make):
    with pytest.raises(FormatError):
        make()


def test_unknown_config_type_and_non_linear_target():
    with pytest.raises(FormatError):
        quantize_(_model(), object())
    with pytest.raises(FormatError, match="nn.Linear"):
        quantize_(_model(), Int4WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "")  # root excluded -> no-op
        quantize_(nn.Sequential(nn.ReLU()), Int4WeightOnlyConfig(), filter_fn=lambda m, fqn: True)


def test_warmup_runs_every_distinct_layer_once_per_batch_size():
    model = quantize_(_model(), Int4WeightOnlyConfig(group_size=64))
    stats = lowbit.warmup(model, [1, 3, 3, 17], dtype=torch.float16, verbose=False)
    assert stats["distinct_layers"] == 3 and stats["batch_sizes"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cli_tune_without_gpu_says_so(capsys):
    from lowbit.cli import main

    assert main(["tune", "--bits", "4"]) == 2
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,k_order", [
    (lowbit.IntxFormat(4, 128), 1), (lowbit.IntxFormat(4, 64, True), 1), (lowbit.IntxFormat(4, None), 1),
    (lowbit.IntxFormat(4, 128, zero_kind="float"), 0), (lowbit.IntxFormat(3, 128), 1), (lowbit.IntxFormat(2, 64, True), 1),
    (lowbit.IntxFormat(2, None), 0), (lowbit.IntxFormat(1, 128, True), 0),
], ids=["w4-int-zero", "w4-sym", "w4-perchannel", "w4-float-zero", "w3", "w2-sym", "w2-perchannel-Kp224", "w1-sym"])
def test_quantlinear_runtime_word_order(fmt, k_order):
    """Integer-zero weights whose planes fill whole mma chunks run in the mma word order (float zeros, a
    per-channel Kp of 224 for 64-k 2-bit chunks and the 0.5 zero of symmetric 1-bit codes do not); the
    state dict, ``weight`` and a reload still see the natural order; the caller's IntxWeight is
    untouched; outputs match the oracle."""
    from lowbit.formats.intx import to_mma_words
    from lowbit.nn import use_mma_words_

    w = fmt.quantize(torch.randn(40, 200, generator=torch.Generator().manual_seed(0)) * 0.05).to(DEVICE)
    natural = w.qweight.clone()
    m = QuantLinear(w)
    assert m.k_order == k_order and torch.equal(w.qweight, natural)
    assert torch.equal(m.qweight, to_mma_words(natural, fmt.bits) if k_order else natural)
    assert torch.equal(m.weight.qweight, natural) and torch.equal(m.state_dict()["qweight"], natural)
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(1)).to(DEVICE, torch.float16)
    ref = x.float() @ w.dequantize().t()
    assert_close_matmul(m(x), ref.half(), x, w.dequantize(), torch.float16)

    # load a natural state dict into a module already in the mma order; the source dict is not modified
    other = QuantLinear(fmt.quantize(torch.randn(40, 200) * 0.05).to(DEVICE))
    sd = m.state_dict()
    other.load_state_dict(sd)
    assert torch.equal(sd["qweight"], natural) and torch.equal(other.qweight, m.qweight)
    assert torch.equal(other(x), m(x))

    # a module built on the meta device starts natural; use_mma_words_ converts it once it is filled
    meta = QuantLinear(lowbit.IntxWeight(torch.empty_like(natural, device="meta"), w.scales.to("meta"),
                                         None if w.zeros is None else w.zeros.to("meta"), w.bits, w.group_size,
                                         w.in_features)).to_empty(device=DEVICE)
    assert meta.k_order == 0
    meta.load_state_dict(sd)
    use_mma_words_(meta)
    assert meta.k_order == k_order and torch.equal(meta.qweight, m.qweight)


def test_w4a8_linear_keeps_natural_words():
    from lowbit.nn_a8 import W4A8Linear

    w = lowbit.IntxFormat(4, 128).quantize(torch.randn(32, 256) * 0.05)
    assert W4A8Linear(w).k_order == 0
