"""Training checkpoints: atomic tags with a ``COMPLETE`` marker, safe loading, and resume checks.

Layout: ``<out>/checkpoints/step00000042/`` (DeepSpeed's files) plus ``COMPLETE`` (JSON: step and
loop state), written last. A save goes to a temporary tag ``.tmp-step00000042`` first; once every
rank saved, rank 0 fsyncs the files, renames the temporary tag to its final name (replacing an
older copy of the same tag, whose marker is removed first) and writes ``COMPLETE`` atomically. A
tag therefore either holds a whole checkpoint with its marker, or is not a checkpoint at all.

Resuming: ``auto`` picks the complete tag with the highest step; an explicit tag or path must hold
``COMPLETE``. The run settings that decide what a checkpoint means (seed, objective, data, shard
format, model config) are stored with it and compared on resume; a difference is refused by name.

Safety: DeepSpeed and its zero-to-fp32 helper unpickle ``*.pt`` files, and a pickle can run code.
Before either touches a checkpoint, ``check_loadable_safely`` loads every ``*.pt`` file of the tag
with ``torch.load(weights_only=True)``, which accepts only tensors, plain data and a short list of
DeepSpeed's own data classes; a file holding anything else is refused before it is unpickled.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

from maskgit_core.errors import CheckpointError

__all__ = ["COMPLETE", "TMP_PREFIX", "tag_name", "tag_step", "complete_tags", "find_resume", "resolve_resume",
           "temp_tag", "commit_tag", "prune", "settings_difference", "check_loadable_safely"]

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
TMP_PREFIX = ".tmp-"
_TAG = re.compile(r"^step(\d{8,})$")


def tag_name(step: int) -> str:
    return f"step{step:08d}"


def tag_step(name: str) -> int | None:
    """The step of a tag name (``step00000042`` -> 42); None for anything else."""
    m = _TAG.match(name)
    return int(m.group(1)) if m else None


def complete_tags(ckpt_root: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, tag) of every complete checkpoint under ``ckpt_root``, by step (not by name)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    out = [(tag_step(p.name), p.name) for p in root.iterdir()
           if p.is_dir() and tag_step(p.name) is not None and (p / COMPLETE).is_file()]
    return sorted(out)


def find_resume(ckpt_root: str | os.PathLike) -> str | None:
    """The complete checkpoint tag with the highest step under ``ckpt_root``."""
    tags = complete_tags(ckpt_root)
    return tags[-1][1] if tags else None


def resolve_resume(ckpt_root: str | os.PathLike, resume: str | None) -> tuple[Path, str] | None:
    """(directory holding the tag, tag) to resume from: ``auto`` = newest complete tag (None when
    there is none), or an explicit tag name / path, which must be complete."""
    if not resume:
        return None
    if resume == "auto":
        tag = find_resume(ckpt_root)
        return (Path(ckpt_root), tag) if tag else None
    p = Path(resume)
    where = p if p.is_absolute() or p.parent != Path(".") else Path(ckpt_root) / resume
    if not (where / COMPLETE).is_file():
        have = ", ".join(t for _, t in complete_tags(where.parent)[-3:]) or "none"
        raise CheckpointError(f"--resume {resume}: {where} is not a complete checkpoint (no {COMPLETE} marker: "
                              f"missing, or its save was interrupted); complete ones there: {have}; pass one of "
                              "them or --resume auto")
    return where.parent, where.name


def temp_tag(step: int) -> str:
    """The tag a save of ``step`` is written under before it is committed."""
    return TMP_PREFIX + tag_name(step)


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_tag(ckpt_root: str | os.PathLike, step: int, marker: dict[str, Any]) -> Path:
    """Rank 0, after every rank saved under ``temp_tag(step)``: make it the checkpoint ``tag_name(step)``."""
    root = Path(ckpt_root)
    tmp, final = root / temp_tag(step), root / tag_name(step)
    _fsync_tree(tmp)
    if final.exists():  # a re-save of the same step: the old copy stops counting before it is replaced
        (final / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    part = final / f"{COMPLETE}{TMP_PREFIX}"
    part.write_text(json.dumps(marker))
    with open(part, "rb") as f:
        os.fsync(f.fileno())
    os.replace(part, final / COMPLETE)
    _fsync_dir(final)
    return final


def prune(ckpt_root: str | os.PathLike, *, current_step: int, keep_last: int) -> list[str]:
    """Delete complete checkpoints older than ``current_step`` beyond the newest ``keep_last`` (the
    current one included). Tags of a higher step (left by another run in this directory) and the
    current one are never deleted. Returns the deleted tags."""
    older = [t for s, t in complete_tags(ckpt_root) if s < current_step]
    doomed = older[:max(0, len(older) - (keep_last - 1))]
    for tag in doomed:
        d = Path(ckpt_root) / tag
        (d / COMPLETE).unlink()
        shutil.rmtree(d, ignore_errors=True)
    return doomed


def settings_difference(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between the run settings stored in a checkpoint and this run's."""
    diff = []
    for key in sorted(current):
        if key not in saved:
            continue  # a checkpoint of an older version that did not record it
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            diff += [f"{key}.{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}"
                     for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diff.append(f"{key}: checkpoint {a!r}, now {b!r}")
    return diff


def _deepspeed_safe_globals() -> list:
    """DeepSpeed's plain data classes that its checkpoints hold besides tensors (no code runs on load)."""
    out = []
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
        out.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address
        out.append(fragment_address)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        out += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    return out


def check_loadable_safely(tag_dir: str | os.PathLike) -> None:
    """Refuse a checkpoint whose ``*.pt`` files hold anything a weights-only load rejects (see the
    module docstring): such a file could run code when DeepSpeed unpickles it."""
    import torch

    tag_dir = Path(tag_dir)
    files = sorted(tag_dir.rglob("*.pt"))  # universal checkpoints keep per-parameter files in zero/
    if not files:
        raise CheckpointError(f"{tag_dir}: no *.pt files; not a DeepSpeed checkpoint of this trainer")
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        for f in files:
            try:
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError as e:
                found = re.search(r"(?:unsupported|Unsupported) (?:global|GLOBAL|operand)[^\n]*", str(e))
                what = found.group(0)[:300] if found else type(e).__name__
                raise CheckpointError(
                    f"{f}: refusing to load this checkpoint file: it holds Python objects other than tensors and "
                    f"plain data ({what}), and unpickling it could run code. Resume or export only run "
                    "directories made by this trainer; if you made it, report the object named above") from None
            except (RuntimeError, OSError, EOFError) as e:
                raise CheckpointError(f"{f}: cannot read checkpoint file ({type(e).__name__}: {e}); the save was "
                                      "interrupted or the file is damaged: resume from an older tag") from None
