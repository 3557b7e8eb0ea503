"""`lowbit bench moe` harness with the fake timer on a tiny MoE shape (kernels in the interpreter on CPU)."""
import json

import torch

from lowbit.bench import main
from lowbit.bench.moe import goal_table, make_point, MOE_SHAPES
from lowbit.bench.results import Row
from lowbit.bench.timing import FakeTimer

from helpers import DEVICE


def test_bench_moe_fake_timer_writes_files(tmp_path):
    timer = FakeTimer()
    rc = main(["moe", "--shapes", "tiny", "--tokens", "1,5", "--dtype", "fp16", "--out", str(tmp_path)], timer=timer)
    assert rc == 0
    doc = json.loads((tmp_path / "moe_w4a16_g128_fp16.json").read_text())
    pts = doc["points"]
    assert {p["method"] for p in pts} == {"lowbit", "lowbit_topk", "cublas", "grouped_mm", "lowbit_loop"}
    assert len(pts) == 2 * 2 * 5
    for p in pts:
        if p["method"] == "grouped_mm":  # bf16 on CUDA only
            assert p["status"] == "SKIP"
        else:
            assert p["status"] == "ok", p
            assert p["rel_err"] <= p["tol"]
    assert "lowbit_loop" in timer.timed and "cublas" in timer.timed
    assert (tmp_path / "moe_w4a16_g128_fp16_speedup.png").exists()
    assert all(g["vs"] in ("cublas", "grouped_mm", "lowbit_loop") for g in doc["meta"]["goals"])


def test_bench_moe_wrong_result_is_fail_not_timed(tmp_path, monkeypatch):
    from lowbit import ops

    real = ops.grouped_gemm
    monkeypatch.setattr(ops, "grouped_gemm", lambda *a, **k: real(*a, **k) * 1.1)
    timer = FakeTimer()
    rc = main(["moe", "--shapes", "tiny", "--tokens", "3", "--methods", "lowbit,cublas", "--dtype", "fp16",
               "--out", str(tmp_path), "--no-plots"], timer=timer)
    assert rc == 1
    assert "lowbit" not in timer.timed and "cublas" in timer.timed


def test_routing_point_is_sorted_and_seeded():
    shape = MOE_SHAPES["tiny"][0]
    a = make_point(shape, 7, torch.float16, torch.device(DEVICE), seed=3)
    b = make_point(shape, 7, torch.float16, torch.device(DEVICE), seed=3)
    assert torch.equal(a.ids, b.ids) and sum(a.counts) == 7 * shape.topk
    assert all(len(set(r)) == shape.topk for r in a.ids.tolist())  # top-k experts are distinct
    experts = a.ids.flatten()[a.sorted_ids.long()]
    assert torch.all(experts[1:] >= experts[:-1])
    assert torch.equal(a.xs, a.x[(a.sorted_ids // shape.topk).long()])


def test_goal_table():
    def row(t, method, us):
        return Row("m", "l", 8, 8, t, method, "x", kernel_us=us)

    rows = [row(8, "lowbit", 10.0), row(8, "cublas", 30.0), row(8, "lowbit_loop", 12.0), row(4096, "lowbit", 10.0),
            row(4096, "cublas", 9.0)]
    g = {(x["tokens"], x["vs"]): x for x in goal_table(rows)}
    assert g[(8, "cublas")]["met"] and g[(8, "cublas")]["speedup"] == 3.0
    assert not g[(8, "lowbit_loop")]["met"]
    assert not g[(4096, "cublas")]["met"] and g[(4096, "cublas")]["goal"] == 1.0
