#!/usr/bin/env bash
# Tensor parallelism on the GPU machine: single-process shard tests, the torch.distributed test with gloo
# (2 CPU ranks) and with NCCL on every GPU of the host (one rank a GPU; skipped cleanly with 1 GPU), the
# bench's TP shard table (dry run) and a short per-rank timing of the llama3 -tp2 / -tp4 shard shapes.
# Usage (repo root): OUT=out/gpu COMMIT=<sha> bash scripts/gpu_tp.sh     -> $OUT/tp.tgz (~3 min)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/tp"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
# NVLink multicast stays off (shared hosts): keep these set for every process we start
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
T0=$SECONDS
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
echo "GPUs: $NGPU" | tee "$R/gpus.txt"; nvidia-smi -L >> "$R/gpus.txt" 2>&1
timeout 60 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_tp.py > "$R/pytest_shard.txt" 2>&1
echo "shard tests rc=$? ($((SECONDS - T0)) s)"; tail -2 "$R/pytest_shard.txt"
# one launch per backend (module fixture): no xdist here
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_tp_dist.py -k gloo > "$R/pytest_gloo.txt" 2>&1
echo "gloo (2 CPU ranks) rc=$? ($((SECONDS - T0)) s)"; tail -2 "$R/pytest_gloo.txt"
if [ "$NGPU" -ge 2 ]; then
  LOWBIT_TP_WORLD=$NGPU timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_tp_dist.py -k nccl \
    > "$R/pytest_nccl.txt" 2>&1
  echo "nccl ($NGPU GPUs) rc=$? ($((SECONDS - T0)) s)"; tail -2 "$R/pytest_nccl.txt"
else
  echo "nccl: skipped, $NGPU GPU(s); needs 2+" | tee "$R/pytest_nccl.txt"
fi
python3 -m lowbit.bench --op w4a16 --shapes llama3-8b-tp2,llama3-70b-tp4 --m 1,16,256 --dry-run > "$R/table.txt" 2>&1
if [ "$NGPU" -ge 1 ]; then
  timeout 90 python3 -m lowbit.bench --op w4a16 --shapes llama3-8b-tp2,llama3-70b-tp4 --m 1,16,256 --quick \
    --replays 5 --baselines cublas --time-budget 75 --no-plots --tag tp_w4a16_g128_bf16 --out "$R" \
    > "$R/bench.txt" 2>&1; echo "bench rc=$? ($((SECONDS - T0)) s)"; tail -25 "$R/bench.txt"
fi
tar -C "$OUT" -czf "$OUT/tp.tgz" tp && echo "archived $(ls "$R" | wc -l) files in $OUT/tp.tgz ($((SECONDS - T0)) s)"
