#!/usr/bin/env bash
# The GPU run of the project, for a lent H100/H200 (docs/BENCHMARKS.md): install the carried bundle
# (bench/gpu/make_bundle.sh) and check its imports, then, each under its own timeout and all within
# --budget seconds:
#   train_ds      the real `deepspeed` launch of jobs/train_mvtm.py: bf16 ZeRO-1 (jobs/ds_config.json:
#                 torch's fused AdamW, so no DeepSpeed op is JIT-built), official256 on synthetic token
#                 shards, 30 steps
#   tokenize_ray  the Ray tokenize job (jobs/tokenize_imagenet.py) on synthetic 500x375 JPEGs, bf16 on cuda
#   foundation, train_mfu, decode, tokenize_gpu, official_jax   the torch-only bench scripts
#   then, if time is left: precision (bench/bench_precision.py: fp32/tf32/bf16 ids and PSNR),
#   eval_rate (bench/bench_eval.py: InceptionV3 feature extraction images/s for FID-50k),
#   tokenize_compiled (tokenize_ray with --compile), train_ds_compiled (train_ds with compile=true),
#   train_ds_zero3 (jobs/ds_config_zero3.json)
# --dry-run runs the same sequence on the CPU with tiny settings (debug models, jobs/ds_config_cpu.json,
# --device cpu, a few dozen JPEGs): the plumbing's test (tests/test_gpu_bundle.py).
#
# Usage: OUT=DIR bash bench/gpu/run_gpu.sh [--dry-run] [--bundle FILE|none] [--only STEP,...] [--budget S]
#   --bundle   default .devcarry/bundle/gpu-bundle-pyX.Y.tar.xz if there is one; none (the default
#              without one): use the installed packages
#   --only     a comma-separated subset of the steps above (the bundle step runs when one needs it)
#   --budget   seconds for all steps together (default 470: the run fits a 10-minute device call)
# Environment: OUT (default ./gpu-out) receives summary.txt, run.log and one JSON per step;
#   PYTHON (default python3); WORK holds the unpacked bundle and the data (default: a new folder under
#   TMPDIR, removed at the end; a given WORK is kept).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
OUT=${OUT:-./gpu-out}
DRY=0
BUNDLE=
ONLY=
BUDGET=470
ALL_STEPS="train_ds tokenize_ray foundation train_mfu decode tokenize_gpu official_jax precision eval_rate \
tokenize_compiled train_ds_compiled train_ds_zero3"
NEEDS_BUNDLE=" train_ds tokenize_ray tokenize_compiled train_ds_compiled train_ds_zero3 "

die() { echo "run_gpu.sh: $*" >&2; exit 2; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --dry-run) DRY=1; shift ;;
      --bundle) BUNDLE=${2:?--bundle needs a file or none}; shift 2 ;;
      --only) ONLY=${2:?--only needs step names}; shift 2 ;;
      --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
      -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  [[ $BUDGET =~ ^[0-9]+$ ]] || die "--budget '$BUDGET' is not a number of seconds"
  local s
  for s in ${ONLY//,/ }; do
    [[ " $ALL_STEPS " == *" $s "* ]] || die "--only: no step '$s' (steps: $ALL_STEPS)"
  done
}

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# run_step NAME SLOT CMD...: run CMD with the smaller of SLOT and the budget left; log to run.log.
run_step() {
  local name=$1 slot=$2 left t0 rc
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 15 ]; then
    note "$name skipped: ${left}s of the ${BUDGET}s budget left"
    return 0
  fi
  [ "$slot" -le "$left" ] || slot=$left
  echo "=== $name ($(date -u +%H:%M:%S), at most ${slot}s): $*" >>"$OUT/run.log"
  t0=$SECONDS
  rc=0
  timeout --kill-after=15 "$slot" "$@" >>"$OUT/run.log" 2>&1 || rc=$?
  note "$name rc=$rc seconds=$((SECONDS - t0))$([ "$rc" = 124 ] && echo " (timed out)")"
  [ "$rc" = 0 ] || FAILED=$((FAILED + 1))
  return "$rc"
}

skip() { note "$1 skipped: $2"; }

install_bundle() {  # unpack the bundle (or, without one, check the installed packages)
  local pyv
  pyv=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || die "cannot run PYTHON=$PYTHON"
  if [ -z "$BUNDLE" ]; then
    BUNDLE=$REPO/.devcarry/bundle/gpu-bundle-py$pyv.tar.xz
    [ -f "$BUNDLE" ] || { note "no bundle at .devcarry/bundle: using the installed packages"; BUNDLE=none; }
  fi
  if [ "$BUNDLE" = none ]; then
    run_step bundle 60 "$PYTHON" -c "import ray, ray.data, deepspeed, webdataset, pipeline.data.tokenize_job, \
pipeline.train.loop; print('ray', ray.__version__, 'deepspeed', deepspeed.__version__)"
  else
    run_step bundle 90 env PYTHON="$PYTHON" bash "$REPO/bench/gpu/unpack_bundle.sh" "$WORK/site" \
      --bundle "$BUNDLE" && export PYTHONPATH=$WORK/site:$PYTHONPATH
  fi
}

has_nvcc() { command -v nvcc >/dev/null || [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; }

# train_ds NAME DS_CONFIG SLOT [OVERRIDE...]: the deepspeed launcher on one device, the report into OUT/NAME.json.
train_ds() {
  local name=$1 ds_config=$2 slot=$3 run=$WORK/run_$1 rc=0 threads=4 tiny=()
  shift 3
  local args=(--config "$REPO/jobs/train_debug.json" --data "$WORK/tokens" --out "$run")
  if [ "$DRY" = 1 ]; then
    args+=(steps=2 warmup_steps=1 save_every=2 log_every=1 'model_overrides={"num_classes": 10}')
    threads=1 tiny=(--tiny)
  else
    args+=(model=official256 steps=30 warmup_steps=5 save_every=30 log_every=5)
  fi
  args+=("$@")
  [ -d "$WORK/tokens" ] || "$PYTHON" "$REPO/bench/gpu/gpu_steps.py" tokens "$WORK/tokens" "${tiny[@]}" \
    >>"$OUT/run.log" 2>&1 || { skip "$name" "no token shards (run.log)"; return 1; }
  run_step "$name" "$slot" env OMP_NUM_THREADS="$threads" \
    "$PYTHON" -m deepspeed.launcher.runner --num_gpus 1 --master_port "$((29500 + RANDOM % 1000))" \
    "$REPO/jobs/train_mvtm.py" --ds-config "$ds_config" "${args[@]}" || rc=$?
  sed -n "/=== $name /,\$p" "$OUT/run.log" >"$WORK/$name.log"
  "$PYTHON" "$REPO/bench/gpu/gpu_steps.py" train-report "$run" "$WORK/$name.log" "$OUT/$name.json" \
    >>"$OUT/summary.txt" 2>>"$OUT/run.log" || true
  return "$rc"
}

step_train_ds() {  # NAME [OVERRIDE...]
  local name=$1
  shift
  if [ "$DRY" = 1 ]; then
    train_ds "$name" "$REPO/jobs/ds_config_cpu.json" 150 "$@" || true
  else
    train_ds "$name" "$REPO/jobs/ds_config.json" 150 "$@" || true
  fi
}

step_tokenize_ray() {  # NAME [FLAG...]
  local name=$1 count=4096 size=(500 375) preset=official256
  shift
  local extra=(--device cuda --precision bf16 --shard-size 1024)
  if [ "$DRY" = 1 ]; then
    count=32 size=(48 40) preset=debug extra=(--device cpu --shard-size 16)
  fi
  if [ ! -d "$WORK/tokenizer" ]; then
    { "$PYTHON" "$REPO/bench/gpu/gpu_steps.py" jpegs "$WORK/jpegs" --count "$count" --size "${size[@]}" \
      && "$PYTHON" "$REPO/bench/gpu/gpu_steps.py" tokenizer "$WORK/tokenizer" --preset "$preset"; } \
      >>"$OUT/run.log" 2>&1 || { skip "$name" "inputs not written (run.log)"; return; }
  fi
  run_step "$name" 120 "$PYTHON" "$REPO/jobs/tokenize_imagenet.py" "$WORK/jpegs" "$WORK/${name}_out" \
    --tokenizer "$WORK/tokenizer" "${extra[@]}" "$@" || true
  sed -n "/=== $name /,\$p" "$OUT/run.log" >"$WORK/$name.log"
  "$PYTHON" "$REPO/bench/gpu/gpu_steps.py" tokenize-report "$WORK/${name}_out" "$WORK/$name.log" \
    "$OUT/$name.json" >>"$OUT/summary.txt" 2>>"$OUT/run.log" || true
}

step_precision() {  # fp32 / tf32 / bf16 token agreement and PSNR with the job's own encoder actor
  if [ ! -d "$WORK/tokenizer" ]; then skip precision "no tokenizer (tokenize_ray did not run)"; return; fi
  # real photo crops written on the CPU machine (the GPU image has no scikit-image): see bench_precision.py
  local file=$REPO/.devcarry/precision_crops256.npz
  [ "$DRY" = 0 ] || file=$WORK/precision_crops_dry.npz
  if [ "$DRY" = 1 ] && [ ! -f "$file" ]; then
    "$PYTHON" "$REPO/bench/bench_precision.py" --save-crops "$file" --image-size 32 --crops 16 >>"$OUT/run.log" 2>&1 \
      || { skip precision "crops not written (run.log)"; return; }
  fi
  if [ ! -f "$file" ]; then skip precision "no crops at .devcarry/precision_crops256.npz"; return; fi
  run_step precision 60 sh -c "\"$PYTHON\" \"$REPO/bench/bench_precision.py\" --tokenizer \"$WORK/tokenizer\" \
--crops-file \"$file\" > \"$OUT/precision.json\"" || true
}

step_benches() {  # the torch-only scripts (bench/gpu/run_all.sh's list)
  local fixtures=$REPO/.devcarry/official-tiny
  if ! selected foundation; then :
  elif [ "$DRY" = 1 ]; then skip foundation "needs CUDA (no CPU mode)"
  elif [ ! -d "$fixtures" ]; then skip foundation "no fixtures at .devcarry/official-tiny"
  else run_step foundation 90 "$PYTHON" "$REPO/bench/gpu/foundation_gpu.py" || true
  fi
  if selected train_mfu; then
    if [ "$DRY" = 1 ]; then run_step train_mfu 60 "$PYTHON" "$REPO/bench/gpu/train_mfu.py" --smoke || true
    else run_step train_mfu 100 "$PYTHON" "$REPO/bench/gpu/train_mfu.py" --batch 128 || true
    fi
  fi
  if selected decode; then
    if [ "$DRY" = 1 ]; then
      run_step decode 60 "$PYTHON" "$REPO/bench/gpu/decode_gpu.py" --device cpu --preset debug --batches 1 \
        --repeats 1 --steps 2 || true
    else run_step decode 60 "$PYTHON" "$REPO/bench/gpu/decode_gpu.py" --batches 1,32 --repeats 3 || true
    fi
  fi
  if selected tokenize_gpu; then
    run_step tokenize_gpu 60 "$PYTHON" "$REPO/bench/gpu/tokenize_gpu.py" || true
  fi
  if ! selected official_jax; then :
  elif [ "$DRY" = 1 ] || [ ! -d "$REPO/.devcarry/official-maskgit" ]; then
    skip official_jax "needs CUDA and the official repo at .devcarry/official-maskgit"
  else
    run_step official_jax 90 env XLA_PYTHON_CLIENT_PREALLOCATE=false sh -c "\"$PYTHON\" \"$REPO/bench/official_jax_speed.py\" --official-repo \
\"$REPO/.devcarry/official-maskgit\" --precisions default,highest --batches 64 --repeats 3 \
> \"$OUT/official_jax_gpu.json\"" || true
  fi
}

machine_facts() {
  {
    echo "run_gpu.sh $([ "$DRY" = 1 ] && echo "--dry-run ")$(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET}s"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
      || echo "no nvidia-smi"
    echo "nvcc: $(has_nvcc && echo yes || echo no); cpus: $(nproc)"
  } >>"$OUT/summary.txt"
}

main() {
  parse_args "$@"
  mkdir -p "$OUT"
  OUT=$(cd "$OUT" && pwd)
  if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/run_gpu.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT  # the unpacked bundle and the data: hundreds of MB
  fi
  mkdir -p "$WORK"
  export PYTHONUNBUFFERED=1 PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} OUT
  [ "$DRY" = 0 ] || export CUDA_VISIBLE_DEVICES=  # the dry run stays on the CPU on any machine
  START=$SECONDS FAILED=0
  : >"$OUT/run.log"
  machine_facts
  local need_bundle=0 s
  for s in $ALL_STEPS; do
    selected "$s" && [[ $NEEDS_BUNDLE == *" $s "* ]] && need_bundle=1
  done
  local bundle_ok=1
  if [ "$need_bundle" = 1 ]; then
    install_bundle || bundle_ok=0
  fi
  if selected train_ds; then
    if [ "$bundle_ok" = 1 ]; then step_train_ds train_ds; else skip train_ds "the bundle did not install (run.log)"; fi
  fi
  if selected tokenize_ray; then
    if [ "$bundle_ok" = 1 ]; then step_tokenize_ray tokenize_ray; else skip tokenize_ray "the bundle did not install"; fi
  fi
  step_benches
  if selected precision; then step_precision; fi
  if selected eval_rate; then
    local n=1024
    [ "$DRY" = 0 ] || n=8
    run_step eval_rate 60 sh -c "\"$PYTHON\" \"$REPO/bench/bench_eval.py\" --skip memory --rate-images $n \
--batch-size 64 > \"$OUT/eval_rate.json\"" || true
  fi
  if selected tokenize_compiled; then
    if [ "$bundle_ok" = 1 ]; then step_tokenize_ray tokenize_compiled --compile
    else skip tokenize_compiled "the bundle did not install"; fi
  fi
  if selected train_ds_compiled; then
    if [ "$bundle_ok" = 1 ]; then step_train_ds train_ds_compiled compile=true
    else skip train_ds_compiled "the bundle did not install"; fi
  fi
  if selected train_ds_zero3; then
    if [ "$DRY" = 1 ]; then skip train_ds_zero3 "GPU only (bf16)"
    elif [ "$bundle_ok" = 0 ]; then skip train_ds_zero3 "the bundle did not install"
    else train_ds train_ds_zero3 "$REPO/jobs/ds_config_zero3.json" 120 || true
    fi
  fi
  note "done in $((SECONDS - START))s, $FAILED step(s) failed"
  [ "$FAILED" = 0 ]
}

main "$@"
