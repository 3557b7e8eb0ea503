"""Which packed-GEMM configs with the folded group scale go wrong (rel. error vs the fp32 oracle)?
    PYTHONPATH=src python scripts/folded_probe.py"""
import itertools

import torch

from lowbit.formats.intx import IntxFormat, symmetric_zero, to_mma_words
from lowbit.kernels.gemm import GemmConfig, gemm_wxa16

torch.manual_seed(0)
for (n, k), dtype in itertools.product([(28672, 4096), (1024, 512)], [torch.bfloat16, torch.float16]):
    qw = IntxFormat(4, 128, False, "int", dtype).quantize(torch.randn(n, k, device="cuda") * 0.02)
    words = to_mma_words(qw.qweight, 4)
    ref_w = qw.dequantize(torch.float32)
    for m in (128, 256):
        x = torch.randn(m, k, device="cuda", dtype=dtype)
        ref = x.float() @ ref_w.t()
        for bm, bn, bk, w, st, sa in itertools.product((128, 256), (128,), (64, 128), (8,), (3, 4), (False, True)):
            cfg = GemmConfig(bm, bn, bk, 1, 8, w, st, False, sa)
            try:
                y = gemm_wxa16(x, words, qw.scales, qw.zeros, None, 4, 128, symmetric_zero(4), n, config=cfg, k_order=1)
                err = ((y.float() - ref).norm() / ref.norm()).item()
            except Exception as e:  # noqa: BLE001
                err = float("nan")
                print("  error", cfg, str(e)[:100])
            flag = "  <-- WRONG" if not err < 6e-3 else ""
            print(f"{n}x{k} {str(dtype)[6:]} M={m} {bm}x{bn}x{bk} w{w} s{st} scale_after={sa}: {err:.2e}{flag}", flush=True)
