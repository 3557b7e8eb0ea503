#!/usr/bin/env bash
# On the GPU machine (repo root): lowbit.hf tests (GPU test included), then a Llama-3-8B-config model
# with random bf16 weights written to local disk, loaded through from_pretrained into lowbit W4A16
# (quantized on load, layer by layer, under a GPU memory cap below the bf16 model size), generating a
# few tokens; peak GPU memory and load time. All results in ONE tar: $OUT/gpu_hf.tgz. ~1.5 minutes
# (first H200 run: tests 32 s, 4-layer write 4 s + load 1.3 s); at most 75 + 110 + 40 s of timeouts.
# Env: LAYERS (default 32 = the full 8B), CAP_GIB (default 12; bf16 8B is 15 GiB), CKPT (scratch dir).
set -uo pipefail
OUT=${OUT:-out/gpu_hf}; mkdir -p "$OUT"
R=$(mktemp -d); trap 'tar -C "$R" -czf "$OUT/gpu_hf.tgz" . ; rm -rf "$R" "$CKPT"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src
CKPT=${CKPT:-/tmp/lowbit_hf_llama3_8b}; LAYERS=${LAYERS:-32}; CAP_GIB=${CAP_GIB:-12}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 -c "import transformers, safetensors; print('transformers', transformers.__version__, 'safetensors', safetensors.__version__)" \
    || echo "transformers/safetensors missing: lowbit.hf cannot run here"
  df -h /tmp | tail -1; free -g | head -2
} 2>&1 | tee "$R/env.txt"
timeout 75 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_hf.py tests/test_hf_gptq_awq.py 2>&1 | tail -25 | tee "$R/pytest.txt"
measure() {  # $1 layers, $2 timeout
  timeout "$2" python3 -m lowbit.hf.measure --model llama3-8b --layers "$1" --dir "$CKPT" --gpu-cap-gib "$CAP_GIB" \
    --out "$R/llama3_8b_w4a16_L$1.json" > "$R/measure_L$1.txt" 2>&1
}
if measure "$LAYERS" 110; then
  echo "measured with $LAYERS layers" | tee -a "$R/summary.txt"
else
  echo "LAYERS=$LAYERS did not finish (rc $?; see measure_L$LAYERS.txt); falling back to 4 layers" | tee -a "$R/summary.txt"
  tail -5 "$R/measure_L$LAYERS.txt"; rm -rf "$CKPT"
  measure 4 40 || echo "4 layers failed too" | tee -a "$R/summary.txt"
fi
python3 - "$R" <<'PY' 2>&1 | tee -a "$R/summary.txt"
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/llama3_8b_w4a16_L*.json")):
    r = json.load(open(f))
    g, w = r["gib"], r.get("write", {})
    print(f"{r['num_hidden_layers']} layers, W{r['bits']}A16 g{r['group_size']} on {r.get('gpu')} (cap {r.get('gpu_cap_gib')} GiB): "
          f"dense checkpoint {g['dense_checkpoint']} GiB written in {w.get('seconds', 0):.0f} s; load+quantize "
          f"{r['load']['load_s']:.1f} s, peak {g['peak']} GiB, resident {g['resident']} GiB (largest dense layer "
          f"{g['largest_layer_dense']} GiB); generate {len(r['generate']['tokens'])} tokens {r['generate']['seconds']:.1f} s "
          f"(first, JIT) / {r['generate_again']['seconds']:.2f} s")
PY
