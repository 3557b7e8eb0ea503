#!/usr/bin/env bash
# W4A8 unpack rework + large-M fp8 tiles on the GPU, ~4 minutes: the a8 tests (both unpack paths), the
# benchmark of W4A8 and W8A8-fp8 on Llama-3-8B at M = 1..4096 (act quant included, vs cuBLAS bf16 and
# _scaled_mm), and scripts/a8_sweep.py (prmt vs magic unpack; large-M fp8 tiles vs _scaled_mm, GEMM only).
# Usage: COMMIT=<sha> bash scripts/gpu_w4a8.sh [tests|bench|sweep|all]   -> $OUT/w4a8_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/w4a8"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
if [[ $what == tests || $what == all ]]; then
  timeout 85 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_a8.py 2>&1 | tail -30 > "$R/pytest.txt"
  tail -3 "$R/pytest.txt"
fi
if [[ $what == bench || $what == all ]]; then
  for op in w4a8 fp8; do
    timeout 55 python3 -m lowbit.bench --op $op --shapes llama3-8b --m 1,16,64,256,1024,4096 --quick --replays 5 \
      --min-copy-mb 128 --time-budget 35 --out "$R" > "$R/bench_$op.txt" 2>&1
    tail -20 "$R/bench_$op.txt"
  done
fi
if [[ $what == sweep || $what == all ]]; then
  timeout 60 python3 scripts/a8_sweep.py --shapes llama3-8b --budget 45 --out "$R/a8_sweep.json" > "$R/sweep.txt" 2>&1
  tail -12 "$R/sweep.txt"
fi
tar -C "$OUT" -czf "$OUT/w4a8_h200.tgz" w4a8 && echo "archived $(ls "$R" | wc -l) files in $OUT/w4a8_h200.tgz"
