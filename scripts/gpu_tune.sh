#!/usr/bin/env bash
# On the GPU machine: tune GEMV/GEMM configs and probe the result against cuBLAS.
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
python3 -m lowbit.tuning.tune --bits "${BITS:-4}" --m "${MS:-1,8,16,32,64,128,256,1024,4096}" \
  --jobs 12 --out "$OUT/nvidia_h200.json" 2>&1 | grep -v "^  skip" | tee "$OUT/tune.txt"
LOWBIT_CONFIG_DIR=$OUT python3 scripts/quick_perf.py --bits "${BITS:-4}" --m 1,2,4,8,16,32,64,128,256,1024,4096 2>&1 | tee "$OUT/quick_perf.txt"
