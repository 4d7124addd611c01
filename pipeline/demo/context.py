"""The state a demo run's stages share (DemoContext), how a stage went (StageRecord), and the
helpers the stages use to read their inputs and write figures."""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.demo.settings import DemoSettings

__all__ = ["StageUnavailable", "StageSkipped", "StageRecord", "DemoContext", "save_grid", "save_upscaled",
           "plot_curves", "torch_threads", "load_models", "split_images"]

log = logging.getLogger(__name__)


class StageUnavailable(Exception):
    """The stage's module is not part of this build; the message says which."""


class StageSkipped(Exception):
    """A stage's input is missing because an earlier stage did not produce it."""


@dataclass
class StageRecord:
    """How one stage went."""

    name: str
    title: str
    status: str = "pending"
    """ok | unavailable | skipped | failed | pending"""
    seconds: float = 0.0
    message: str = ""


@dataclass
class DemoContext:
    """Shared state of a demo run; stages read and add to it."""

    out: Path
    settings: DemoSettings
    paths: dict[str, Path] = field(default_factory=dict)
    """Artifacts by name: data, tokenizer, tokens, mvtm, ar, ..."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Per-stage metrics (stage name -> dict); written to metrics.json."""
    sections: dict[str, list[str]] = field(default_factory=dict)
    """Per-stage markdown lines for report.md."""
    figures: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    """Per-stage (caption, path relative to out) figures for report.md."""
    claims: list[dict[str, str]] = field(default_factory=list)
    """The paper's claims: {"claim", "measured", "verdict"}; the evaluate stage fills them in."""
    progress: Callable[[str], None] | None = None

    def need(self, key: str, stage: str) -> Path:
        """The artifact ``key``, or StageSkipped naming the stage that should have made it."""
        if key not in self.paths:
            raise StageSkipped(f"needs {key!r}, which stage {stage!r} did not produce")
        return self.paths[key]

    def say(self, msg: str) -> None:
        log.info(msg)
        if self.progress is not None:
            self.progress(msg)

    def add_figure(self, stage: str, caption: str, path: Path) -> None:
        self.figures.setdefault(stage, []).append((caption, os.path.relpath(path, self.out)))

    def add_text(self, stage: str, *lines: str) -> None:
        self.sections.setdefault(stage, []).extend(lines)

    def num_classes(self) -> int:
        """Classes of the dataset the dataset stage wrote (else the settings')."""
        return int(self.metrics.get("dataset", {}).get("classes") or self.settings.data.num_classes)


# ----------------------------------------------------------------------------- inputs

@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def load_models(ctx: DemoContext, key: str, *, stage: str):
    """(transformer, tokenizer) from the export ``ctx.paths[key]`` (made by ``stage``) and the demo's tokenizer."""
    from pipeline.generate import load_pair

    return load_pair(ctx.need(key, stage), ctx.need("tokenizer", "train_tokenizer"))


def split_images(ctx: DemoContext, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, S, S) uint8 and labels (N,) of data/``split`` (the bad files left out), with the
    tokenize job's decoding and crop; label = position of the class folder in sorted order."""
    from tokenizer.train import read_images

    root = ctx.need("data", "dataset") / split
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for i, c in enumerate(classes):
        f = sorted(p for p in (root / c).glob("*.JPEG") if "_bad_" not in p.name)
        files += f
        labels += [i] * len(f)
    return read_images(files, ctx.settings.data.image_size, []).numpy(), np.array(labels)


# ----------------------------------------------------------------------------- figures

def save_upscaled(array: np.ndarray, path: Path, *, scale: int = 3) -> Path:
    """(H, W, 3) uint8 -> a PNG upscaled ``scale`` x (nearest) so 32 px images are visible."""
    from pipeline.generate.imageio import save_png

    return save_png(np.repeat(np.repeat(array, scale, axis=0), scale, axis=1), path)


def save_grid(images: np.ndarray, path: Path, *, nrow: int, scale: int = 3) -> Path:
    """(B, H, W, 3) uint8 -> a PNG grid (``pipeline.generate.imageio.make_grid``), upscaled ``scale`` x."""
    from pipeline.generate.imageio import make_grid

    return save_upscaled(make_grid(images, nrow=nrow), path, scale=scale)


def plot_curves(path: Path, series: dict[str, tuple[list[float], list[float]]], *, title: str,
                xlabel: str = "step", ylabel: str = "loss", logy: bool = False) -> Path:
    """Line plot of named (x, y) series to a PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for name, (x, y) in series.items():
        ax.plot(x, y, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
