#!/usr/bin/env bash
# Packed 4-bit GEMM v2 (16-byte word loads through fragment-ordered rows, per-tile scale, mask-free
# tiles) on the GPU: kernel tests, the option probe, a W4 re-tune of M = 1..128 merged into the
# shipped table, the M sweep benchmark, and (E2E=1) the decode run. Results: $OUT/packed4_v2.tgz
# Usage: COMMIT=<sha> bash scripts/gpu_packed4_v2.sh
set -uo pipefail
OUT=${OUT:-out/gpu}; R=$OUT/res; mkdir -p "$R/tables"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/out/cache/inductor
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [[ ${TESTS_RUN:-1} == 1 ]]; then stamp tests
timeout ${TEST_S:-150} python3 -m pytest -q -n 12 -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py tests/test_ops.py tests/test_gpu.py} \
  2>&1 | grep -v Warning | tail -${TAIL:-6} | tee "$R/pytest.txt"; fi
if [[ ${PROBE:-1} == 1 ]]; then stamp probe
timeout ${PROBE_S:-120} python3 scripts/packed4_variants.py --m ${PROBE_MS:-1,16,64} --shapes ${PROBE_SHAPES:-6144x4096,28672x4096} \
  --json "$R/packed4_variants.json" 2>&1 | grep -v Warning | tee "$R/packed4_variants.txt"; fi
if [[ ${TUNE:-1} == 1 ]]; then stamp tune
timeout ${TUNE_S:-240} python3 -m lowbit.tuning.tune --bits 4 --m ${MS:-1,2,4,8,16,32,64,128} --jobs 14 --out "$R/tables/tuned.json" 2>&1 \
  | grep -v "^  skip\|^compile failed" | tail -40 | tee "$R/tune_w4.txt"
python3 scripts/merge_tables.py src/lowbit/tuning/configs/nvidia_h200.json "$R/tables/tuned.json" "$R/tables/nvidia_h200.json"
export LOWBIT_CONFIG_DIR=$R/tables; fi
if [[ ${BENCH:-1} == 1 ]]; then stamp bench
timeout ${BENCH_S:-150} python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b --m ${BENCH_MS:-1,2,4,8,16,32,64,128} --quick \
  --replays 10 --tag w4a16_g128_bf16_small_m --out "$R" 2>&1 | tail -30; fi
if [[ ${NCU:-0} == 1 ]]; then stamp ncu
NCU_BIN=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
for shape in ${NCU_SHAPES:-"28672 4096 16" "6144 4096 1"}; do set -- $shape
  timeout 90 $NCU_BIN --clock-control none --launch-skip 2 --launch-count 1 -k regex:"gemm|gemv" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section MemoryWorkloadAnalysis --section SchedulerStats \
    python3 scripts/profile_one.py "$@" 2>&1 | grep -v "^==PROF==" > "$R/ncu_${1}x${2}_m${3}.txt"
  grep -E "Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Stall|Warp Cycles Per Issued|Issued Warp|Theoretical Occ|Block Limit|Grid Size|L2 Hit|Eligible" "$R/ncu_${1}x${2}_m${3}.txt" | head -40
done; fi
if [[ ${E2E:-0} == 1 ]]; then stamp e2e
left=$(( ${E2E_END:-560} - (SECONDS - t0) - 40 )); (( left < 30 )) && left=30
mkdir -p out/e2e
timeout $(( left + 30 )) python3 -m lowbit.bench e2e --model llama3-8b --formats ${E2E_FORMATS:-bf16,tinygemm,w4a16} --batch 1,8,32,128 \
  --compile compile-graph --time-budget $left --resume --tag e2e_llama3-8b_w4 --out out/e2e 2>&1 | grep -v Warning \
  | tail -22 | tee "$R/e2e_w4_log.txt"
python3 -m lowbit.bench e2e --render out/e2e/e2e_llama3-8b_w4.json > /dev/null 2>&1; cp out/e2e/e2e_llama3-8b_w4.* "$R/" 2>/dev/null
fi
stamp done
tar -C "$OUT" -czf "$OUT/packed4_v2.tgz" res && echo "archived: $(ls "$R" | tr '\n' ' ')"
