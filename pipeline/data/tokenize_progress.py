"""Progress of a tokenize run: a ``TokenizeProgress`` per written unit, handed to the caller's
callback and written as ``_tokenize/status.json`` (atomically) so that another shell can follow
the run: ``cat OUT/_tokenize/status.json``."""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.data.storage import join, put_bytes_atomic

__all__ = ["JOB_DIR", "STATUS_FILE", "TokenizeProgress", "ProgressTracker"]

JOB_DIR = "_tokenize"
STATUS_FILE = f"{JOB_DIR}/status.json"


@dataclass(frozen=True)
class TokenizeProgress:
    """Where a tokenize run stands; given to the ``progress`` callback as each unit is written, and
    written as ``_tokenize/status.json`` so that another shell can follow the run."""

    units_done: int
    """Units with their record on disk, earlier runs' included."""
    units_total: int
    images_done: int
    """Listed images in the done units (samples plus decode errors)."""
    images_total: int
    images_per_s: float | None
    """Images of this run per second since its Ray pipeline started; None before the first unit."""
    eta_s: float | None
    """Seconds left at that rate; None while unknown, 0 when done."""
    state: str
    """``waiting`` (for the autoscaler's GPU nodes, before the pipeline starts), ``running`` or
    ``done`` (every unit written; manifest.json follows)."""

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return d


class ProgressTracker:
    """Counts written units, writes ``status.json`` and calls the callback (driver thread only)."""

    def __init__(self, fs, root: str, *, units: list[list], records: dict[int, dict],
                 callback: Callable[[TokenizeProgress], None] | None):
        self.fs, self.path, self.callback = fs, join(root, STATUS_FILE), callback
        self.units_total, self.images_total = len(units), sum(len(u) for u in units)
        self.units_done = len(records)
        self.images_done = sum(_unit_images(r) for r in records.values())
        self.run_images, self.t_start = 0, time.time()

    def start(self) -> None:
        """The Ray pipeline starts now: the rate is measured from here."""
        self.t_start = time.time()
        self.report("running")

    def unit_written(self, rec: dict) -> None:
        self.units_done += 1
        self.images_done += _unit_images(rec)
        self.run_images += _unit_images(rec)
        self.report("running")

    def report(self, state: str) -> None:
        rate = self.run_images / max(time.time() - self.t_start, 1e-9) if self.run_images else None
        left = self.images_total - self.images_done
        eta = 0.0 if state == "done" else (left / rate if rate else None)
        p = TokenizeProgress(units_done=self.units_done, units_total=self.units_total,
                             images_done=self.images_done, images_total=self.images_total,
                             images_per_s=rate, eta_s=eta, state=state)
        put_bytes_atomic(self.fs, self.path, json.dumps(p.to_dict(), indent=1).encode())
        if self.callback is not None:
            self.callback(p)


def _unit_images(rec: dict) -> int:
    return int(rec["samples"]) + len(rec["errors"])
