#!/usr/bin/env bash
# 2:4-sparse int4 on the GPU: sparse24 tests (fp16 + bf16, semi-structured path), then the benchmark on
# Llama-3-8B shapes: ours (dispatched) vs our dense W4A16 vs cuBLAS bf16, plus every sparse backend
# forced (to read the crossovers for dispatch.SPARSE24_GEMV_MAX_M / SPARSE24_GEMM_MAX_M), and the SASS
# instruction counts per dense weight (sparse vs dense GEMV, same tile).
# Usage (repo root): OUT=out/gpu COMMIT=<sha> bash scripts/gpu_sparse24.sh   -> $OUT/sparse24_h200.tgz (< 4 min)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/sparse24"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
T0=$SECONDS
timeout 60 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_sparse24.py > "$R/pytest.txt" 2>&1
echo "pytest rc=$? ($((SECONDS - T0)) s)"; tail -3 "$R/pytest.txt"
LOWBIT_SPARSE24_SEMI_STRUCTURED=1 timeout 150 python3 -m lowbit.bench --op sparse24 --shapes llama3-8b \
  --m 1,2,4,8,16,32,64,128,256,1024,4096 --quick --replays 5 --time-budget 135 --no-plots \
  --baselines lowbit_w4,cublas,sparse24_gemv,sparse24_gemm,sparse24_dequant_mm,sparse24_semi \
  --tag sparse24_g128_bf16 --out "$R" > "$R/bench.txt" 2>&1; echo "bench rc=$? ($((SECONDS - T0)) s)"
python3 - "$R" <<'PY' 2>&1 | tee "$R/sparse_vs_dense.txt"
import csv, glob, sys
rows = list(csv.DictReader(open(glob.glob(sys.argv[1] + "/sparse24_g128_bf16*.csv")[0])))
t = {(r["layer"], int(r["m"]), r["method"]): r for r in rows}
cases = {"lowbit_sparse24": "ours", "sparse24_gemv": "gemv", "sparse24_gemm": "gemm",
         "sparse24_dequant_mm": "deq+cuBLAS", "sparse24_semi": "deq+semi", "cublas": "cuBLAS bf16"}
print("dense W4A16 kernel us / method kernel us (cold CUDA graph, same run; > 1 = faster than dense W4A16)")
print(f"{'layer':>8} {'M':>5} {'dense us':>9} " + " ".join(f"{c:>12}" for c in cases.values()))
for (layer, m, case), r in sorted(t.items()):
    if case != "lowbit_w4" or not r["kernel_us"]:
        continue
    base = float(r["kernel_us"])
    cols = []
    for c in cases:
        o = t.get((layer, m, c))
        cols.append(f"{base / float(o['kernel_us']):12.2f}" if o and o["kernel_us"] else f"{o['status'] if o else 'n/a':>12}")
    print(f"{layer:>8} {m:>5} {base:9.1f} " + " ".join(cols))
PY
for k in "sparse24_gemv --block-n 256 --block-k 128" "gemv --block-n 256 --block-k 128" \
         "sparse24_gemv --block-n 128 --block-k 128" "gemv --block-n 128 --block-k 128"; do
  echo "== $k"; timeout 20 python3 scripts/compile_check.py $k --per-weight 2>&1 | grep -E "REG|K loop"
done > "$R/sass_per_weight.txt" 2>&1; echo "sass ($((SECONDS - T0)) s)"
tar -C "$OUT" -czf "$OUT/sparse24_h200.tgz" sparse24 && echo "archived $(ls "$R" | wc -l) files in $OUT/sparse24_h200.tgz"
