"""Compile the 8-bit activation kernels for sm_90 without a GPU: registers, spills, SASS histogram
(QGMMA = fp8 wgmma, IGMMA = int8 wgmma; HMMA/IMMA = mma.sync).

    PYTHONPATH=src python scripts/compile_check_a8.py            # the shipped heuristic configs
    PYTHONPATH=src python scripts/compile_check_a8.py --sass ...  # plus the SASS of each
"""
import argparse
import collections
import os
import re
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(__file__))
from compile_check import sass_histogram  # noqa: E402

from lowbit.kernels.int4_fp8 import UNPACK_MAGIC, UNPACK_PRMT  # noqa: E402
from lowbit.kernels.quant_act import quantize_act_kernel  # noqa: E402
from lowbit.kernels.scaled_mm import heuristic_config, scaled_mm_kernel  # noqa: E402
from lowbit.kernels.scaled_mm_tma import TMA_CANDIDATES, scaled_mm_tma_kernel  # noqa: E402
from lowbit.kernels.unpack import plane_constexprs  # noqa: E402

MM_INTS = ["M", "N", "K", "Kp", "stride_xm", "stride_wn", "stride_wk", "stride_sxm", "stride_sxk", "stride_swn",
           "stride_swk", "stride_ws", "stride_ym"]
UNPACKS = {"prmt": UNPACK_PRMT.value, "magic": UNPACK_MAGIC.value}


def compile_fn(fn, sig, constexprs, num_warps, num_stages):
    """Every pointer and integer argument is marked divisible by 16, as Triton specializes them at a
    launch on Llama shapes (without it no load is vectorized and nothing is pipelined)."""
    sig = dict(sig)
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in sig if name not in constexprs}
    sig.update({k: "constexpr" for k in constexprs})
    src = ASTSource(fn, sig, constexprs=dict(constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps,
                                                                        "num_stages": num_stages})


def scaled_mm_variant(kind, mode, m, n=4096, k=4096, out="bf16", unpack="prmt", cfg=None, fused=False):
    """kind fp8|int8; mode row|block|w4a8 (w4a8: int4 g128 asym; ``unpack`` prmt|magic). Integer arguments
    equal to 1 are constexprs, as Triton specializes them at a launch: the dense weight's stride_wk (K
    contiguous), W4A8's stride_wn (N contiguous words)."""
    op = "fp8e4nv" if kind == "fp8" else "i8"
    cfg = cfg or heuristic_config(m, n, k, 128)
    w = "*i32" if mode == "w4a8" else f"*{op}"
    sig = {"x_ptr": f"*{out}" if fused else f"*{op}", "w_ptr": w, "sx_ptr": "*fp32", "sw_ptr": "*bf16" if mode == "w4a8" else "*fp32",
           "z_ptr": "*u8", "t_ptr": "*i32", "b_ptr": f"*{out}", "y_ptr": f"*{out}", "ws_ptr": "*fp32",
           "cnt_ptr": "*i32"}
    sig.update({s: "i32" for s in MM_INTS})
    ce = dict(X_SCALE_K=128 if mode == "block" else 0, W_SCALE_N=128 if mode == "block" else 1,
              W_SCALE_K=0 if mode == "row" else 128, HAS_ZEROS=mode == "w4a8", SYM_ZERO=8, HAS_BIAS=False,
              ACC_INT=kind == "int8", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
              SPLIT_K=cfg.split_k, GROUP_M=cfg.group_m, SWAP_AB=cfg.swap_ab,
              UNPACK=UNPACKS[unpack] if mode == "w4a8" else 0)
    ce.update(plane_constexprs(4) if mode == "w4a8" else dict(P0=0, P1=0, P2=0))
    if fused:  # QUANT_X: the activation quantized in the prologue
        ce.update(QUANT_X=True, QMAX=448.0 if kind == "fp8" else 127.0, FLOOR=1e-12, QUANT_CHUNK=2048, QUANT_ROWS=1 if m == 1 else min(16, 1 << (m - 1).bit_length()))
    ones = {"row": ("stride_wk", "stride_sxm", "stride_swn"), "block": ("stride_wk", "stride_sxk", "stride_swk"),
            "w4a8": ("stride_wn", "stride_sxm", "stride_swn")}[mode] + (("M",) if m == 1 else ())
    ce.update({name: 1 for name in ones})
    for name in ce:
        sig.pop(name, None)
    return cfg, compile_fn(scaled_mm_kernel, sig, ce, cfg.num_warps, cfg.num_stages)


def scaled_mm_tma_variant(kind, cfg, out="bf16", scale_block=0):
    """The persistent TMA kernel (``kernels/scaled_mm_tma.py``) for one tile config (``scale_block`` 128:
    fp8 block scales)."""
    op = "fp8e4nv" if kind == "fp8" else "i8"
    sig = {"x_desc": f"tensordesc<{op}[{cfg.block_m},{cfg.block_k}]>",
           "w_desc": f"tensordesc<{op}[{cfg.block_n},{cfg.block_k}]>",
           "sx_ptr": "*fp32", "sw_ptr": "*fp32", "b_ptr": f"*{out}", "y_ptr": f"*{out}",
           "M": "i32", "N": "i32", "K": "i32", "stride_ym": "i32", "stride_sxm": "i32", "stride_swn": "i32"}
    ce = dict(HAS_BIAS=False, ACC_INT=kind == "int8", BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
              BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, SCALE_BLOCK=scale_block)
    attrs = {(scaled_mm_tma_kernel.arg_names.index(name),): [["tt.divisibility", 16]]
             for name in sig if not name.endswith("_desc")}
    sig.update({k: "constexpr" for k in ce})
    src = ASTSource(scaled_mm_tma_kernel, sig, constexprs=ce, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps,
                                                                        "num_stages": cfg.num_stages})


def scaled_mm_wgmma_variant(kind, cfg, out="bf16"):
    """The Gluon kernel (``kernels/scaled_mm_wgmma.py``) for one config (sm_90)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from lowbit.kernels.scaled_mm_wgmma import instr_n, scaled_mm_wgmma_kernel

    op, gop = ("fp8e4nv", gl.float8e4nv) if kind == "fp8" else ("i8", gl.int8)
    xl = gl.NVMMASharedLayout.get_default_for([cfg.block_m, cfg.block_k], gop)
    wl = gl.NVMMASharedLayout.get_default_for([cfg.block_n, cfg.block_k], gop)
    sig = {"x_desc": f"tensordesc<{op}[{cfg.block_m},{cfg.block_k}],{xl!r}>",
           "w_desc": f"tensordesc<{op}[{cfg.block_n},{cfg.block_k}],{wl!r}>",
           "sx_ptr": "*fp32", "sw_ptr": "*fp32", "b_ptr": f"*{out}", "y_ptr": f"*{out}",
           "M": "i32", "N": "i32", "K": "i32", "stride_ym": "i32"}
    ce = dict(HAS_BIAS=False, ACC_INT=kind == "int8", GROUP_M=cfg.group_m, STAGES=cfg.stages,
              INSTR_N=instr_n(cfg.block_n, kind == "int8"), num_warps=cfg.num_warps,
              COALESCED_STORE=cfg.coalesced_store)
    attrs = {(scaled_mm_wgmma_kernel.arg_names.index(name),): [["tt.divisibility", 16]]
             for name in sig if not name.endswith("_desc")}
    sig.update({k: "constexpr" for k in ce})
    return triton.compile(GluonASTSource(scaled_mm_wgmma_kernel, sig, constexprs=ce, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": cfg.num_warps})


def wgmma_report():
    """Registers, shared memory, the wgmma shape and the wgmma waits (0x1: one group kept in flight)."""
    from lowbit.kernels.scaled_mm_wgmma import WGMMA_CANDIDATES, WgmmaConfig

    for kind in ("int8", "fp8"):
        for cfg in (WgmmaConfig(),) + WGMMA_CANDIDATES:
            kern = scaled_mm_wgmma_variant(kind, cfg)
            _, usage, sass = sass_histogram(kern.asm["cubin"])
            waits = re.findall(r"DEPBAR.LE gsb0, (0x\d)", sass)
            shapes = sorted(set(re.findall(r"[IQ]GMMA\.(\w+)", sass)))
            print(f"scaled_mm_wgmma {kind:4s} {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} "
                  f"s{cfg.stages} coalesced={int(cfg.coalesced_store)} | {usage.split(' CONSTANT')[0]} | "
                  f"smem {kern.metadata.shared} | wgmma {shapes} waits {waits}")


def tma_report(show_loop):
    for kind in ("fp8", "int8"):
        for cfg in TMA_CANDIDATES:
            hist, usage, sass = sass_histogram(scaled_mm_tma_variant(kind, cfg).asm["cubin"])
            mma = {op: c for op, c in hist.items() if "MMA" in op}
            tma = {op: c for op, c in hist.items() if op.startswith("UTMA") or op.startswith("SYNCS")}
            print(f"scaled_mm_tma {kind:4s} tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} "
                  f"s{cfg.num_stages} | {usage.split(' CONSTANT')[0]} | MMA {mma} | TMA {tma}")
            if show_loop:
                print("   ", " ".join(f"{op}:{c}" for op, c in loop_stats(sass).most_common(30)))
    from lowbit.kernels.scaled_mm_tma import BLOCK_SCALE_TILES
    for cfg in TMA_CANDIDATES[:2] + BLOCK_SCALE_TILES:
        hist, usage, _ = sass_histogram(scaled_mm_tma_variant("fp8", cfg, scale_block=128).asm["cubin"])
        print(f"scaled_mm_tma fp8 block-128 tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} "
              f"s{cfg.num_stages} | {usage.split(' CONSTANT')[0]} | MMA {hist.get('QGMMA', 0)} QGMMA")


def loop_stats(sass):
    """Instruction histogram of the main loop (the longest backward branch) of a SASS listing."""
    ins = []
    for line in sass.splitlines():
        mt = re.search(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)[^;]*;", line)
        if mt:
            ins.append((int(mt.group(1), 16), mt.group(2), line))
    best = (0, -1)
    for addr, op, line in ins:
        tgt = re.search(r"BRA (?:`\(\.L_x_\d+\) )?0x([0-9a-f]+)", line) if op == "BRA" else None
        if tgt and int(tgt.group(1), 16) < addr and addr - int(tgt.group(1), 16) > best[1] - best[0]:
            best = (int(tgt.group(1), 16), addr)
    return collections.Counter(op for addr, op, _ in ins if best[0] <= addr <= best[1])


def prmt_groups_ok(llir):
    """(calls, ok): every prmt-unpack asm call must get 8 copies of one word and of each table word (the
    8 packed elements are one word's nibbles in one thread); a layout that splits them breaks the unpack."""
    calls = re.findall(r'asm "\{[^"]*0x77777777[^"]*"[^(]*\(([^)]*)\)', llir)
    ok = True
    for args in calls:
        ops = [a.strip().split()[-1] for a in args.split(",")]
        ok &= len(ops) == 40 and all(len(set(ops[i:i + 8])) == 1 for i in range(0, 40, 8))
    return len(calls), ok


def per_value(loop, cfg):
    """Loop instructions per weight value of one thread (BLOCK_N * BLOCK_K / threads values per step)."""
    return sum(loop.values()) / (cfg.block_n * cfg.block_k / (32 * cfg.num_warps))


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
    p.add_argument("--loop", action="store_true", help="print the main loop's instruction histogram")
    p.add_argument("--fused", action="store_true", help="QUANT_X: activation quantization in the prologue")
    p.add_argument("--wgmma", action="store_true", help="the Gluon kernel's configs only")
    p.add_argument("--tma", action="store_true", help="the persistent TMA kernel's candidate tiles only")
    p.add_argument("--only", default="", help="comma list of kind:mode[:unpack], e.g. fp8:w4a8:magic")
    a = p.parse_args()
    if a.tma:
        return tma_report(a.loop)
    if a.wgmma:
        return wgmma_report()
    variants = [("fp8", "row", "prmt"), ("int8", "row", "prmt"), ("fp8", "block", "prmt"), ("fp8", "w4a8", "prmt"),
                ("fp8", "w4a8", "magic")]
    if a.only:
        variants = [tuple((v.split(":") + ["prmt"])[:3]) for v in a.only.split(",")]
    for kind, mode, unpack in variants:
        for m in map(int, a.m.split(",")):
            cfg, kern = scaled_mm_variant(kind, mode, m, unpack=unpack, fused=a.fused)
            hist, usage, sass = sass_histogram(kern.asm["cubin"])
            mma = {op: c for op, c in hist.items() if "MMA" in op}
            loop = loop_stats(sass)
            name = f"{mode}/{unpack}" if mode == "w4a8" else mode
            print(f"scaled_mm {kind:4s} {name:11s} M={m:<5d} tile {cfg.block_m}x{cfg.block_n}x{cfg.block_k} "
                  f"w{cfg.num_warps} s{cfg.num_stages} swap={int(cfg.swap_ab)} split={cfg.split_k} | "
                  f"{usage.split(' SHARED')[0]} | MMA {mma} | loop {sum(loop.values())} instr, "
                  f"{per_value(loop, cfg):.2f}/weight value")
            if mode == "w4a8" and unpack == "prmt":
                calls, ok = prmt_groups_ok(kern.asm["llir"])
                print(f"    prmt asm calls {calls}, packed operands one word each: {ok}")
            if a.loop:
                print("   ", " ".join(f"{op}:{c}" for op, c in loop.most_common(30)))
            if a.sass:
                print(sass)
    if a.only:
        return
    for kind in ("fp8", "int8"):
        for block in (0, 128):
            hist, usage, _ = sass_histogram(quant_act_variant(kind, block).asm["cubin"])
            print(f"quantize_act {kind:4s} block={block:<3d} | {usage} | F2FP {hist.get('F2FP', 0)} "
                  f"F2I {hist.get('F2I', 0)} MUFU {hist.get('MUFU', 0)}")


if __name__ == "__main__":
    main()
