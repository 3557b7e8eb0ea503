#!/usr/bin/env bash
# MoE grouped GEMM: the GPU tests (test_grouped, test_moe_module) and scripts/grouped_probe.py (configs
# around the heuristic at T = 1 / 8 / 64). Usage: [PROBE_ARGS=--unroll] bash scripts/gpu_grouped_probe.sh -> $OUT/grouped_probe/
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/grouped_probe"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
timeout ${TEST_S:-240} python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_grouped.py ${TESTS:-tests/test_moe_module.py} 2>&1 \
  | tail -4 > "$R/tests.txt"
cat "$R/tests.txt"
timeout ${PROBE_S:-240} python3 scripts/grouped_probe.py --tokens "${TOKENS:-1,8,64}" ${PROBE_ARGS:-} > "$R/probe.txt" 2>&1
grep -v "^  skip" "$R/probe.txt" | cut -c1-900
