#!/usr/bin/env bash
# One run on a lent GPU machine (no network there; its own torch and triton): versions, the Triton
# kernels' tests and the CUDA sweep of every implementation for real, tile tuning, an LSH profile,
# then the GPU benchmark tables. Everything lands in $OUT. Usage: bash benchmarks/gpu/run_device.sh
# [stage ...] with stages: env tests tests_lsh tune tune_bigbird profile profile_indexed decode lsh blocks blocks64
# blocks_d64 blocks_d64_64k blocks_b4 blocks128k blocks_bigbird (default: env tests tune blocks lsh blocks64). The
# block tables run triton_block_sparse with the settings the tune stage found ($OUT/best.json) when
# it ran.
set -uo pipefail
OUT=${OUT:-/tmp/attnkit-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
stages=${*:-env tests tune blocks lsh blocks64}
t0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - t0 )) s"; }
keep() { cp "benchmarks/results/gpu_$1.json" "$OUT/" 2>/dev/null; }  # at most 8 files come back: logs + tables
table() {  # table TAG TIMEOUT_S BUDGET_S bench_gpu-arguments...: one block-sparse table
  local tag=$1 limit=$2 budget=$3; shift 3
  timeout "$limit" python3 benchmarks/bench_gpu.py --tables block_sparse --masks causal window bigbird none "$@" \
    --tag "$tag" --budget-s "$budget" --max-cell-s 0.5 --triton-options "$(cat /tmp/best.json 2>/dev/null || echo '{}')" \
    > "$OUT/$tag.log" 2>&1; echo "$tag exit $?"; tail -12 "$OUT/$tag.log" | cut -c1-400; keep "$tag"
}
for stage in $stages; do
  stamp "$stage"
  case $stage in
    env)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
      python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__, torch.cuda.get_device_name())" ;;
    tests)
      par=; python3 -c "import xdist" 2>/dev/null && par="-n 12"
      timeout "${TESTS_S:-170}" python3 -m pytest -p no:cacheprovider -o addopts="" -q -rs $par \
        tests/kernels/test_triton_block_sparse.py tests/kernels/test_triton_lsh.py tests/gpu/test_cuda_suite.py \
        > "$OUT/tests.log" 2>&1; echo "pytest exit $?"; grep -E "passed|failed|FAILED|Error" "$OUT/tests.log" | tail -25 ;;
    tune)
      timeout "${TUNE_S:-80}" python3 benchmarks/gpu/tune_tiles.py --T 16384 --D 128 --budget-s "${TUNE_BUDGET:-65}" \
        --best /tmp/best.json > "$OUT/tune.log" 2>&1; echo "tune exit $?"
      tail -24 "$OUT/tune.log" | cut -c1-160 ;;
    decode)
      timeout 60 python3 benchmarks/bench_gpu.py --tables decode --decode-S 131072 --tag decode --budget-s 40 \
        > "$OUT/decode.log" 2>&1; echo "decode exit $?"; tail -8 "$OUT/decode.log"; keep decode ;;
    lsh)
      timeout "${LSH_S:-90}" python3 benchmarks/bench_gpu.py --tables lsh --lsh-T 16384 65536 --lsh-masks causal \
        --tag lsh --budget-s "${LSH_BUDGET:-75}" --max-cell-s 0.5 > "$OUT/lsh.log" 2>&1; echo "lsh exit $?"
      tail -10 "$OUT/lsh.log" | cut -c1-300; keep lsh ;;
    blocks) table blocks16k "${BLOCKS_S:-170}" "${BLOCKS_BUDGET:-150}" --T 16384 --D 128 --B 1 ;;
    blocks64) table blocks64k "${BLOCKS64_S:-100}" "${BLOCKS64_BUDGET:-85}" --T 65536 --D 128 --B 1 \
        --impls triton_bs flex sdpa ;;
    blocks_d64) table blocks16k_d64 "${BLOCKS_S:-100}" "${BLOCKS_BUDGET:-85}" --T 16384 --D 64 --B 1 \
        --impls triton_bs flex sdpa ;;
    blocks_d64_64k) table blocks64k_d64 "${BLOCKS64_S:-100}" "${BLOCKS64_BUDGET:-85}" --T 65536 --D 64 --B 1 \
        --impls triton_bs flex sdpa ;;
    blocks_b4) table blocks4k_b4 "${BLOCKS_B4_S:-80}" "${BLOCKS_B4_BUDGET:-65}" --T 4096 --D 128 --B 4 \
        --impls triton_bs flex sdpa ;;
    blocks128k) table blocks128k "${BLOCKS128_S:-90}" "${BLOCKS128_BUDGET:-75}" --T 131072 --D 128 --B 1 \
        --masks causal none window --impls triton_bs flex sdpa ;;
    blocks_bigbird) table blocks_bigbird "${BLOCKS_BB_S:-70}" "${BLOCKS_BB_BUDGET:-55}" --T 16384 65536 --D 128 \
        --B 1 --masks bigbird --impls triton_bs flex sdpa ;;
    tests_lsh)
      timeout "${TESTS_S:-90}" python3 -m pytest -p no:cacheprovider -o addopts="" -q -rs -n 8 \
        tests/kernels/test_triton_lsh.py tests/gpu/test_cuda_suite.py -k "lsh" > "$OUT/tests_lsh.log" 2>&1
      echo "pytest exit $?"; grep -E "passed|failed|FAILED|Error" "$OUT/tests_lsh.log" | tail -15 ;;
    tune_bigbird)
      timeout "${TUNE_S:-85}" python3 benchmarks/gpu/tune_tiles.py --T 16384 --D 128 --masks bigbird window \
        --budget-s "${TUNE_BUDGET:-70}" --json "$OUT/gpu_tune_bigbird.json" > "$OUT/tune_bigbird.log" 2>&1
      echo "tune exit $?"; grep -v '^{' "$OUT/tune_bigbird.log" | tail -5
      python3 - "$OUT/gpu_tune_bigbird.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["rows"]:
    print(f"{r['mask']:8} {r['timed']:8} {json.dumps(r['options']):70} {r.get('ms', r.get('error'))}")
PY
      ;;
    profile_indexed)
      timeout "${PROFILE_S:-80}" python3 benchmarks/gpu/profile_lsh.py --T 65536 --D 64 --triton-rows indexed \
        --no-variants > "$OUT/profile_indexed.log" 2>&1; echo "profile_indexed exit $?"
      grep -B2 -A12 "^== forward, T" "$OUT/profile_indexed.log" | cut -c1-70,150-200 ;;
    profile)
      timeout "${PROFILE_S:-80}" python3 benchmarks/gpu/profile_lsh.py --T 65536 --D 64 \
        --json "$OUT/gpu_lsh_settings.json" > "$OUT/profile.log" 2>&1; echo "profile exit $?"
      grep -A 14 "^== settings" "$OUT/profile.log" ;;
  esac
done
stamp done
# the logs as one file (at most 8 files come back)
(cd "$OUT" && ls ./*.log >/dev/null 2>&1 && tar -cf logs.tar ./*.log && rm -f ./*.log)
