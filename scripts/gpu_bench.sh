#!/usr/bin/env bash
# The committed benchmark runs: W4A16 over Llama-3 8B+70B, M 1..8192; W2/W3/W8 on 8B; cold start.
# Usage: COMMIT=<sha> bash scripts/gpu_bench.sh [w4|bits|warmup|all]   (results under $OUT/h200)
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT/h200"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
MS=1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192
if [[ $what == w4 || $what == all ]]; then
  python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b --m $MS --quick --replays 10 \
    --time-budget 400 --out "$OUT/h200" 2>&1 | tail -45
fi
if [[ $what == bits || $what == all ]]; then
  for b in 2 3 8; do
    python3 -m lowbit.bench --op wxa16 --bits $b --shapes llama3-8b --m 1,16,256,4096 --quick --replays 10 \
      --baselines cublas,tinygemm --time-budget 100 --out "$OUT/h200" 2>&1 | tail -8
  done
fi
if [[ $what == warmup || $what == all ]]; then
  python3 -m lowbit.bench warmup --op w4a16 --shapes llama3-8b --out "$OUT/h200" 2>&1 | tail -12
fi
# the device returns at most 8 files: ship everything as one archive
tar -C "$OUT" -czf "$OUT/bench_h200.tgz" h200 && echo "archived $(ls "$OUT/h200" | wc -l) files"
