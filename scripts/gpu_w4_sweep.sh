#!/usr/bin/env bash
# W4A16 full M sweep on the GPU with the shipped table (~4 minutes): the packed GEMM kernel tests, then
# `lowbit bench --op w4a16` on Llama-3 8B + 70B, M = 1 .. 4096, against cuBLAS bf16 and tinygemm.
# Usage: COMMIT=<sha> bash scripts/gpu_w4_sweep.sh   -> $OUT/w4_sweep_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/w4_sweep"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
MS=${MS:-1,16,32,64,128,256,512,1024,2048,4096}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_kernels_wxa16.py -k "packed or folded or gemm" 2>&1 \
  | tail -20 > "$R/pytest_gemm.txt"
tail -2 "$R/pytest_gemm.txt"
timeout 330 python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b --m "$MS" --quick --replays 5 \
  --min-copy-mb 128 --time-budget 280 --out "$R" > "$R/bench_w4a16.txt" 2>&1
grep -A16 "geomean" "$R/w4a16_g128_bf16.txt" | head -20
tar -C "$OUT" -czf "$OUT/w4_sweep_h200.tgz" w4_sweep && echo "archived $(ls "$R" | wc -l) files"
