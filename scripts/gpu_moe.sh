#!/usr/bin/env bash
# MoE grouped GEMM on the GPU: the MoE tests (bf16 + fp16, CUDA graphs, torch._grouped_mm path), then
# `lowbit bench moe` (Mixtral-8x7B and Qwen1.5-MoE experts, T = 1..4096). <= 4 min wall in total
# (the bench writes its files after every shape and stops starting points at its time budget).
# Usage: COMMIT=<sha> bash scripts/gpu_moe.sh [tests|bench|all]   (everything ends up in $OUT/moe_h200.tgz)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/moe"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
what=${1:-all}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$R/gpu.txt" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'grouped_mm', hasattr(torch, '_grouped_mm'))" | tee -a "$R/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  timeout ${TEST_S:-85} python3 -m pytest -q -n ${JOBS:-8} -p no:cacheprovider tests/test_grouped.py tests/test_moe_module.py \
    tests/test_bench_moe.py 2>&1 | tail -25 | tee "$R/tests.txt"
fi
if [[ $what == bench || $what == all ]]; then
  budget=${BENCH_S:-$([[ $what == all ]] && echo 105 || echo 190)}
  timeout $((budget + 40)) python3 -m lowbit.bench moe --shapes mixtral-8x7b,qwen1.5-moe --tokens "${TOKENS:-1,8,64,512,4096}" \
    --time-budget "$budget" --out "$R" > "$R/bench.txt" 2>&1
  tail -45 "$R/bench.txt"
fi
tar -C "$OUT" -czf "$OUT/moe_h200.tgz" moe && echo "archived $(ls "$R" | wc -l) files"
