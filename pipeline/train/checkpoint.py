"""Training checkpoints: ``<out>/checkpoints/step00000042/`` tags and the ``COMPLETE`` marker.

A checkpoint counts once rank 0 wrote ``COMPLETE`` into it, after every rank saved;
``resume='auto'`` picks the newest tag holding the marker.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["COMPLETE", "tag_name", "find_resume"]

COMPLETE = "COMPLETE"


def tag_name(step: int) -> str:
    return f"step{step:08d}"


def find_resume(ckpt_root: str | os.PathLike) -> str | None:
    """The newest checkpoint tag under ``ckpt_root`` that holds the completion marker."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step") and (p / COMPLETE).is_file())
    return tags[-1] if tags else None
