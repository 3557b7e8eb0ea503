#!/usr/bin/env bash
# W4A16 full M sweep on the GPU with the shipped table (~6 minutes): GPU kernel tests, then
# `lowbit bench --op w4a16` on Llama-3 8B + 70B, M = 1 .. 4096, against cuBLAS bf16, tinygemm and dequantize +
# cuBLAS; (TP=1) the TP4 shards at M = 1..128; (G64=1) int4 group 64 at the shapes/M of G64_SHAPES/G64_MS;
# (EAGER=1) scripts/eager_probe.py (host time per eager call, QuantLinear vs tinygemm); (STALLS=1) scripts/gpu_stalls.sh.
# Usage: COMMIT=<sha> bash scripts/gpu_w4_sweep.sh   -> $OUT/w4_sweep_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/w4_sweep"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
MS=${MS:-1,2,4,8,16,32,64,128,256,512,1024,2048,4096}
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
echo "${COMMIT:-unknown}" > "$R/COMMIT.txt"
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
if [[ ${TESTS_RUN:-1} == 1 ]]; then stamp tests
timeout ${TEST_S:-170} python3 -m pytest -q -n ${WORKERS:-8} -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py} \
  -k "${TESTS_K:-packed or folded or gemm}" 2>&1 | grep -v Warning | tail -20 > "$R/pytest_gemm.txt"
tail -2 "$R/pytest_gemm.txt"; fi
if [[ ${EAGER:-0} == 1 ]]; then stamp eager
timeout 90 python3 scripts/eager_probe.py > "$R/eager_probe.txt" 2>&1; cat "$R/eager_probe.txt"; fi
stamp sweep
timeout ${BENCH_S:-330} python3 -m lowbit.bench --op w4a16 --shapes llama3-8b,llama3-70b --m "$MS" --quick --replays 5 \
  --min-copy-mb 128 --time-budget $(( ${BENCH_S:-330} - 40 )) --out "$R" > "$R/bench_w4a16.txt" 2>&1
grep -A20 "geomean" "$R/w4a16_g128_bf16.txt" | head -24
if [[ ${TP:-0} == 1 ]]; then stamp tp4
timeout ${TP_S:-120} python3 -m lowbit.bench --op w4a16 --shapes llama3-8b-tp4,llama3-70b-tp4 --m "${TP_MS:-1,16,32,64,128}" \
  --quick --replays 5 --min-copy-mb 128 --time-budget $(( ${TP_S:-120} - 20 )) --tag w4a16_g128_bf16_tp4 --out "$R" \
  > "$R/bench_tp4.txt" 2>&1
grep -A12 "geomean" "$R/w4a16_g128_bf16_tp4.txt" | head -14; fi
if [[ ${G64:-0} == 1 ]]; then stamp g64
timeout 90 python3 -m lowbit.bench --op w4a16 --group-size 64 --shapes "${G64_SHAPES:-28672x4096}" --m "${G64_MS:-64}" --quick \
  --replays 5 --baselines cublas --no-plots --tag w4a16_g64_check --out "$R" > "$R/bench_g64.txt" 2>&1
grep -B2 -A6 "µs kernel" "$R/w4a16_g64_check.txt" | head -12; fi
if [[ ${STALLS:-0} == 1 ]]; then stamp stalls  # ncu warp-state sampling of the shipped W4 kernel, 28672x4096 M = 1 / 16
OUT="$R" timeout 200 bash scripts/gpu_stalls.sh > "$R/stalls_log.txt" 2>&1; rm -f "$R/stalls.tgz" "$R"/stalls/raw_m*.csv
grep -E "Duration|DRAM Throughput|Issue Active|Executed Ipc A|Achieved Occupancy|Registers Per" "$R"/stalls/details_m*.txt | head -24; fi
stamp archive
tar -C "$OUT" -czf "$OUT/w4_sweep_h200.tgz" w4_sweep && echo "archived $(ls "$R" | wc -l) files"
