#!/usr/bin/env bash
# Lookup-table weights on the GPU: LUT tests (fp16 + bf16), NF4 / FP4 / 4-bit codebook vs our uniform int4
# on Llama-3-8B shapes at M = 1..4096 (same group size 64, same activations), SQNR table (2048 rows x full K per shape).
# Usage (repo root): OUT=out/gpu COMMIT=<sha> bash scripts/gpu_lut.sh     -> $OUT/lut_h200.tgz (~4 min)
set -uo pipefail
OUT=${OUT:-out/gpu}; R="$OUT/lut"; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
T0=$SECONDS
timeout 70 python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_kernels_lut.py tests/test_formats_lut.py \
  > "$R/pytest.txt" 2>&1; echo "pytest rc=$? ($((SECONDS - T0)) s)"; tail -3 "$R/pytest.txt"
timeout 125 python3 -m lowbit.bench --op w4a16 --group-size 64 --shapes llama3-8b --m 1,16,64,256,1024,4096 \
  --quick --replays 5 --baselines lowbit_nf4,lowbit_fp4,lowbit_cb4,cublas --time-budget 110 --no-plots \
  --tag lut_w4a16_g64_bf16 --out "$R" > "$R/bench.txt" 2>&1; echo "bench rc=$? ($((SECONDS - T0)) s)"
python3 - "$R" <<'PY' 2>&1 | tee "$R/lut_vs_int4.txt"
import csv, glob, sys, collections
rows = list(csv.DictReader(open(glob.glob(sys.argv[1] + "/lut_w4a16_g64_bf16*.csv")[0])))
t = {(r["layer"], int(r["m"]), r["method"]): r for r in rows}
key = "kernel_us"
print("LUT kernel time / uniform int4 kernel time (cold CUDA-graph, same run); goal <= 1.10")
print(f"{'layer':>8} {'M':>5} {'int4 us':>8} {'nf4':>6} {'fp4':>6} {'cb4':>6}")
for (layer, m, case), r in sorted(t.items()):
    if case != "lowbit" or not r[key]:
        continue
    base = float(r[key])
    ratio = [f"{float(t[(layer, m, c)][key]) / base:6.2f}" if (layer, m, c) in t and t[(layer, m, c)][key] else "   n/a"
             for c in ("lowbit_nf4", "lowbit_fp4", "lowbit_cb4")]
    print(f"{layer:>8} {m:>5} {base:8.1f} " + " ".join(ratio))
PY
timeout 35 python3 -m lowbit.formats.lut_error --shapes llama3-8b --max-rows 2048 --device cuda \
  --json "$R/sqnr.json" > "$R/sqnr.md" 2>&1; echo "sqnr rc=$? ($((SECONDS - T0)) s)"
tar -C "$OUT" -czf "$OUT/lut_h200.tgz" lut && echo "archived $(ls "$R" | wc -l) files in $OUT/lut_h200.tgz"
