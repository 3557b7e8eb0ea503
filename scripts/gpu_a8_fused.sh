#!/usr/bin/env bash
# Activation quantization fused into the GEMM prologue (QUANT_X) vs a separate quantize_act launch, on the GPU:
# the a8 tests, then `lowbit bench --op fp8|int8|w4a8` at small M with LOWBIT_FUSED_QUANT_MAX_M=0 (two launches)
# and =16 (fused), same shapes, so the threshold in kernels/scaled_mm.py can be read off the tables.
# Usage: COMMIT=<sha> bash scripts/gpu_a8_fused.sh [tests|bench|all]   -> $OUT/a8_fused_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/a8_fused"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}; MS=${MS:-1,2,4,8,16}; OPS=${OPS:-fp8 int8 w4a8}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$R/gpu.txt" 2>&1
if [[ $what == tests || $what == all ]]; then
  timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_a8.py 2>&1 | tail -30 > "$R/pytest.txt"
  tail -3 "$R/pytest.txt"
fi
if [[ $what == bench || $what == all ]]; then
  for fused in 0 16; do
    for op in $OPS; do
      mkdir -p "$R/fused$fused"
      LOWBIT_FUSED_QUANT_MAX_M=$fused timeout 60 python3 -m lowbit.bench --op $op --shapes llama3-8b,llama3-70b --m "$MS" \
        --quick --replays 5 --min-copy-mb 128 --time-budget 40 --out "$R/fused$fused" > "$R/fused$fused/bench_$op.txt" 2>&1
      echo "== fused max M $fused, $op"; grep -A9 "geomean over" "$R/fused$fused/bench_$op.txt" | cut -c1-160
    done
  done
fi
tar -C "$OUT" -czf "$OUT/a8_fused_h200.tgz" a8_fused && echo "archived $(find "$R" -type f | wc -l) files in $OUT/a8_fused_h200.tgz"
