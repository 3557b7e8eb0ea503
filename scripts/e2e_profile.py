"""Where a decode step's time goes: GPU kernel time per category for each format and batch size.

Builds the e2e model (random weights, as ``lowbit bench e2e``), captures the ``compile-graph`` decode
step, and profiles ``--steps`` replays with torch.profiler (CUPTI sees the kernels inside CUDA graphs).
Per step: wall ms (graph replay, host clock), GPU kernel ms by category (lowbit GEMV/GEMM, cuBLAS,
tinygemm, attention, inductor-fused elementwise, other) and the idle gap = wall - kernels. Also the
relative error of the compiled step's logits vs eager's on the same cache (is greedy disagreement
rounding amplified by a random model, or a bug?).

    PYTHONPATH=src python scripts/e2e_profile.py --formats bf16,tinygemm,w4a16 --batch 1,32 --out out/prof
"""
import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

import torch

from lowbit.models import build_model, load_config
from lowbit.models.generate import Generator, cache_len
from lowbit.models.quant import apply_format, parse_formats

CATEGORIES = [  # first match wins
    ("lowbit gemv", r"gemv_wxa16"), ("lowbit gemm", r"gemm_wxa16"), ("lowbit dequant", r"dequant"),
    ("tinygemm", r"int4|tinygemm|_weight_int4pack"),
    ("attention", r"fmha|attention|flash|sdpa|efficient|combine_kernel"),
    ("cuBLAS gemm/gemv", r"gemm|gemv|nvjet|cutlass|sm90_xmma|ampere|splitK"),
    ("inductor fused", r"^triton_"), ("argmax/copy/other", r".*"),
]


def category(name: str) -> str:
    for cat, pat in CATEGORIES:
        if re.search(pat, name, re.IGNORECASE):
            return cat
    return "other"


def profile_point(model, batch, prompt_len, steps, dev):
    gen = Generator(model, batch, prompt_len, 2 * steps + 8, "compile-graph")  # warm-up + timed + profiled steps
    try:
        prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=dev,
                               generator=torch.Generator(device=dev).manual_seed(batch))
        gen.load(prompt)
        gen.prefill()
        gen.decode(3)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        gen.decode(steps)
        torch.cuda.synchronize()
        wall_ms = 1e3 * (time.perf_counter() - t0) / steps
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            gen.decode(steps)
            torch.cuda.synchronize()
        per_cat, per_kernel = defaultdict(float), defaultdict(lambda: [0.0, 0])
        for ev in prof.events():
            if ev.device_type == torch.autograd.DeviceType.CUDA:
                us = ev.device_time if hasattr(ev, "device_time") else ev.cuda_time
                per_cat[category(ev.name)] += us / 1e3 / steps
                per_kernel[ev.name][0] += us / 1e3 / steps
                per_kernel[ev.name][1] += 1
        top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:12]
        # compiled vs eager logits on the same prefilled cache state
        pos = torch.tensor([prompt_len], device=dev)
        tok = prompt[:, -1:]
        gen.load(prompt)
        gen.prefill()  # resets the position: the decode below writes cache slot prompt_len only
        eager = model(tok, pos).float()
        from lowbit.models.llama import call_layer
        compiled = model(tok, pos, layer_fn=torch.compile(call_layer, fullgraph=True, dynamic=False)).float()
        rel = float((compiled - eager).norm() / eager.norm())
        top1 = float((compiled.argmax(-1) == eager.argmax(-1)).float().mean())
        srt = eager.sort(dim=-1, descending=True).values
        gap = float((srt[..., 0] - srt[..., 1]).median())
        maxdiff = float((compiled - eager).abs().amax())
    finally:
        gen.close()
    return {"wall_ms": wall_ms, "kernels_ms": sum(per_cat.values()), "by_category_ms": dict(per_cat),
            "top_kernels": [{"name": n[:90], "ms_per_step": v[0], "calls_per_step": v[1] / steps} for n, v in top],
            "compiled_vs_eager": {"logits_rel_err": rel, "logits_max_abs_diff": maxdiff, "top1_agree": top1,
                                  "median_top1_top2_gap": gap}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama3-8b")
    ap.add_argument("--formats", default="bf16,tinygemm,w4a16")
    ap.add_argument("--batch", default="1,32")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="out/prof")
    a = ap.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.enable_cudnn_sdp(False)
    cfg = load_config(a.model)
    res = {"model": a.model, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "points": []}
    for fmt in parse_formats(a.formats):
        model = apply_format(build_model(cfg, dev, torch.bfloat16, 0), fmt)
        for b in [int(x) for x in a.batch.split(",")]:
            r = profile_point(model, b, a.prompt, a.steps, dev)
            r.update(format=fmt.name, batch=b)
            res["points"].append(r)
            cats = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["by_category_ms"].items(), key=lambda kv: -kv[1]))
            print(f"{fmt.name:10s} B={b:<4d} wall {r['wall_ms']:.2f} ms/step, kernels {r['kernels_ms']:.2f} ms "
                  f"(gap {r['wall_ms'] - r['kernels_ms']:.2f}): {cats}", flush=True)
            print("    compiled vs eager:", r["compiled_vs_eager"], flush=True)
            for t in r["top_kernels"][:6]:
                print(f"    {t['ms_per_step']:.3f} ms x{t['calls_per_step']:.0f}  {t['name']}", flush=True)
        del model
        torch.cuda.empty_cache()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"e2e_profile_{a.model}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
