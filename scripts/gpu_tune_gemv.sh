#!/usr/bin/env bash
# Re-tune the small-M (GEMV) buckets for every bit-width; merged into the shipped table by hand.
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
python3 -m lowbit.tuning.tune --bits "${BITS:-4,2,3,8}" --m "${MS:-1,8}" --jobs 14 --out "$OUT/gemv.json" 2>&1 \
  | grep -v "^  skip\|^compile failed" | tee "$OUT/tune_gemv.txt"
