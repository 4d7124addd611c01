#!/usr/bin/env bash
# The torch-only GPU benches (foundation, train_mfu, decode, tokenize_gpu, official_jax) for a lent
# H100/H200: now the bench part of bench/gpu/run_gpu.sh, which this runs (same $OUT, see its --help;
# extra arguments pass through, e.g. --budget 600). Expects .devcarry/official-tiny (fixtures) and,
# optionally, .devcarry/official-maskgit (the official repo, for the JAX side-by-side).
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/run_gpu.sh" --only foundation,train_mfu,decode,tokenize_gpu,official_jax "$@"
