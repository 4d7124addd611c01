"""Checkpoint directories: ``model.safetensors`` + ``config.json`` (never pickle).

Shared by the tokenizer and the transformer. ``config.json`` holds
``{"kind": ..., "format_version": 1, "config": {...}, ...extra}``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .outputs import atomic_write

__all__ = ["save_checkpoint_dir", "read_checkpoint_dir", "file_sha256", "resolve_checkpoint_dir",
           "check_state_dict", "dataclass_from_dict", "load_model_dir", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint_dir(directory: str | os.PathLike, *, kind: str, config: dict[str, Any],
                        state_dict: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
    """Write weights then config into ``directory``, each atomically (temp file in the directory,
    fsync, rename): a failed save leaves the files that were there; return the directory."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write(d / WEIGHTS, lambda tmp: save_file(
        tensors, tmp, metadata={"kind": kind, "format_version": str(FORMAT_VERSION)}))
    meta = {"kind": kind, "format_version": FORMAT_VERSION, "config": config,
            "weights_sha256": file_sha256(d / WEIGHTS), **(extra or {})}
    atomic_write(d / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1, sort_keys=True)))
    return d


def resolve_checkpoint_dir(path: str | os.PathLike, kind: str, subdir: str) -> Path:
    """Accept the checkpoint directory itself or a parent holding ``subdir/``."""
    p = Path(path)
    for cand in (p, p / subdir):
        if (cand / CONFIG).is_file():
            try:
                meta = json.loads((cand / CONFIG).read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cand / CONFIG}: not valid JSON ({e})") from e
            if meta.get("kind") == kind:
                return cand
    raise CheckpointError(
        f"{p}: no {kind} checkpoint here (looked for {CONFIG} with kind={kind!r} in {p} and {p / subdir}); "
        "convert official weights with `maskgit-pipeline convert official` or pass the right directory"
    )


def read_checkpoint_dir(path: str | os.PathLike, *, kind: str, subdir: str
                        ) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """Return (metadata, state_dict, resolved directory), checking the weights' checksum."""
    d = resolve_checkpoint_dir(path, kind, subdir)
    meta = json.loads((d / CONFIG).read_text())
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{d}: checkpoint format_version {meta['format_version']} is newer than this "
                              f"code supports ({FORMAT_VERSION}); upgrade maskgit-pipeline")
    weights = d / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing weights file next to {CONFIG}")
    want = meta.get("weights_sha256")
    if want and file_sha256(weights) != want:
        raise CheckpointError(f"{weights}: sha256 does not match {CONFIG} (file changed or truncated); "
                              "re-export or re-convert the checkpoint")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from e
    return meta, state, d


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Raise a CheckpointError naming missing/unexpected/mis-shaped parameters."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        raise CheckpointError(f"{source}: parameters do not match the model config: "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source}: parameter {k} has shape {tuple(state[k].shape)}, "
                                  f"the config expects {tuple(v.shape)}")


def dataclass_from_dict(cls: type, d: dict[str, Any], *, source: str = "config") -> Any:
    """Build a config dataclass from a dict (config.json). Unknown keys are an error that lists the
    valid ones; missing keys take the defaults, which keep the old behaviour, and are logged."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}; valid keys are {sorted(names)}")
    missing = sorted(names - set(d))
    if missing:
        log.info("%s: keys %s missing, using defaults", source, missing)
    return cls(**d)


def load_model_dir(path: str | os.PathLike, *, kind: str, subdir: str, config_cls: type, model_cls: type,
                   map_location: str = "cpu") -> torch.nn.Module:
    """Load ``model.safetensors`` + ``config.json`` (or ``path/subdir/``) into ``model_cls(config)``,
    ready in eval mode; the model keeps ``checkpoint_dir``, ``checkpoint_meta`` and ``weights_sha256``."""
    meta, state, d = read_checkpoint_dir(path, kind=kind, subdir=subdir)
    cfg = dataclass_from_dict(config_cls, meta["config"], source=str(d / CONFIG))
    model = model_cls(cfg)
    check_state_dict(model, state, source=str(d))
    model.load_state_dict(state)
    model.checkpoint_dir = d
    model.checkpoint_meta = meta
    model.weights_sha256 = meta.get("weights_sha256")
    return model.to(map_location).eval()
