#!/usr/bin/env bash
# Where the packed W4 GEMM's warps stall (ncu warp-state sampling per SASS instruction), shipped configs:
# Llama-3-8B gate_up 28672x4096 at M = 1 and 16. Usage: bash scripts/gpu_stalls.sh -> $OUT/stalls/
# FMTS="int:128 nf4:64 int:64 int:128:2" profiles those formats:groups[:bits] (files tagged _<fmt>g<group>[b<bits>];
# default int:128 at 4 bits, untagged); KERNEL is the ncu kernel-name regex (default gemm; sparse24 at M <= 4: gemv).
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/stalls"; mkdir -p "$R"
export PYTHONPATH=$PWD/src
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || ls /usr/local/cuda/bin/ncu)
for fg in ${FMTS:-int:128}; do
IFS=: read -r fmt grp bits <<< "$fg"; bits=${bits:-4}
tag=$([[ $fg == int:128 ]] && echo "" || echo "_${fmt}g${grp}$([[ $bits == 4 ]] || echo "b$bits")")
for mm in ${MS:-1 16}; do
  t="m$mm$tag"
  $NCU --clock-control none --launch-skip 2 --launch-count 1 -k regex:"${KERNEL:-gemm}" \
    --section WarpStateStats --section SourceCounters --section Occupancy --section SpeedOfLight \
    --section MemoryWorkloadAnalysis -o "$R/rep_$t" -f python3 scripts/profile_one.py ${SHAPE:-28672 4096} $mm $bits $fmt $grp > "$R/ncu_log_$t.txt" 2>&1
  $NCU -i "$R/rep_$t.ncu-rep" --print-details all > "$R/details_$t.txt" 2>&1
  $NCU -i "$R/rep_$t.ncu-rep" --page source --csv --print-source sass > "$R/sass_$t.csv" 2>&1 \
    || $NCU -i "$R/rep_$t.ncu-rep" --page source --csv > "$R/sass_$t.csv" 2>&1
  $NCU -i "$R/rep_$t.ncu-rep" --page raw --csv > "$R/raw_$t.csv" 2>&1
  rm -f "$R/rep_$t.ncu-rep"
  head -c 600 "$R/sass_$t.csv"; echo; grep -i "stall" "$R/details_$t.txt" | head -30
done; done
tar -C "$OUT" -czf "$OUT/stalls.tgz" stalls && ls -la "$R"
