#!/usr/bin/env bash
# Where the packed W4 GEMM's warps stall (ncu warp-state sampling per SASS instruction), shipped configs:
# Llama-3-8B gate_up 28672x4096 at M = 1 and 16. Usage: bash scripts/gpu_stalls.sh -> $OUT/stalls/
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/stalls"; mkdir -p "$R"
export PYTHONPATH=$PWD/src
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
for mm in ${MS:-1 16}; do
  $NCU --clock-control none --launch-skip 2 --launch-count 1 -k regex:"gemm" \
    --section WarpStateStats --section SourceCounters --section Occupancy --section SpeedOfLight \
    --section MemoryWorkloadAnalysis -o "$R/rep_m$mm" -f python3 scripts/profile_one.py 28672 4096 $mm > "$R/ncu_log_m$mm.txt" 2>&1
  $NCU -i "$R/rep_m$mm.ncu-rep" --print-details all > "$R/details_m$mm.txt" 2>&1
  $NCU -i "$R/rep_m$mm.ncu-rep" --page source --csv --print-source sass > "$R/sass_m$mm.csv" 2>&1 \
    || $NCU -i "$R/rep_m$mm.ncu-rep" --page source --csv > "$R/sass_m$mm.csv" 2>&1
  $NCU -i "$R/rep_m$mm.ncu-rep" --page raw --csv > "$R/raw_m$mm.csv" 2>&1
  rm -f "$R/rep_m$mm.ncu-rep"
  head -c 600 "$R/sass_m$mm.csv"; echo; grep -i "stall" "$R/details_m$mm.txt" | head -30
done
tar -C "$OUT" -czf "$OUT/stalls.tgz" stalls && ls -la "$R"
