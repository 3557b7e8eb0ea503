#!/usr/bin/env bash
# Packed 4-bit GEMM for the formats it newly covers (groups 32/64 inside 128-k tiles, symmetric codes,
# NF4 / FP4 lookup tables) on the GPU: kernel tests (fp16 + bf16), the packed-vs-generic probe
# (scripts/group_probe.py), the LUT-vs-int4 benchmark of scripts/gpu_lut.sh (same group 64) and
# (GROUPS_BENCH=1) the int4 benchmark at group 128 / 64 / 32.
# Usage (repo root): COMMIT=<sha> bash scripts/gpu_lut_packed.sh    -> $OUT/lut_packed.tgz
set -uo pipefail
OUT=${OUT:-out/gpu}; R=$OUT/res; mkdir -p "$R"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/src LOWBIT_GIT_COMMIT=${COMMIT:-unknown}
export TRITON_CACHE_DIR=$PWD/out/cache/triton
t0=$SECONDS
stamp() { echo "== [$((SECONDS - t0)) s] $*"; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
if [[ ${TESTS_RUN:-1} == 1 ]]; then stamp tests
timeout ${TEST_S:-170} python3 -m pytest -q -n 14 -p no:cacheprovider ${TESTS:-tests/test_kernels_wxa16.py tests/test_kernels_lut.py \
  tests/test_packed4_asm.py tests/test_formats_lut.py tests/test_ops.py} 2>&1 | grep -v Warning | tail -${TAIL:-8} | tee "$R/pytest.txt"; fi
if [[ ${PROBE:-1} == 1 ]]; then stamp probe
timeout ${PROBE_S:-200} python3 scripts/group_probe.py --m ${PROBE_MS:-1,16,64} --shapes ${PROBE_SHAPES:-6144x4096,28672x4096,4096x14336} \
  --json "$R/group_probe.json" 2>&1 | grep -v Warning | tee "$R/group_probe.txt"; fi
if [[ ${BENCH:-1} == 1 ]]; then stamp bench
timeout ${BENCH_S:-170} python3 -m lowbit.bench --op w4a16 --group-size 64 --shapes llama3-8b --m ${BENCH_MS:-1,16,64,256,1024,4096} \
  --quick --replays 5 --baselines lowbit_nf4,lowbit_fp4,lowbit_cb4,cublas --time-budget $(( ${BENCH_S:-170} - 20 )) \
  --tag lut_w4a16_g64_bf16 --out "$R" > "$R/bench.txt" 2>&1; echo "bench rc=$?"
python3 - "$R" <<'PY' 2>&1 | tee "$R/lut_vs_int4.txt"
import csv, glob, sys
rows = list(csv.DictReader(open(glob.glob(sys.argv[1] + "/lut_w4a16_g64_bf16*.csv")[0])))
t = {(r["layer"], int(r["m"]), r["method"]): r for r in rows}
print("LUT kernel time / uniform int4 kernel time (cold CUDA-graph, same run, group 64); goal <= 1.10")
print(f"{'layer':>8} {'M':>5} {'int4 us':>8} {'nf4':>6} {'fp4':>6} {'cb4':>6}")
for (layer, m, case), r in sorted(t.items()):
    if case != "lowbit" or not r["kernel_us"]:
        continue
    base = float(r["kernel_us"])
    ratio = [f"{float(t[(layer, m, c)]['kernel_us']) / base:6.2f}" if t.get((layer, m, c), {}).get("kernel_us") else "   n/a"
             for c in ("lowbit_nf4", "lowbit_fp4", "lowbit_cb4")]
    print(f"{layer:>8} {m:>5} {base:8.1f} " + " ".join(ratio))
PY
fi
if [[ ${GROUPS_BENCH:-0} == 1 ]]; then stamp groups
for g in ${GROUP_SIZES:-128 64 32}; do
  timeout ${GROUP_S:-60} python3 -m lowbit.bench --op w4a16 --group-size $g --shapes ${GROUP_SHAPES:-llama3-8b} --m ${GROUP_MS:-1,16,64} \
    --quick --replays 5 --time-budget $(( ${GROUP_S:-60} - 15 )) --no-plots --tag w4a16_g${g}_bf16 --out "$R" > "$R/bench_g$g.txt" 2>&1
  echo "group $g rc=$?"; grep -A8 "geomean over shapes" "$R/bench_g$g.txt" | tail -7
done; fi
stamp done
tar -C "$OUT" -czf "$OUT/lut_packed.tgz" res && echo "archived: $(ls "$R" | tr '\n' ' ')"
