#!/usr/bin/env bash
# The real trainer through the real `deepspeed` launcher on one GPU, with the shipped GPU configs
# (bf16 + ZeRO-1 default, then ZeRO-3 if time is left), official256 model, synthetic token shards.
# Usage on a GPU box (deepspeed installed): OUT=/tmp/out bash bench/gpu/train_deepspeed_gpu.sh [SECONDS]
set -u
budget=${1:-180}
start=$SECONDS
OUT=${OUT:-./gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
# DeepSpeed 0.19.7's op builder cannot parse arch suffixes such as "9.0a" in TORCH_CUDA_ARCH_LIST
# (op_builder/builder.py sorts archs with int() on "0a"); keep the plain arch for its JIT builds.
if [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  export TORCH_CUDA_ARCH_LIST=$(echo "$TORCH_CUDA_ARCH_LIST" | sed -E 's/([0-9])a\b/\1/g')
fi
python3 -c "from pipeline.data.synthetic import write_synthetic_token_dataset as w; \
w('/tmp/tok', codebook_size=1024, latent_size=16, num_classes=1000, shard_sizes=[4096] * 4)" || exit 3
for cfg in ds_config ds_config_zero3; do
  left=$((budget - (SECONDS - start)))
  [ "$left" -lt 40 ] && { echo "$cfg: skipped, $left s left" >> "$OUT/train_ds_summary.txt"; continue; }
  t0=$SECONDS
  timeout "$left" deepspeed --num_gpus 1 jobs/train_mvtm.py --ds-config jobs/$cfg.json \
      --config jobs/train_debug.json --data /tmp/tok --out /tmp/run_$cfg \
      model=official256 steps=30 warmup_steps=5 save_every=30 log_every=5 > "$OUT/train_$cfg.log" 2>&1
  echo "$cfg rc=$? seconds=$((SECONDS - t0))" >> "$OUT/train_ds_summary.txt"
  tail -n 1 "$OUT/train_$cfg.log" >> "$OUT/train_ds_summary.txt"
done
cat "$OUT/train_ds_summary.txt"
