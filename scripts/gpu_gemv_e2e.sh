#!/usr/bin/env bash
# GEMV rework check on the GPU: kernel tests, re-tune W4 small-M GEMV configs, small-M benchmark with
# the merged table, decode-step profile, and the e2e decode run (bf16 / tinygemm / w4a16) on it.
# Usage: COMMIT=<sha> bash scripts/gpu_gemv_e2e.sh   (results: $OUT/gemv_e2e.tgz)
set -uo pipefail
OUT=${OUT:-out/gpu}; R=$OUT/res; mkdir -p "$R/tables"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/out/cache/inductor
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
stamp tests
[[ ${SKIP_TESTS:-0} == 1 ]] || timeout 150 python3 -m pytest -q -n 12 -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py tests/test_ops.py tests/test_gpu.py} \
  2>&1 | tail -${TAIL:-4} | tee "$R/pytest.txt"
if [[ ${TUNE:-1} == 1 ]]; then stamp tune
timeout ${TUNE_S:-150} python3 -m lowbit.tuning.tune --bits 4 --m ${MS:-1,4} --jobs 14 --out "$R/tables/gemv.json" 2>&1 \
  | grep -v "^  skip\|^compile failed" | tee "$R/tune_gemv_w4.txt"
python3 scripts/merge_tables.py src/lowbit/tuning/configs/nvidia_h200.json "$R/tables/gemv.json" "$R/tables/nvidia_h200.json"
export LOWBIT_CONFIG_DIR=$R/tables; fi
if [[ ${BENCH:-1} == 1 ]]; then stamp bench
timeout 110 python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b --m ${BENCH_MS:-1,2,4,8} --quick --replays 10 \
  --tag w4a16_g128_bf16_small_m --out "$R" 2>&1 | tail -25; fi
if [[ ${PROFILE:-1} == 1 ]]; then stamp profile
timeout 120 python3 scripts/e2e_profile.py --formats bf16,tinygemm,w4a16 --batch 1,32 --out "$R" 2>&1 \
  | grep -v Warning | tee "$R/e2e_profile.txt"; fi
if [[ ${E2E:-1} == 1 ]]; then
stamp e2e
left=$(( 560 - (SECONDS - t0) - 40 )); (( left < 30 )) && left=30
mkdir -p out/e2e
timeout $(( left + 30 )) python3 -m lowbit.bench e2e --model llama3-8b --formats bf16,tinygemm,w4a16 --batch 1,8,32,128 \
  --compile compile-graph --time-budget $left --resume --tag e2e_llama3-8b_w4 --out out/e2e 2>&1 | grep -v Warning \
  | tail -22 | tee "$R/e2e_w4_log.txt"
python3 -m lowbit.bench e2e --render out/e2e/e2e_llama3-8b_w4.json > /dev/null 2>&1; cp out/e2e/e2e_llama3-8b_w4.* "$R/" 2>/dev/null
fi
stamp done
tar -C "$OUT" -czf "$OUT/gemv_e2e.tgz" res && echo "archived: $(ls "$R" | tr '\n' ' ')"
