#!/usr/bin/env bash
# Install the bundle of bench/gpu/make_bundle.sh into TARGET (offline: tar for Ray, then
# pip install --no-index --no-deps --target for the wheels) and check that Ray, Ray Data, DeepSpeed,
# WebDataset and the project's tokenize job and training loop import with PYTHONPATH=TARGET:repo.
#
# Usage: bash bench/gpu/unpack_bundle.sh TARGET [--bundle FILE]
#   FILE defaults to .devcarry/bundle/gpu-bundle-pyX.Y.tar.xz for the Python that runs it.
#   TARGET must be absent or empty, or hold this very bundle already (then only the check runs).
# Environment: PYTHON (default python3): the interpreter the bundle is for (without pip, the wheels
#   are unzipped instead: all of them are --no-deps installs of plain files).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
TARGET=
BUNDLE=

die() { echo "unpack_bundle.sh: $*" >&2; exit 1; }

parse_args() {
  while [ $# -gt 0 ]; do
    case $1 in
      --bundle) BUNDLE=${2:?--bundle needs a file}; shift 2 ;;
      -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; exit 0 ;;
      -*) die "unknown option '$1' (see --help)" ;;
      *) [ -z "$TARGET" ] || die "one TARGET only (got '$TARGET' and '$1')"; TARGET=$1; shift ;;
    esac
  done
  [ -n "$TARGET" ] || die "no TARGET folder given (usage: unpack_bundle.sh TARGET [--bundle FILE])"
}

python_version() {
  "$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
    || die "cannot run PYTHON=$PYTHON"
}

manifest_value() {  # manifest_value FILE KEY
  sed -n "s/^$2=//p" "$1" | head -n 1
}

install_wheels() {  # install_wheels TARGET WHEEL...: pip, or (an image without pip) plain unzipping
  local target=$1
  shift
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --target "$target" "$@" \
      || die "pip could not install the bundle's wheels into $target (see above)"
    return
  fi
  echo "no pip for $PYTHON: unzipping the wheels into $target (no console scripts; use python -m)"
  "$PYTHON" - "$target" "$@" <<'PY' || die "could not unzip the bundle's wheels into $target"
import shutil
import sys
import zipfile
from pathlib import Path

target = Path(sys.argv[1])
for whl in sys.argv[2:]:
    with zipfile.ZipFile(whl) as z:
        z.extractall(target)
    for data in target.glob("*.data"):  # a wheel's purelib/platlib files belong in site-packages
        for lib in ("purelib", "platlib"):
            if (data / lib).is_dir():
                shutil.copytree(data / lib, target, dirs_exist_ok=True)
        shutil.rmtree(data)
PY
}

unpack() {  # unpack BUNDLE TARGET PYVERSION
  local bundle=$1 target=$2 pyv=$3 tmp bundle_py
  tmp=$target/.bundle-unpacking
  mkdir -p "$tmp"
  tar -xJf "$bundle" -C "$tmp" || die "cannot read $bundle (a truncated copy?); build it again"
  bundle_py=$(manifest_value "$tmp/MANIFEST.txt" python_version)
  [ "$bundle_py" = "$pyv" ] || die "$bundle is for Python $bundle_py but $PYTHON is $pyv; \
build one with bench/gpu/make_bundle.sh --python-version $pyv"
  mv "$tmp"/site/* "$target"/
  install_wheels "$target" "$tmp"/wheels/*.whl
  mv "$tmp/MANIFEST.txt" "$target/MANIFEST.txt"
  rm -rf "$tmp"
}

check_imports() {  # check_imports TARGET: import everything a GPU run needs; print versions and origins
  PYTHONPATH=$1:$REPO "$PYTHON" - "$1" <<'EOF'
import importlib
import os
import sys
from importlib.metadata import version

target = os.path.realpath(sys.argv[1])
for name in ("ray", "ray.data", "deepspeed", "webdataset", "pydantic", "jsonschema",
             "pipeline.data.tokenize_job", "pipeline.train.loop"):
    importlib.import_module(name)
import torch  # noqa: E402  (the machine's own)

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
for name in ("ray", "deepspeed", "webdataset", "pydantic", "jsonschema"):
    mod = sys.modules[name]
    origin = os.path.realpath(mod.__file__)
    where = "bundle" if origin.startswith(target + os.sep) else f"not the bundle: {origin}"
    print(f"{name} {version(name)} ({where})")
EOF
}

main() {
  parse_args "$@"
  local pyv
  pyv=$(python_version)
  BUNDLE=${BUNDLE:-$REPO/.devcarry/bundle/gpu-bundle-py$pyv.tar.xz}
  [ -f "$BUNDLE" ] || die "no bundle at $BUNDLE: build it where PyPI is reachable with \
bench/gpu/make_bundle.sh --python-version $pyv and carry .devcarry/bundle along"
  if [ -f "$TARGET/MANIFEST.txt" ] && [ "$(tar -xJOf "$BUNDLE" MANIFEST.txt)" = "$(cat "$TARGET/MANIFEST.txt")" ]; then
    echo "$TARGET already holds $BUNDLE"
  elif [ -d "$TARGET" ] && [ -n "$(ls -A "$TARGET")" ]; then
    die "$TARGET is not empty and holds no copy of this bundle: give a new folder"
  else
    mkdir -p "$TARGET"
    unpack "$BUNDLE" "$TARGET" "$pyv"
  fi
  check_imports "$TARGET" || die "the bundle in $TARGET does not import (traceback above): \
a package the machine lacks is missing from bench/gpu/make_bundle.sh's list"
  echo "ok: export PYTHONPATH=$TARGET:$REPO"
}

main "$@"
