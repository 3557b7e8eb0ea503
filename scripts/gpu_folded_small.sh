#!/usr/bin/env bash
# Packed W4 GEMM at M < 128: group scale folded into the weights (async wgmma) vs the per-K-tile product
# scale (a wgmma wait every tile), every tile / split / stage pair, Llama-3 8B + 70B shapes (~4 minutes).
# Usage: COMMIT=<sha> MS=1,16,32,64 [FAMILY=tma-small|k-unroll] bash scripts/gpu_folded_small.sh   -> $OUT/<family>/
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/${FAMILY:-folded-small}"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
MS=${MS:-1,16,32,64}
{ nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,power.limit --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } > "$R/gpu.txt" 2>&1
timeout ${PROBE_S:-400} python3 scripts/pipeline_probe.py --family "${FAMILY:-folded-small}" --m "$MS" --jobs 12 \
  --out "$R/${FAMILY:-folded-small}_probe.json" > "$R/log.txt" 2>&1
grep -v "^compiled" "$R/log.txt" | cut -c1-400 | tail -40
