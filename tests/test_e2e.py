"""``lowbit bench e2e`` and ``lowbit report`` end to end on CPU (tiny configs, reference backend)."""
import json

import pytest
import torch

from helpers import gpu_only
from lowbit import ops
from lowbit.bench import main as bench_main
from lowbit.bench.report_roofline import PRESETS, load_ceilings
from lowbit.cli import main as cli_main

PNG = b"\x89PNG\r\n\x1a\n"
MICRO = {"name": "micro", "vocab_size": 128, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64}
SMALL = ["--model", "tiny", "--batch", "1,2", "--prompt", "8", "--decode", "4", "--acc-batch", "2",
         "--acc-decode", "4", "--compile", "none"]


@pytest.fixture
def reference_backend(monkeypatch):
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def read(out, stem="e2e_tiny"):
    return json.loads((out / f"{stem}.json").read_text())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (no GPU) behaviour")
def test_e2e_cpu_reports_accuracy_and_says_tokens_per_s_needs_a_gpu(tmp_path, reference_backend, capsys):
    rc = bench_main(["e2e", *SMALL, "--formats", "bf16,tinygemm,w8a16,w2a16", "--out", str(tmp_path)])
    assert rc == 0
    doc = read(tmp_path)
    assert doc["complete"] and doc["setup"]["timed"] is False and doc["meta"]["env"]["LOWBIT_BACKEND"] == "reference"
    assert any("needs a GPU" in n for n in doc["notes"])
    f = doc["formats"]
    assert f["tinygemm"]["status"] == "SKIP" and "CUDA" in f["tinygemm"]["note"]
    assert f["bf16"]["accuracy"]["top1_agree"] == 1.0 and f["bf16"]["accuracy"]["kl_mean"] < 1e-6
    assert f["w8a16"]["accuracy"]["top1_agree"] > f["w2a16"]["accuracy"]["top1_agree"]
    assert f["w8a16"]["accuracy"]["kl_mean"] < f["w2a16"]["accuracy"]["kl_mean"]
    assert f["w2a16"]["weight_bytes"] < f["w8a16"]["weight_bytes"] < f["bf16"]["weight_bytes"]
    assert doc["reference"]["positions"] == 2 * (8 + 4) and doc["reference"]["label"] == "fp32"
    assert 0.5 < doc["reference"]["entropy_nats"] < doc["reference"]["uniform_nats"] - 0.5
    pts = doc["points"]
    assert len(pts) == 4 * 2
    assert all(p["decode_tok_s"] is None for p in pts)
    assert {p["status"] for p in pts if p["format"] != "tinygemm"} == {"ok"}
    assert (tmp_path / "e2e_tiny.png").read_bytes()[:8] == PNG
    txt = (tmp_path / "e2e_tiny.txt").read_text()
    assert "top-1 agree" in txt and "needs a GPU" in txt and "lowbit bench e2e" in txt
    assert "needs a GPU" in capsys.readouterr().out


def test_e2e_timed_path_resume_and_ratios(tmp_path, reference_backend):
    """--time-without-gpu runs the timing code on CPU (numbers meaningless), then --resume reuses them."""
    args = ["e2e", *SMALL, "--formats", "bf16,w4a16", "--time-without-gpu", "--reps", "2", "--out", str(tmp_path)]
    assert bench_main(args) == 0
    doc = read(tmp_path)
    by = {(p["format"], p["batch"]): p for p in doc["points"]}
    for p in by.values():
        assert p["status"] == "ok" and p["prefill_tok_s"] > 0 and p["decode_tok_s"] > 0
        assert p["decode_tok_s"] == pytest.approx(p["batch"] * 4 / p["decode_s"])
        assert p["step_ms"] == pytest.approx(1e3 * p["decode_s"] / 4)
    assert by[("bf16", 2)]["decode_x_dense"] == pytest.approx(1.0)
    w4 = by[("w4a16", 2)]
    assert w4["decode_x_dense"] == pytest.approx(w4["decode_tok_s"] / by[("bf16", 2)]["decode_tok_s"])
    assert (tmp_path / "e2e_tiny.png").read_bytes()[:8] == PNG
    # resume with one more batch size: the earlier points are kept as they were, only B=3 runs
    assert bench_main(args[:-2] + ["--batch", "1,2,3", "--resume", "--out", str(tmp_path)]) == 0
    doc2 = read(tmp_path)
    by2 = {(p["format"], p["batch"]): p for p in doc2["points"]}
    assert set(by2) == {(f, b) for f in ("bf16", "w4a16") for b in (1, 2, 3)}
    assert by2[("w4a16", 1)]["decode_s"] == by[("w4a16", 1)]["decode_s"]
    assert doc2["formats"]["w4a16"]["accuracy"] == doc["formats"]["w4a16"]["accuracy"]
    assert bench_main(args[:-2] + ["--prompt", "6", "--resume", "--time-budget", "0", "--out", str(tmp_path)]) == 0
    doc3 = read(tmp_path)  # another setup: nothing reused; the budget is spent, so every point is SKIP
    assert {(p["prompt"], p["status"]) for p in doc3["points"]} == {(6, "SKIP")}
    assert doc3["formats"]["w4a16"]["status"] == "SKIP" and "accuracy" not in doc3["formats"]["w4a16"]
    (tmp_path / "e2e_tiny.txt").unlink()
    assert bench_main(["e2e", "--render", str(tmp_path / "e2e_tiny.json")]) == 0  # tables + plot from the JSON
    assert "time budget" in (tmp_path / "e2e_tiny.txt").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU: the Triton interpreter path")
def test_e2e_through_the_triton_interpreter(tmp_path, monkeypatch):
    """One tiny run where the quantized linears go through the Triton kernels (interpreter, fp16)."""
    monkeypatch.delenv("LOWBIT_BACKEND", raising=False)
    calls = []
    for name, fn in list(ops._LAUNCHERS.items()):
        monkeypatch.setitem(ops._LAUNCHERS, name, lambda *a, _n=name, _f=fn, **kw: calls.append(_n) or _f(*a, **kw))
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    rc = bench_main(["e2e", "--model", str(cfg), "--formats", "bf16,w4a16", "--dtype", "fp16", "--batch", "1",
                     "--prompt", "9", "--decode", "2", "--acc-batch", "1", "--acc-decode", "1", "--compile", "none",
                     "--no-plots", "--out", str(tmp_path)])
    assert rc == 0
    doc = read(tmp_path, "e2e_micro")
    assert doc["formats"]["w4a16"]["accuracy"]["top1_agree"] >= 0.6
    assert doc["formats"]["w4a16"]["accuracy"]["kl_mean"] < 0.2
    assert {"triton_gemv", "triton_gemm"} <= set(calls)  # decode (M=1) and prefill (M=9) kernels both ran


def test_e2e_bad_arguments_exit_2(tmp_path, capsys):
    assert bench_main(["e2e", "--formats", "fp4a8", "--out", str(tmp_path)]) == 2
    assert "unknown format" in capsys.readouterr().err
    assert bench_main(["e2e", "--model", "nope", "--out", str(tmp_path)]) == 2
    if not torch.cuda.is_available():
        assert bench_main(["e2e", "--model", "llama3-8b", "--out", str(tmp_path)]) == 2
        assert "--model tiny" in capsys.readouterr().err


def test_report_tiny_writes_table_json_and_plot(tmp_path):
    rc = cli_main(["report", "tiny", "--m", "1,16,4096", "--out", str(tmp_path)])
    assert rc == 0
    doc = json.loads((tmp_path / "report_tiny.json").read_text())
    assert (tmp_path / "report_tiny.png").read_bytes()[:8] == PNG
    txt = (tmp_path / "report_tiny.txt").read_text()
    assert "compute-bound from M" in txt and "lowbit report tiny" in txt
    assert len(doc["points"]) == 5 * 5 * 3  # layers x formats x M
    p = next(p for p in doc["points"] if (p["layer"], p["format"], p["m"]) == ("down", "w4a16", 16))
    assert (p["n"], p["k"], p["count"]) == (256, 512, 2)
    assert p["weight_bytes"] == 256 * 512 // 2 + 4 * 256 * (2 + 1)  # 4-bit codes + bf16 scale, uint8 zero / group
    assert p["bytes"] == p["weight_bytes"] + 16 * (256 + 512) * 2 and p["flops"] == 2 * 16 * 256 * 512
    lm = [q for q in doc["points"] if q["layer"] == "lm_head" and q["m"] == 1]
    assert {q["stored_as"] for q in lm} == {"bf16"}  # not quantized unless --quantize-lm-head


def test_report_llama3_8b_bounds_and_ceilings_file(tmp_path):
    c = PRESETS["h100"]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"ceilings": {"stream_bytes": c["stream_bytes"], "stream_us": c["stream_us"],
                                             "peaks": c["peaks"]}}))
    assert load_ceilings(str(path), "h200").detail["source"] == str(path)
    assert cli_main(["report", "llama3-8b", "--ceilings", str(path), "--m", "1,32,8192", "--no-plots",
                     "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "report_llama3-8b.json").read_text())
    by = {(p["layer"], p["format"], p["m"]): p for p in doc["points"]}
    assert by[("gate_up", "bf16", 1)]["bound"] == "memory" and by[("gate_up", "bf16", 8192)]["bound"] == "compute"
    assert by[("qkv", "w4a16", 1)]["sol_us"] < by[("qkv", "bf16", 1)]["sol_us"] / 2
    steps = {(s["format"], s["m"]): s for s in doc["model_steps"]}
    assert 2.0 < steps[("w4a16", 1)]["x_first"] < 3.2  # the lm_head stays bf16: well under 4x
    assert steps[("w2a16", 1)]["x_first"] > steps[("w3a16", 1)]["x_first"] > steps[("w4a16", 1)]["x_first"]
    assert steps[("w4a16", 8192)]["x_first"] == pytest.approx(1.0, rel=0.02)  # compute-bound: no gain
    assert cli_main(["report", "nope", "--out", str(tmp_path)]) == 2


@gpu_only
def test_e2e_on_the_gpu_tiny(tmp_path, monkeypatch):
    """The timed GPU path at tiny size: every format and batch ok, layers share one compiled graph."""
    monkeypatch.delenv("LOWBIT_BACKEND", raising=False)
    rc = bench_main(["e2e", "--model", "tiny", "--formats", "bf16,tinygemm,w4a16,w2a16", "--batch", "3",
                     "--prompt", "16", "--decode", "8", "--acc-batch", "2", "--out", str(tmp_path)])
    assert rc == 0
    doc = read(tmp_path)
    assert doc["setup"]["timed"] and doc["setup"]["dtype"] == "bf16"
    for p in doc["points"]:
        assert p["status"] == "ok", p
        assert p["decode_tok_s"] > 0 and p["prefill_tok_s"] > 0 and p["peak_mem_gib"] > 0
        assert p["graphs_compiled"] == 2 and p["greedy_agree"] >= 0.5
    f = doc["formats"]
    assert f["w4a16"]["accuracy"]["top1_agree"] > f["w2a16"]["accuracy"]["top1_agree"]
    assert abs(f["tinygemm"]["accuracy"]["top1_agree"] - f["w4a16"]["accuracy"]["top1_agree"]) < 0.1
    assert (tmp_path / "e2e_tiny.png").read_bytes()[:8] == PNG
