#!/usr/bin/env bash
# Re-tune the small-M buckets (GEMV with pipelined word loads), merge into the shipped table and
# benchmark M = 1..16 with the merged table. Results: $OUT/gemv.tgz
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT/h200" "$OUT/tables"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
timeout 300 python3 -m lowbit.tuning.tune --bits "${BITS:-4,2,3,8}" --m "${MS:-1,8}" --jobs 14 \
  --out "$OUT/tables/gemv.json" 2>&1 | grep -v "^  skip\|^compile failed" | tee "$OUT/h200/tune_gemv.txt"
python3 scripts/merge_tables.py src/lowbit/tuning/configs/nvidia_h200.json "$OUT/tables/gemv.json" \
  "$OUT/tables/nvidia_h200.json"
LOWBIT_CONFIG_DIR=$OUT/tables timeout 150 python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b \
  --m 1,2,4,8,16 --quick --replays 10 --tag w4a16_g128_bf16_small_m --out "$OUT/h200" 2>&1 | tail -12
cp "$OUT/tables/nvidia_h200.json" "$OUT/h200/"
tar -C "$OUT" -czf "$OUT/gemv.tgz" h200
