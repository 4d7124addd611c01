"""The tokenize job's output folder: what makes it the job's own (``_tokenize/job.json``), which work
units are done (``_tokenize/units/unit-XXXXX.json``, written after the unit's shards), the only
files a run ever removes (its own dead temp files), and a unit's tasks joined into its shards.
No Ray here: the driver's bookkeeping."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskgit_core.errors import ConfigError
from pipeline.data.shards import (ShardRows, TokenizerInfo, join, put_bytes_atomic, write_parquet_shard,
                                  write_webdataset_shard)
from pipeline.data.sources import Listing
from pipeline.data.tokenize_progress import JOB_DIR
from pipeline.data.tokenize_stages import split_keys

__all__ = ["listing_fingerprint", "unit_record_path", "check_job", "done_units", "UnitResult", "UnitAssembler",
           "write_unit"]

log = logging.getLogger(__name__)


def listing_fingerprint(listing: Listing) -> str:
    h = hashlib.sha256()
    for it in listing.items:
        h.update(f"{it.key}\t{it.label}\n".encode())
    for key, reason in listing.errors:
        h.update(f"E\t{key}\t{reason}\n".encode())
    return h.hexdigest()


def unit_record_path(unit: int) -> str:
    return f"{JOB_DIR}/units/unit-{unit:05d}.json"


# ------------------------------------------------------------------ the driver

def check_job(fs, root: str, spec: dict[str, Any], *, resume: bool, out: str) -> None:
    """Write ``job.json`` for a new run; for an existing one, refuse any setting that differs."""
    path = join(root, f"{JOB_DIR}/job.json")
    if fs.exists(path):
        old = json.loads(fs.cat_file(path))
        if "task_size" in spec and "unit_size" in old:
            old.setdefault("task_size", old["unit_size"])  # runs before tasks: one task per unit
        diff = []
        for k in sorted(set(spec) | set(old)):
            a, b = spec.get(k), old.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                diff += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
            elif a != b:
                diff.append(k)
        if diff:
            raise ConfigError(f"{out} holds a tokenize run with different {diff} (see {JOB_DIR}/job.json); "
                              "use a new output location, or the same settings and source to resume it")
        return
    if resume:
        raise ConfigError(f"--resume: {out} holds no tokenize run to resume ({JOB_DIR}/job.json missing); "
                          "drop --resume to start one")
    try:
        foreign = [e for e in fs.ls(root, detail=False) if e.rstrip("/").rsplit("/", 1)[-1] != JOB_DIR]
    except FileNotFoundError:
        foreign = []
    if foreign:
        raise ConfigError(f"{out} is not empty ({len(foreign)} entries, e.g. {foreign[0]}) and holds no tokenize "
                          "run; tokenize into a new or empty location (nothing there was changed)")
    put_bytes_atomic(fs, path, json.dumps(spec, indent=1).encode())


# the only files a run ever removes: its own temp files (``put_bytes_atomic``'s ``<name>.tmp-<pid>``)
_OWN_TEMP = re.compile(r"^(unit-\d{5}\.(parquet|tar\.gz|json)|manifest\.json|errors\.jsonl|job\.json|status\.json)"
                       r"\.tmp-(\d+)$")
_OWN_DIRS = ("", "parquet", "wds", JOB_DIR, f"{JOB_DIR}/units")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def done_units(fs, root: str, n_units: int) -> dict[int, dict]:
    """Unit records whose shards all exist; removes the temp files a killed run of this job left in its
    own folders (nothing else, whatever its name). A temp file whose writer process is still alive on
    this machine belongs to a concurrent run on the same output and is left alone: both runs write the
    same bytes under the same names, so neither destroys the other's work."""
    files: set[str] = set()
    for sub in _OWN_DIRS:
        d = join(root, sub) if sub else root
        fs.invalidate_cache(d)
        try:
            files.update(e.rstrip("/") for e in fs.ls(d, detail=False))
        except FileNotFoundError:
            continue
    stale = [f for f in files if (m := _OWN_TEMP.match(f.rsplit("/", 1)[-1])) and not _pid_alive(int(m.group(3)))]
    for f in stale:
        fs.rm_file(f)
    if stale:
        log.info("removed %d temp file(s) of an interrupted run", len(stale))
    done = {}
    for u in range(n_units):
        rec_path = join(root, unit_record_path(u))
        if rec_path in files:
            rec = json.loads(fs.cat_file(rec_path))
            if all(join(root, s["path"]) in files for s in rec["shards"]):
                done[u] = rec
    return done


@dataclass
class UnitResult:
    """One unit's encoded images, its tasks joined in task order: what its shards hold."""

    unit: int
    keys: list[str]
    labels: np.ndarray  # (N,) int64
    tokens: bytes  # (N, n_aug, h, w) in the tokenizer's token dtype
    errors: list  # [key, reason] of the images that could not be used, in listing order


class UnitAssembler:
    """Collects the encoded tasks of each unit (driver thread only) and hands out the unit once all
    its tasks have arrived. Holds only the *open* units' tasks (some but not all arrived): keys,
    labels, tokens and errors, a few bytes per image (no crops)."""

    def __init__(self) -> None:
        self.open: dict[int, dict[int, dict[str, Any]]] = {}

    def add(self, row: dict[str, Any]) -> UnitResult | None:
        """Take one encoded task row; the whole unit when this was its last missing task."""
        unit, task, tasks = int(row["unit"]), int(row["task"]), int(row["tasks"])
        parts = self.open.setdefault(unit, {})
        parts[task] = {k: row[k] for k in ("keys", "labels", "n", "errors", "tokens")}
        if len(parts) < tasks:
            return None
        del self.open[unit]
        done = [parts[t] for t in range(tasks)]
        keys = [k for p in done for k in split_keys(str(p["keys"]), int(p["n"]))]
        labels = np.concatenate([np.frombuffer(p["labels"], np.int64) for p in done])
        errors = [e for p in done for e in json.loads(p["errors"])]
        return UnitResult(unit, keys, labels, b"".join(p["tokens"] for p in done), errors)


def write_unit(root: str, fs, fsroot: str, res: UnitResult, info: TokenizerInfo, formats: tuple[str, ...]) -> dict:
    """The unit's shard(s), then its record (written last); returns the record."""
    n = len(res.keys)
    tokens = np.frombuffer(res.tokens, info.token_dtype).reshape(n, info.n_aug, info.latent_h, info.latent_w)
    rows = ShardRows(res.keys, res.labels, tokens)
    shards = []
    for fmt in sorted(formats):
        writer = write_parquet_shard if fmt == "parquet" else write_webdataset_shard
        shards.append(writer(root, res.unit, rows, info).to_dict())
    rec = {"unit": res.unit, "samples": n, "shards": shards, "errors": res.errors}
    put_bytes_atomic(fs, join(fsroot, unit_record_path(res.unit)), json.dumps(rec).encode())  # written last
    return rec


# ------------------------------------------------------------------ the run
