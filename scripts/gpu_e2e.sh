#!/usr/bin/env bash
# On the GPU machine: the whole test suite (converter tests with the carried packer wheels, e2e smoke
# tests), then the end-to-end decode measurement of docs/e2e.md (resumable: run again to finish).
# Usage: COMMIT=<sha> [FORMATS=bf16,w4a16,...] [TAG=stem] bash scripts/gpu_e2e.sh [tests|e2e|ro|all]
# (results under $OUT, one archive)
set -uo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT/res"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/out/cache/inductor
what=${1:-all}; budget=${BUDGET:-400}; formats=${FORMATS:-bf16,tinygemm,w4a16,w3a16,w2a16}; tag=${TAG:-e2e_llama3-8b}
start=$SECONDS
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.total --format=csv | tee "$OUT/res/gpu.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/res/gpu.txt"
if [[ $what == tests || $what == all ]]; then
  timeout 300 python3 -m pytest -q -n 12 -p no:cacheprovider -rs tests 2>&1 | grep -v "^SKIPPED.*CPU" | tail -40 | tee "$OUT/res/pytest.txt"
fi
if [[ $what == e2e || $what == all ]]; then
  left=$(( budget - (SECONDS - start) )); (( left < 60 )) && left=60
  mkdir -p out/e2e
  timeout $(( left + 150 )) python3 -m lowbit.bench e2e --model llama3-8b --formats "$formats" \
    --batch 1,8,32,128 --prompt 128 --decode 256 --compile compile-graph --time-budget $left --resume --tag "$tag" \
    --out out/e2e 2>&1 | grep -v Warning | tail -60 | tee "$OUT/res/e2e_log.txt"
  python3 -m lowbit.bench e2e --render "out/e2e/$tag.json" > /dev/null 2>&1
  cp "out/e2e/$tag".* "$OUT/res/" 2>/dev/null
fi
if [[ $what == ro ]]; then
  timeout $(( budget + 120 )) python3 -m lowbit.bench e2e --model llama3-8b --formats bf16,tinygemm,w4a16 --batch 1 \
    --compile reduce-overhead --time-budget $budget --resume --tag e2e_llama3-8b_ro --out out/e2e 2>&1 | grep -v Warning | tail -40 | tee "$OUT/res/e2e_ro_log.txt"
  python3 -m lowbit.bench e2e --render out/e2e/e2e_llama3-8b_ro.json > /dev/null 2>&1
  cp out/e2e/e2e_llama3-8b_ro.* "$OUT/res/" 2>/dev/null
fi
tar -C "$OUT" -czf "$OUT/e2e_results.tgz" res && echo "archived: $(ls "$OUT/res" | tr '\n' ' ')"
