#!/usr/bin/env bash
# W4A8 kernels on the GPU, ~4 minutes: the a8 tests (+ the packed GEMM kernel tests with `all`), then
# `lowbit bench --op w4a8` with the dispatch (lowbit_w4a8), each of its kernels forced at every M
# (lowbit_w4a8_packed: the packed 16-bit GEMM on fp8 codes; _fp8mma: fp8 tensor cores; _dequant:
# dequantized 16-bit operands + cuBLAS), our W8A8-fp8 and cuBLAS bf16.
# Usage: COMMIT=<sha> bash scripts/gpu_w4a8_packed.sh [tests|bench|all]   -> $OUT/w4a8_packed_h200.tgz
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/w4a8_packed"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
BENCH_MS=${BENCH_MS:-1,16,64,128,256,512,1024,4096}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
if [[ $what == tests || $what == bench+tests || $what == all ]]; then
  timeout 150 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_a8.py 2>&1 | tail -30 > "$R/pytest_a8.txt"
  tail -3 "$R/pytest_a8.txt"
fi
if [[ $what == all ]]; then
  timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_kernels_wxa16.py -k "gemm or packed" 2>&1 \
    | tail -30 > "$R/pytest_gemm.txt"
  tail -3 "$R/pytest_gemm.txt"
fi
if [[ $what == bench || $what == bench+tests || $what == all ]]; then
  timeout 240 python3 -m lowbit.bench --op w4a8 --shapes llama3-8b,llama3-70b --m "$BENCH_MS" --quick --replays 5 \
    --min-copy-mb 128 --time-budget 200 --out "$R" > "$R/bench_w4a8.txt" 2>&1
  tail -25 "$R/bench_w4a8.txt"
fi
tar -C "$OUT" -czf "$OUT/w4a8_packed_h200.tgz" w4a8_packed && echo "archived $(ls "$R" | wc -l) files in $OUT/w4a8_packed_h200.tgz"
