#!/usr/bin/env bash
# Packed 1/2/8-bit GEMM (mma word order) on the GPU: kernel tests, a re-tune of W1/W2/W8 (merged into
# the shipped table), the bits sweep (lowbit bench bits) and (WXA16=1) per-width M sweeps.
# Results: $OUT/bits.tgz.  Usage: COMMIT=<sha> bash scripts/gpu_bits.sh
set -uo pipefail
OUT=${OUT:-out/gpu}; R=$OUT/res; mkdir -p "$R/tables"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/out/cache/inductor
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [[ ${TESTS_RUN:-1} == 1 ]]; then stamp tests
timeout ${TEST_S:-180} python3 -m pytest -q -n 12 -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py tests/test_packed4_asm.py tests/test_grouped.py tests/test_moe_module.py tests/test_api.py tests/test_ops.py} \
  2>&1 | grep -v Warning | tail -${TAIL:-8} | tee "$R/pytest.txt"; fi
if [[ -n ${TABLE:-} ]]; then export LOWBIT_CONFIG_DIR=$(dirname "$TABLE"); fi
if [[ ${TUNE:-1} == 1 ]]; then stamp tune
timeout ${TUNE_S:-300} python3 -m lowbit.tuning.tune --bits ${TUNE_BITS:-1,2,8} --m ${MS:-1,16,64} --gemv small --jobs 14 \
  --out "$R/tables/tuned.json" 2>&1 | grep -v "^  skip\|^compile failed" | tail -40 | tee "$R/tune_bits.txt"
python3 scripts/merge_tables.py src/lowbit/tuning/configs/nvidia_h200.json "$R/tables/tuned.json" "$R/tables/nvidia_h200.json"
export LOWBIT_CONFIG_DIR=$R/tables; fi
if [[ ${SWEEP:-1} == 1 ]]; then stamp bits sweep
timeout ${SWEEP_S:-200} python3 -m lowbit.bench bits --bits ${SWEEP_BITS:-1,2,3,4,5,6,7,8} --shapes ${SWEEP_SHAPES:-llama3-8b} \
  --m ${SWEEP_MS:-1,16} --quick --replays 10 --out "$R/sweep" 2>&1 | grep -v "Warning\|^wrote\|^elapsed" | tail -${SWEEP_TAIL:-30}; fi
if [[ ${WXA16:-0} == 1 ]]; then stamp wxa16 sweeps
for b in ${WXA16_BITS:-2 8}; do
  timeout ${WXA16_S:-100} python3 -m lowbit.bench --op wxa16 --bits $b --shapes llama3-8b,llama3-70b --m ${WXA16_MS:-1,16,64,1024} \
    --quick --replays 10 --out "$R" 2>&1 | grep -A12 "geomean over shapes"; done; fi
stamp done
tar -C "$OUT" -czf "$OUT/bits.tgz" res && echo "archived: $(ls "$R" | tr '\n' ' ')"
