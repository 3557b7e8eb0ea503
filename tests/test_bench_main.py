"""End to end through lowbit.bench.main with a fake timer and fake ceilings (CPU, small shapes)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lowbit.bench import main
from lowbit.bench import cases as bench_cases
from lowbit.bench.cases import BASELINE, Bound, Case
from lowbit.bench.ceilings import fake_ceilings
from lowbit.bench.timing import FakeTimer

SRC = str(Path(__file__).resolve().parents[1] / "src")
PNG = b"\x89PNG\r\n\x1a\n"
ARGS = ["--shapes", "64x128,128x256", "--m", "1,16", "--dtype", "fp16"]


@pytest.fixture(autouse=True)
def reference_backend(monkeypatch):
    """The harness is under test here, not the kernels: run ours on the pure-torch reference backend."""
    monkeypatch.setenv("LOWBIT_BACKEND", "reference")


def run_main(tmp_path, extra, timer=None):
    timer = timer or FakeTimer(factors={"lowbit": 0.5, "dequant_cublas": 3.0})
    rc = main(ARGS + ["--out", str(tmp_path)] + extra, timer=timer, ceilings=fake_ceilings(["fp16"]))
    doc = json.loads((tmp_path / "w4a16_g128_fp16.json").read_text())
    return rc, doc, timer


def model_us(row, factor):
    return (2.0 + row["ideal_bytes"] / 3e12 * 1e6 + row["flops"] / 800e12 * 1e6) * factor


def test_end_to_end_writes_json_csv_table_and_plots(tmp_path, capsys):
    rc, doc, timer = run_main(tmp_path, ["--baselines", "cublas,dequant_cublas"])
    assert rc == 0
    pts = doc["points"]
    assert len(pts) == 2 * 2 * 3 and all(p["status"] == "ok" for p in pts)
    assert doc["complete"] is True
    by = {(p["n"], p["m"], p["method"]): p for p in pts}
    ours = by[(128, 16, "lowbit")]
    # 4-bit codes + fp16 scales + uint8 zeros (2 groups of 128) + x fp16 + y fp16
    assert ours["ideal_bytes"] == 128 * 256 // 2 + 2 * 128 * 3 + 16 * 256 * 2 + 16 * 128 * 2
    assert by[(128, 16, "cublas")]["ideal_bytes"] == 128 * 256 * 2 + 16 * 256 * 2 + 16 * 128 * 2
    assert ours["flops"] == 2 * 16 * 128 * 256
    assert ours["kernel_us"] == pytest.approx(model_us(ours, 0.5))
    assert ours["eager_us"] == pytest.approx(ours["kernel_us"] + 8.0)
    assert ours["wall_us"] == pytest.approx(ours["kernel_us"] + 16.0)
    cub = by[(128, 16, "cublas")]
    assert ours["speedup_cublas"] == pytest.approx(model_us(cub, 1.0) / model_us(ours, 0.5))
    assert by[(128, 16, "dequant_cublas")]["speedup_cublas"] < 0.5
    sol = fake_ceilings(["fp16"]).stream_time_us(ours["ideal_bytes"])
    assert ours["pct_sol"] == pytest.approx(100 * sol / ours["kernel_us"])
    assert ours["rel_err"] <= ours["tol"] and ours["copies"] == 2
    # metadata and ceilings are recorded
    meta = doc["meta"]
    assert meta["command"].startswith("lowbit bench --shapes 64x128,128x256")
    assert meta["torch"] == torch.__version__ and "git" in meta and "lowbit" in meta
    assert len(doc["ceilings"]["stream_bytes"]) == 12 and doc["ceilings"]["peaks"]["fp16"] == 800e12
    gm = {(g["method"], g["m"]): g for g in doc["geomeans"]}
    assert gm[("lowbit", 16)]["speedup_cublas"] > 1.0 and gm[("lowbit", 16)]["points"] == 2
    with open(tmp_path / "w4a16_g128_fp16.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {"kernel_us", "eager_us", "pct_sol", "speedup_cublas"} <= set(rows[0])
    table = (tmp_path / "w4a16_g128_fp16.txt").read_text()
    assert "geomean over shapes per M" in table and "custom/128x256" in table
    for name in ("speedup", "sol", "roofline"):
        png = tmp_path / f"w4a16_g128_fp16_{name}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "lowbit: per point" in out and "elapsed" in out
    assert set(timer.timed) == {"lowbit", "cublas", "dequant_cublas"}


class WrongCase(Case):
    """Deliberately wrong: 10% too large."""

    def bind(self, data):
        w = data.w_dense
        return Bound((w,), lambda x, ws: F.linear(x, ws[0]) * 1.1, 1, 2, 2, data.spec.dtype)


class BrokenCase(Case):
    def bind(self, data):
        return Bound((data.w_dense,), lambda x, ws: (_ for _ in ()).throw(RuntimeError("kaputt")), 1, 2, 2,
                     data.spec.dtype)


@pytest.fixture
def extra_cases():
    bench_cases.register(WrongCase("wrong", "deliberately wrong", role=BASELINE, default=False))
    bench_cases.register(BrokenCase("broken", "raises", role=BASELINE, default=False))
    yield
    bench_cases.unregister("wrong")
    bench_cases.unregister("broken")


def test_wrong_result_is_fail_and_never_timed(tmp_path, extra_cases):
    rc, doc, timer = run_main(tmp_path, ["--baselines", "cublas,wrong,broken"])
    assert rc == 0  # a failing baseline is a finding, not a crash
    wrong = [p for p in doc["points"] if p["method"] == "wrong"]
    assert len(wrong) == 4 and all(p["status"] == "FAIL" for p in wrong)
    assert all(p["kernel_us"] is None and p["eager_us"] is None for p in wrong)
    assert all(p["rel_err"] == pytest.approx(0.1, rel=0.05) for p in wrong)
    assert "wrong" not in timer.timed and "broken" not in timer.timed
    broken = [p for p in doc["points"] if p["method"] == "broken"]
    assert all(p["status"] == "ERROR" and "kaputt" in p["note"] for p in broken)
    assert all(p["status"] == "ok" for p in doc["points"] if p["method"] in ("lowbit", "cublas"))
    assert "FAIL" in (tmp_path / "w4a16_g128_fp16.txt").read_text()


def test_ours_failing_makes_a_nonzero_exit(tmp_path, monkeypatch):
    from lowbit.bench import cases_wxa16

    orig = cases_wxa16.Ours.bind

    def bad_bind(self, data):
        b = orig(self, data)
        run = b.run
        b.run = lambda x, w: run(x, w) * 0.5
        return b

    monkeypatch.setattr(cases_wxa16.Ours, "bind", bad_bind)
    rc, doc, timer = run_main(tmp_path, ["--baselines", "none"])
    assert rc == 1 and all(p["status"] == "FAIL" for p in doc["points"])
    assert timer.timed == []


def test_time_budget_skips_remaining_shapes(tmp_path):
    rc, doc, _ = run_main(tmp_path, ["--baselines", "cublas", "--time-budget", "0"])
    assert rc == 0 and doc["points"] and all(p["status"] == "SKIP" for p in doc["points"])


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--op", "wxa16", "--out", str(tmp_path)], timer=FakeTimer()) == 2
    assert main(["--shapes", "llama3-9b", "--out", str(tmp_path)], timer=FakeTimer()) == 2
    assert main(["--baselines", "nope", "--out", str(tmp_path)], timer=FakeTimer()) == 2
    assert "needs --bits" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cpu_without_fake_timer_exits_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LOWBIT_BENCH_FAKE_TIMER"}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "lowbit.bench", "--shapes", "64x128", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "timing needs a CUDA device" in p.stderr and "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())


def test_warmup_runs_cold_and_warm_children(tmp_path):
    env = dict(os.environ, LOWBIT_BENCH_FAKE_TIMER="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-m", "lowbit.bench", "warmup", "--shapes", "64x128", "--m", "1,2",
                        "--dtype", "fp16", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "warmup_w4a16_fp16.json").read_text())
    res = doc["results"]
    assert set(res) == {"cold (no cache)", "warm (on-disk)"}
    for r in res.values():
        assert [c["m"] for c in r["calls"]] == [1, 2]
        assert 0 < r["import_s"] < r["time_to_first_result_s"] <= r["process_wall_s"]
    assert "first result" in p.stdout


def test_parse_child_output():
    from lowbit.bench.warmup import MARK, parse_child_output

    assert parse_child_output(f"noise\n{MARK}{{\"a\": 1}}\n") == {"a": 1}
    with pytest.raises(ValueError):
        parse_child_output("nothing here")


def test_bits_sweep_merges_every_width(tmp_path, capsys):
    """``lowbit bench bits``: one run per bit-width (cuBLAS in the first only), merged rows per (shape, M,
    bits) with the first run's cuBLAS as the reference, the table and the PNG."""
    import json

    from lowbit.bench.bits import main as bits_main

    rc = bits_main(["--bits", "2,4", "--shapes", "256x512", "--m", "1,16", "--out", str(tmp_path), "--quick"],
                   timer=FakeTimer())
    assert rc == 0
    doc = json.loads((tmp_path / "bits_sweep_g128_bf16.json").read_text())
    assert sorted((r["bits"], r["m"]) for r in doc["rows"]) == [(2, 1), (2, 16), (4, 1), (4, 16)]
    assert all(r["speedup_cublas"] > 0 and r["kernel_us"] > 0 for r in doc["rows"])
    assert {r["weight_bytes_per_param"] for r in doc["rows"] if r["bits"] == 2} == {(2 / 8) + 3 / 128}
    w4 = json.loads((tmp_path / "bits_sweep_g128_bf16_w4.json").read_text())
    assert {p["method"] for p in w4["points"]} == {"lowbit"}  # cuBLAS timed once, in the first run
    assert (tmp_path / "bits_sweep_g128_bf16.png").stat().st_size > 0
    assert "time W4 / time Wn" in capsys.readouterr().out
    assert bits_main(["--bits", "0,4", "--out", str(tmp_path)]) == 2
