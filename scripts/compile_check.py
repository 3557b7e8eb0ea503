"""Compile lowbit kernels for sm_90 on any machine (no GPU needed) and report registers, spills,
shared memory and a SASS instruction histogram (needs the cuobjdump that Triton ships).

    PYTHONPATH=src python scripts/compile_check.py gemv --bits 4 --block-m 1 --block-n 64 --block-k 256
    PYTHONPATH=src python scripts/compile_check.py gemv --lut --prefetch   # lookup-table mode (LUT_TABLE=fp16: table dtype)
    PYTHONPATH=src python scripts/compile_check.py grouped --bits 4 --block-m 16 --block-n 64 --split-k 2
    PYTHONPATH=src python scripts/compile_check.py grouped --gemv --block-m 2 --ids --scatter --row-weights
    PYTHONPATH=src python scripts/compile_check.py sparse24_gemv --block-n 128 --block-k 128 --per-weight
    PYTHONPATH=src python scripts/compile_check.py gemv --block-n 128 --block-k 128 --per-weight   # dense, same tile
"""
import argparse
import collections
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lowbit.kernels.gemm import gemm_wxa16_kernel
from lowbit.kernels.gemv import gemv_wxa16_kernel
from lowbit.kernels.grouped import grouped_wxa16_kernel
from lowbit.kernels.sparse24 import gemm_sparse24_kernel, gemv_sparse24_kernel
from lowbit.kernels.unpack import plane_constexprs

SIG = {"x_ptr": "*fp16", "qw_ptr": "*i32", "s_ptr": "*fp16", "z_ptr": "*u8", "t_ptr": "*" + os.environ.get("LUT_TABLE", "fp32"), "b_ptr": "*fp16",
       "y_ptr": "*fp16", "ws_ptr": "*fp32", "cnt_ptr": "*i32", "xs_ptr": "*fp32",
       "M": "i32", "N": "i32", "K": "i32", "Kp": "i32", "stride_xm": "i32", "stride_xk": "i32",
       "stride_qk": "i32", "stride_sg": "i32", "stride_tg": "i32", "stride_tn": "i32", "stride_ws": "i32",
       "stride_ym": "i32", "magic": "i32", "m_ptr": "*i32", "stride_mk": "i32"}


GROUPED_SIG = {**{k: v for k, v in SIG.items() if k.endswith("_ptr")}, "off_ptr": "*i32", "ids_ptr": "*i32",
               "rw_ptr": "*fp16", "N": "i32", "K": "i32", "Kp": "i32", "E": "i32",
               **{k: "i32" for k in ("stride_xm", "stride_xk", "stride_qe", "stride_qk", "stride_se", "stride_sg",
                                     "stride_be", "stride_ws", "stride_ym", "magic")}}


MAXNREG = None  # --maxnreg: the ptx .maxnreg cap passed to every compile


def compile_kernel(fn, constexprs, num_warps, num_stages, dtype="fp16", base_sig=None, div16=True, sig_override=None):
    """div16: mark pointers and integer sizes/strides as multiples of 16, as Triton's launcher does on
    the GPU for arguments that are (Llama shapes); without it loads are compiled for the unaligned case."""
    sig = {k: v for k, v in (base_sig or SIG).items() if k in fn.arg_names}
    for k in ("x_ptr", "s_ptr", "b_ptr", "y_ptr") + (("rw_ptr",) if "rw_ptr" in sig else ()):
        sig[k] = f"*{dtype}"
    sig.update(sig_override or {})
    sig.update({k: "constexpr" for k in constexprs})
    attrs = {}
    if div16:
        attrs = {(fn.arg_names.index(k),): [["tt.divisibility", 16]] for k, v in sig.items()
                 if v != "constexpr" and k not in ("M", "magic", "stride_xk") and not k.endswith("_desc")}
    src = ASTSource(fn, sig, constexprs=dict(constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages,
                                   **({"maxnreg": MAXNREG} if MAXNREG else {})})


def sass_histogram(cubin: bytes):
    """(instruction histogram, resource usage line, SASS text) of a cubin."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True).stdout
        res = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)(?:\.[\w.]+)?", sass)
    usage = " ".join(line.strip() for line in res.splitlines() if "REG" in line)
    return collections.Counter(ops), usage, sass


def loop_body(sass: str):
    """(instructions, histogram) of the hottest loop: the longest span closed by a backward branch."""
    lines = re.findall(r"/\*([0-9a-f]{4})\*/\s+(.*?);", sass)
    addr = [int(a, 16) for a, _ in lines]
    best = (0, 0)
    for i, (_, text) in enumerate(lines):
        m = re.search(r"BRA\S*\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", text)
        tgt = re.search(r"0x([0-9a-f]+)", text) if "BRA" in text else None
        if m and tgt and int(tgt.group(1), 16) < addr[i]:
            start = next(j for j, a in enumerate(addr) if a >= int(tgt.group(1), 16))
            if i - start > best[1] - best[0]:
                best = (start, i + 1)
    body = [t for _, t in lines[best[0]:best[1]]]
    ops = [re.match(r"(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", t).group(1) for t in body]
    return len(body), collections.Counter(ops)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kernel", choices=["gemv", "gemm", "grouped", "sparse24_gemv", "sparse24_gemm"])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--block-m", type=int, default=1)
    p.add_argument("--block-n", type=int, default=64)
    p.add_argument("--block-k", type=int, default=128)
    p.add_argument("--split-k", type=int, default=1)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--dtype", default="fp16")
    p.add_argument("--prefetch", action="store_true")
    p.add_argument("--lut", action="store_true", help="lookup-table codes (lowbit.formats.lut): LUT=True, no zeros")
    p.add_argument("--sym", action="store_true", help="symmetric codes (no zeros tensor, SYM_ZERO=8)")
    p.add_argument("--sass", action="store_true")
    p.add_argument("--asm4", action="store_true", help="gemm / grouped: packed inline-asm 4-bit dequant")
    p.add_argument("--row-reps", type=int, default=0, help="gemm packed: fragment_rows order (0 = natural)")
    p.add_argument("--scale-after", action="store_true", help="gemm packed: scale the MMA result per K tile")
    p.add_argument("--mma-words", action="store_true", help="gemm / grouped: 4-bit words in the mma word order")
    p.add_argument("--x-fp8", action="store_true", help="gemm: fp8 X with per-token scales (X_SCALE, W4A8 small M)")
    p.add_argument("--tma", action="store_true", help="gemm packed: words and X through TMA descriptors")
    p.add_argument("--k-unroll", type=int, default=1, help="gemm packed: K tiles per loop iteration (K_UNROLL)")
    p.add_argument("--even", action="store_true", help="gemm: N %% BLOCK_N == 0 and K %% BLOCK_K == 0 (no masks)")
    p.add_argument("--gemv", action="store_true", help="grouped: the CUDA-core (GEMV) K loop instead of tensor cores")
    p.add_argument("--experts", type=int, default=8, help="grouped: E")
    p.add_argument("--ids", action="store_true", help="grouped: rows gathered through sorted pair ids")
    p.add_argument("--scatter", action="store_true", help="grouped: output scattered to pair order")
    p.add_argument("--row-weights", action="store_true", help="grouped: routing weights in the epilogue")
    p.add_argument("--maxnreg", type=int, default=None, help="cap registers per thread (ptx .maxnreg)")
    p.add_argument("--per-weight", action="store_true",
                   help="SASS instructions of the K loop per dense weight position (per thread)")
    a = p.parse_args()
    global MAXNREG
    MAXNREG = a.maxnreg
    ce = dict(GROUP_LEN=a.group, **plane_constexprs(a.bits), HAS_ZEROS=not (a.lut or a.sym), SYM_ZERO=8.0, HAS_BIAS=False, LUT=a.lut,
              BLOCK_M=a.block_m, BLOCK_N=a.block_n, BLOCK_K=a.block_k, SPLIT_K=a.split_k)
    ce["stride_xk"] = 1  # contiguous x: Triton specialises an int argument equal to 1 on the GPU too
    if a.kernel == "gemv":
        ce.update(NUM_STAGES=1 if a.prefetch else a.stages, PREFETCH=a.prefetch, EVEN_K=True)
    if a.kernel == "gemm":
        ce.update(GROUP_M=8, INT_ZERO=True, PREFETCH=False, PACKED=a.asm4, INLINE_ASM=a.asm4, EVEN_N=a.even, EVEN_K=a.even, ROW_REPS=a.row_reps, SCALE_AFTER=a.scale_after, MMA_WORDS=a.mma_words, X_SCALE=a.x_fp8, TMA=a.tma, K_UNROLL=a.k_unroll)
    base_sig = None
    if a.kernel == "grouped":
        del ce["LUT"]  # affine codes only
        ce.update(INT_ZERO=True, EVEN_K=True, HAS_IDS=a.ids, TOPK=2, GATHER=a.ids, SCATTER=a.scatter, HAS_ROW_WEIGHTS=a.row_weights,
                  E_POW2=triton.next_power_of_2(a.experts), NUM_TILES=64, MMA=not a.gemv, GROUP_M=8,
                  NUM_STAGES=a.stages, PACKED=a.asm4, INLINE_ASM=a.asm4, ROW_REPS=a.row_reps, MMA_WORDS=a.mma_words,
                  SCALE_AFTER=a.scale_after)
        base_sig = GROUPED_SIG
    if a.kernel.startswith("sparse24"):  # 4-bit kept values, integer zeros: no planes, no LUT
        for key in ("P0", "P1", "P2", "LUT"):
            ce.pop(key)
        ce["INT_ZERO"] = True
        ce.update(NUM_STAGES=a.stages, EVEN_K=True) if a.kernel == "sparse24_gemv" else ce.update(GROUP_M=8)
    fn = {"gemv": gemv_wxa16_kernel, "gemm": gemm_wxa16_kernel, "grouped": grouped_wxa16_kernel,
          "sparse24_gemv": gemv_sparse24_kernel, "sparse24_gemm": gemm_sparse24_kernel}[a.kernel]
    override = {"x_ptr": "*fp8e4nv"} if a.x_fp8 else {}
    if a.tma:
        xdt = "fp8e4nv" if a.x_fp8 else a.dtype
        override.update(w_desc=f"tensordesc<i32[{a.block_k * plane_constexprs(a.bits)['P0'] // 32},{a.block_n}]>",
                        x_desc=f"tensordesc<{xdt}[{a.block_m},{a.block_k}]>")
    elif a.kernel == "gemm":
        ce.update(w_desc=None, x_desc=None)
    k = compile_kernel(fn, ce, a.warps, a.stages, a.dtype, base_sig, sig_override=override or None)
    hist, usage, sass = sass_histogram(k.asm["cubin"])
    print(usage)
    print(" ".join(f"{op}:{c}" for op, c in hist.most_common(40)))
    if a.per_weight:
        n_body, body = loop_body(sass)
        per_thread = a.block_n * a.block_k * (a.k_unroll if a.kernel == "gemm" else 1) / (32 * a.warps)
        print(f"K loop: {n_body} SASS instructions per thread per iteration, {per_thread:g} dense weights per thread "
              f"-> {n_body / per_thread:.2f} per dense weight position")
        print("  loop: " + " ".join(f"{op}:{c}" for op, c in body.most_common(24)))
    if a.sass:
        print(sass)


if __name__ == "__main__":
    main()
