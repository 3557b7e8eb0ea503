#!/usr/bin/env bash
# ncu profiles of the W4 kernels at M=1 and M=16 (summary sections only) -> $OUT
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
for mm in 1 16; do
  $NCU --clock-control none --launch-skip 2 --launch-count 1 -k regex:"gemv|gemm" \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    python3 scripts/profile_one.py 4096 4096 $mm 2>&1 | grep -v "^==PROF==" | tee "$OUT/ncu_m$mm.txt" | head -150
done
