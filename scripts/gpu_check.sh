#!/usr/bin/env bash
# On the GPU machine: install, run the whole test suite (GPU tests included), the main job and probes.
# Usage: bash scripts/gpu_check.sh [tests|perf|all]   (results under $OUT)
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
what=${1:-all}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q -n 8 -p no:cacheprovider tests 2>&1 | tail -30 | tee "$OUT/pytest.txt"
  python3 -m lowbit.cli run 2>&1 | tee "$OUT/run.txt"
fi
if [[ $what == perf || $what == all ]]; then
  python3 scripts/quick_perf.py --bits "${BITS:-4}" 2>&1 | tee "$OUT/quick_perf.txt"
fi
