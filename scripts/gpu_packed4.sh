#!/usr/bin/env bash
# Packed 4-bit dequant (inline PTX) check on the GPU: kernel tests (fp16 + bf16, asm path), then the
# packed-vs-generic GEMM probe, then (optional) the MoE tests. Results: $OUT/packed4.tgz
set -uo pipefail
OUT=${OUT:-out/gpu}; R=$OUT/res; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
stamp tests
timeout ${TEST_S:-150} python3 -m pytest -q -n 12 -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py tests/test_ops.py tests/test_gpu.py} \
  2>&1 | grep -v Warning | tail -${TAIL:-6} | tee "$R/pytest.txt"
stamp probe
timeout ${PROBE_S:-240} python3 scripts/packed4_probe.py --m ${MS:-1,16,64,256} --shapes ${SHAPES:-6144x4096,28672x4096} \
  --dtype ${DT:-bf16} --json "$R/packed4_probe.json" 2>&1 | grep -v Warning | tee "$R/packed4_probe.txt"
if [[ -n ${EXTRA:-} ]]; then stamp extra; eval "$EXTRA" 2>&1 | tail -30 | tee "$R/extra.txt"; fi
stamp done
tar -C "$OUT" -czf "$OUT/packed4.tgz" res && echo "archived: $(ls "$R" | tr '\n' ' ')"
