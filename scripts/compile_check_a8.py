"""Compile the 8-bit activation kernels for sm_90 without a GPU: registers, spills, SASS histogram
(QGMMA = fp8 wgmma, IGMMA = int8 wgmma; HMMA/IMMA = mma.sync).

    PYTHONPATH=src python scripts/compile_check_a8.py            # the shipped heuristic configs
    PYTHONPATH=src python scripts/compile_check_a8.py --sass ...  # plus the SASS of each
"""
import argparse
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(__file__))
from compile_check import sass_histogram  # noqa: E402

from lowbit.kernels.quant_act import quantize_act_kernel  # noqa: E402
from lowbit.kernels.scaled_mm import heuristic_config, scaled_mm_kernel  # noqa: E402
from lowbit.kernels.unpack import plane_constexprs  # noqa: E402

MM_INTS = ["M", "N", "K", "Kp", "stride_xm", "stride_wn", "stride_wk", "stride_sxm", "stride_sxk", "stride_swn",
           "stride_swk", "stride_ws", "stride_ym"]


def compile_fn(fn, sig, constexprs, num_warps, num_stages):
    """Every pointer and integer argument is marked divisible by 16, as Triton specializes them at a
    launch on Llama shapes (without it no load is vectorized and nothing is pipelined)."""
    sig = dict(sig)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in sig}
    sig.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn, sig, constexprs=dict(constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps,
                                                                        "num_stages": num_stages})


def scaled_mm_variant(kind, mode, m, n=4096, k=4096, out="bf16"):
    """kind fp8|int8; mode row|block|w4a8 (w4a8: int4 g128 asym)."""
    op = "fp8e4nv" if kind == "fp8" else "i8"
    k_step = 128
    cfg = heuristic_config(m, n, k, k_step)
    w = "*i32" if mode == "w4a8" else f"*{op}"
    sig = {"x_ptr": f"*{op}", "w_ptr": w, "sx_ptr": "*fp32", "sw_ptr": "*bf16" if mode == "w4a8" else "*fp32",
           "z_ptr": "*u8", "b_ptr": f"*{out}", "y_ptr": f"*{out}", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    sig.update({s: "i32" for s in MM_INTS})
    ce = dict(X_SCALE_K=128 if mode == "block" else 0, W_SCALE_N=128 if mode == "block" else 1,
              W_SCALE_K=0 if mode == "row" else 128, HAS_ZEROS=mode == "w4a8", SYM_ZERO=8, HAS_BIAS=False,
              ACC_INT=kind == "int8", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
              SPLIT_K=cfg.split_k, GROUP_M=cfg.group_m, SWAP_AB=cfg.swap_ab)
    ce.update(plane_constexprs(4) if mode == "w4a8" else dict(P0=0, P1=0, P2=0))
    return cfg, compile_fn(scaled_mm_kernel, sig, ce, cfg.num_warps, cfg.num_stages)


def quant_act_variant(kind, block, chunk=4096, dtype="bf16"):
    sig = {"x_ptr": f"*{dtype}", "q_ptr": "*fp8e4nv" if kind == "fp8" else "*i8", "s_ptr": "*fp32",
           "ism_ptr": "*fp32", "M": "i32", "K": "i32", "stride_xm": "i32", "stride_qm": "i32", "stride_sm": "i32"}
    ce = dict(HAS_SMOOTH=False, IS_INT8=kind == "int8", QMAX=448.0 if kind == "fp8" else 127.0, FLOOR=1e-12,
              BLOCK=block, CHUNK=chunk)
    return compile_fn(quantize_act_kernel, sig, ce, 8, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--m", default="1,16,64,256,4096")
    p.add_argument("--sass", action="store_true")
    a = p.parse_args()
    for kind, mode in (("fp8", "row"), ("int8", "row"), ("fp8", "block"), ("fp8", "w4a8")):
        for m in map(int, a.m.split(",")):
            cfg, kern = scaled_mm_variant(kind, mode, m)
            hist, usage, sass = sass_histogram(kern.asm["cubin"])
            mma = {op: c for op, c in hist.items() if "MMA" in op}
            print(f"scaled_mm {kind:4s} {mode:5s} M={m:<5d} tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} "
                  f"swap={int(cfg.swap_ab)} split={cfg.split_k} | {usage} | MMA {mma}")
            if a.sass:
                print(sass)
    for kind in ("fp8", "int8"):
        for block in (0, 128):
            hist, usage, _ = sass_histogram(quant_act_variant(kind, block).asm["cubin"])
            print(f"quantize_act {kind:4s} block={block:<3d} | {usage} | F2FP {hist.get('F2FP', 0)} "
                  f"F2I {hist.get('F2I', 0)} MUFU {hist.get('MUFU', 0)}")


if __name__ == "__main__":
    main()
