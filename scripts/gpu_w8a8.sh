#!/usr/bin/env bash
# 8-bit activations on the GPU: tests, SASS check of the shipped configs, then the benchmark sweep
# (fp8 / int8 / w4a8 over Llama-3 8B + 70B, M = 1..4096), all within ~4 minutes of wall time.
# Usage: COMMIT=<sha> bash scripts/gpu_w8a8.sh [tests|bench|all]   -> $OUT/w8a8_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/w8a8"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
if [[ $what == tests || $what == all ]]; then
  timeout 100 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_a8.py 2>&1 | tail -25 > "$R/pytest.txt"
  tail -3 "$R/pytest.txt"
fi
if [[ $what == bench || $what == all ]]; then
  MS=1,16,64,256,1024,4096
  for op in fp8 int8 w4a8; do
    timeout 80 python3 -m lowbit.bench --op $op --shapes llama3-8b,llama3-70b --m $MS --quick --replays 5 \
      --min-copy-mb 128 --time-budget 45 --out "$R" > "$R/bench_$op.txt" 2>&1
    tail -25 "$R/bench_$op.txt"
  done
fi
tar -C "$OUT" -czf "$OUT/w8a8_h200.tgz" w8a8 && echo "archived $(ls "$R" | wc -l) files in $OUT/w8a8_h200.tgz"
