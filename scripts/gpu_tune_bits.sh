#!/usr/bin/env bash
# Tune bit-widths other than 4 (W4's table is merged in), then the eager-overhead probe.
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
python3 -m lowbit.tuning.tune --bits "${BITS:-2,3,8}" --m "${MS:-1,8,16,64,256,4096}" \
  --jobs 14 --out "$OUT/bits.json" 2>&1 | grep -v "^  skip\|^compile failed" | tee "$OUT/tune_bits.txt"
python3 scripts/eager_probe.py 2>&1 | tee "$OUT/eager_probe.txt"
