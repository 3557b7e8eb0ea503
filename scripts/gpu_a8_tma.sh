#!/usr/bin/env bash
# The persistent TMA W8A8 kernel on the GPU, ~8 minutes: the a8 tests, scripts/a8_sweep.py --tma (tiles vs the
# pointer kernel, _int_mm / _scaled_mm GEMM only, cuBLAS bf16, activation quantization alone), then
# `lowbit bench --op int8|fp8` through the dispatch on Llama-3 8B + 70B.
# Usage: COMMIT=<sha> bash scripts/gpu_a8_tma.sh [tests|sweep|bench|block|all]   -> $OUT/a8_tma_h200.tgz (one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/a8_tma"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
SWEEP_S=${SWEEP_S:-200}; SWEEP_MS=${SWEEP_MS:-128,256,512,1024,2048,4096,8192}; BENCH_MS=${BENCH_MS:-1,16,64,256,1024,2048,4096,8192}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
if [[ $what == tests || $what == all ]]; then
  timeout 120 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_a8.py 2>&1 | tail -30 > "$R/pytest.txt"
  tail -3 "$R/pytest.txt"
fi
if [[ $what == sweep || $what == all ]]; then
  timeout $((SWEEP_S + 30)) python3 scripts/a8_sweep.py --tma --shapes llama3-8b,llama3-70b --m-tma "$SWEEP_MS" --budget "$SWEEP_S" \
    --out "$R/tma_sweep.json" > "$R/tma_sweep.txt" 2>&1
  tail -60 "$R/tma_sweep.txt"
fi
if [[ $what == block ]]; then  # fp8 128x128 block scales: pointer kernel vs the TMA kernel (opt-in today)
  timeout $((SWEEP_S + 30)) python3 scripts/a8_sweep.py --block --shapes llama3-8b,llama3-70b --m-tma "$SWEEP_MS" \
    --budget "$SWEEP_S" --out "$R/block_sweep.json" > "$R/block_sweep.txt" 2>&1
  tail -40 "$R/block_sweep.txt"
fi
if [[ $what == bench || $what == all ]]; then
  for op in int8 fp8; do
    timeout 100 python3 -m lowbit.bench --op $op --shapes llama3-8b,llama3-70b --m "$BENCH_MS" --quick --replays 5 \
      --min-copy-mb 128 --time-budget 70 --out "$R" > "$R/bench_$op.txt" 2>&1
    tail -22 "$R/bench_$op.txt"
  done
fi
tar -C "$OUT" -czf "$OUT/a8_tma_h200.tgz" a8_tma && echo "archived $(ls "$R" | wc -l) files in $OUT/a8_tma_h200.tgz"
