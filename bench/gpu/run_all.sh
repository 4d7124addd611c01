#!/usr/bin/env bash
# Every GPU check of the project in one run, for a lent H100/H200 (see docs/BENCHMARKS.md).
# Expects: python3 with torch+CUDA (the device image), the repo as the working directory,
# .devcarry/official-tiny (fixtures) and .devcarry/official-maskgit (the official repo, for the
# JAX side-by-side; optional). Results land in $OUT (at most 8 files come back).
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
log="$OUT/all.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/summary.txt" 2>&1
run() {  # run NAME TIMEOUT CMD...
  local name=$1 t=$2; shift 2
  echo "=== $name ($(date -u +%H:%M:%S))" >> "$log"
  local t0=$SECONDS
  timeout "$t" "$@" >> "$log" 2>&1
  echo "$name rc=$? seconds=$((SECONDS - t0))" >> "$OUT/summary.txt"
}
run foundation 150 python3 bench/gpu/foundation_gpu.py
[ -f bench/gpu/train_mfu.py ] && run train_mfu 150 python3 bench/gpu/train_mfu.py
[ -f bench/gpu/decode_gpu.py ] && run decode 120 python3 bench/gpu/decode_gpu.py
[ -f bench/gpu/tokenize_gpu.py ] && run tokenize 120 python3 bench/gpu/tokenize_gpu.py
if [ -d .devcarry/official-maskgit ]; then
  run official_jax 150 sh -c "python3 bench/official_jax_speed.py --official-repo .devcarry/official-maskgit --precisions default,highest \
      --batches 64 --repeats 3 > $OUT/official_jax_gpu.json"
fi
cat "$OUT/summary.txt"
