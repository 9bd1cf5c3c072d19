#!/usr/bin/env bash
# One run on a lent GPU machine (no network there; its own torch and triton): versions, the Triton
# kernels' tests and the CUDA sweep of every implementation for real, tile tuning, then the GPU
# benchmark tables. Everything lands in $OUT. Usage: bash benchmarks/gpu/run_device.sh [stage ...]
# with stages: env tests tune decode lsh blocks blocks64 (default: all but decode). The block tables
# run triton_block_sparse with the fastest settings the tune stage found ($OUT/best.json).
set -uo pipefail
OUT=${OUT:-/tmp/attnkit-gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
stages=${*:-env tests tune blocks lsh blocks64}
t0=$(date +%s)
stamp() { echo "== $1 at +$(( $(date +%s) - t0 )) s"; }
keep() { cp "benchmarks/results/gpu_$1.json" "$OUT/" 2>/dev/null; }  # at most 8 files come back: logs + tables
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
    blocks)
      timeout "${BLOCKS_S:-170}" python3 benchmarks/bench_gpu.py --tables block_sparse --T 16384 --D 128 --B 1 \
        --masks causal window bigbird none --tag blocks16k --budget-s "${BLOCKS_BUDGET:-150}" --max-cell-s 0.5 \
        --triton-options "$(cat /tmp/best.json 2>/dev/null || echo '{}')" \
        > "$OUT/blocks.log" 2>&1; echo "blocks exit $?"; tail -12 "$OUT/blocks.log" | cut -c1-400; keep blocks16k ;;
    blocks64)
      timeout "${BLOCKS64_S:-100}" python3 benchmarks/bench_gpu.py --tables block_sparse --T 65536 --D 128 --B 1 \
        --masks causal window bigbird none --impls triton_bs flex sdpa --tag blocks64k \
        --budget-s "${BLOCKS64_BUDGET:-85}" --max-cell-s 0.5 \
        --triton-options "$(cat /tmp/best.json 2>/dev/null || echo '{}')" \
        > "$OUT/blocks64.log" 2>&1; echo "blocks64 exit $?"; tail -12 "$OUT/blocks64.log" | cut -c1-400; keep blocks64k ;;
  esac
done
stamp done
