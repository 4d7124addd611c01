#!/usr/bin/env bash
# The real trainer through the real `deepspeed` launcher on one GPU with the shipped GPU configs
# (bf16 + ZeRO-1, then ZeRO-3 if time is left), official256 on synthetic token shards: now the
# train_ds steps of bench/gpu/run_gpu.sh, which this runs with the carried bundle if there is one
# (else the installed DeepSpeed).
# Usage on a GPU box: OUT=/tmp/out bash bench/gpu/train_deepspeed_gpu.sh [SECONDS]
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_gpu.sh" --only train_ds,train_ds_zero3 --budget "${1:-180}"
