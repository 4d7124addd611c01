"""A stand-in for the GPU machine's Python image on this CPU box: a fresh venv (no system site
packages) whose site-packages holds links to only the distributions the GPU image has (and what
they require), taken from the running environment. Ray, DeepSpeed, WebDataset, jsonschema,
pydantic, hjson and this project's other dependencies are absent from it, so whatever a run in it
imports beyond that must come from the carried bundle.

    python tests/gpu_image.py DIR     # makes DIR/bin/python; prints what it linked

Linking, not installing: building it takes seconds and uses the very versions the tests run with.
"""
from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the lent GPU machines' Python has (docs/BENCHMARKS.md, "Carrying Ray and DeepSpeed to the
# GPU machine"), by distribution name; their own requirements come along. Two on the GPU image are
# left out: torchvision (the CPU environment's build does not load with its CPU torch; pillow, its
# requirement, is named instead) and nvidia-ml-py (not installed here; a missing one is reported).
GPU_IMAGE = ("torch", "pillow", "pyarrow", "pandas", "numpy", "fsspec", "aiohttp", "grpcio", "protobuf",
             "msgpack", "pyyaml", "requests", "click", "filelock", "psutil", "py-cpuinfo", "einops",
             "nvidia-ml-py", "ninja", "safetensors", "pip")


def _dists() -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions():
        found.setdefault(canonicalize_name(d.metadata["Name"]), d)
    return found


def closure(names, dists: dict[str, metadata.Distribution]) -> tuple[set[str], set[str]]:
    """The distributions ``names`` need (themselves included, extras left out) that are installed,
    and the names of those that are not."""
    have, missing, todo = set(), set(), [canonicalize_name(n) for n in names]
    while todo:
        n = todo.pop()
        if n in have or n in missing:
            continue
        if n not in dists:
            missing.add(n)
            continue
        have.add(n)
        for spec in dists[n].requires or ():
            r = Requirement(spec)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(r.name))
    return have, missing


def _owners(dists: dict[str, metadata.Distribution], site: Path) -> dict[tuple[str, ...], set[str]]:
    """Every path in ``site`` that holds a file an installed distribution records (the file and
    each folder above it, as parts) -> the distributions owning files there."""
    owners: dict[tuple[str, ...], set[str]] = {}
    root = str(site) + os.sep
    for name, d in dists.items():
        for f in d.files or ():
            p = os.path.normpath(os.path.join(site, f))
            if not p.startswith(root):
                continue  # a script in bin/ or a header outside site-packages
            parts = tuple(p[len(root):].split(os.sep))
            for i in range(1, len(parts) + 1):
                owners.setdefault(parts[:i], set()).add(name)
    return owners


def _link_tree(rel: tuple[str, ...], src_site: Path, dst_site: Path, owners: dict[tuple[str, ...], set[str]],
               keep: set[str]) -> None:
    """Link ``rel`` whole when only kept distributions own files under it; otherwise make the folder
    and decide for each child (a namespace such as google/ shared with a left-out distribution)."""
    under = owners.get(rel, set())
    src, dst = src_site.joinpath(*rel), dst_site.joinpath(*rel)
    if not under & keep:
        return
    if under <= keep or src.is_file():
        dst.symlink_to(src)
        return
    dst.mkdir()
    for child in sorted(src.iterdir()):
        _link_tree((*rel, child.name), src_site, dst_site, owners, keep)


def make_image(dest: Path, names=GPU_IMAGE, python: str | None = None) -> dict:
    """Create the venv ``dest`` and link the closure of ``names`` into its site-packages.
    Returns {"python": ..., "linked": [...], "missing": [...]}."""
    dest = Path(dest)
    subprocess.run([python or sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    dists = _dists()
    keep, missing = closure(names, dists)
    src_site = Path(dists["torch"].locate_file("")).resolve()
    dst_site = Path(next(dest.glob("lib/python3*/site-packages")))
    owners = _owners(dists, src_site)
    for top in sorted(p for p in owners if len(p) == 1):
        if (src_site / top[0]).exists():
            _link_tree(top, src_site, dst_site, owners, keep)
    return {"python": str(dest / "bin" / "python"), "linked": sorted(keep), "missing": sorted(missing)}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/gpu_image.py DIR  (DIR must not exist)")
    print(make_image(Path(sys.argv[1])))
