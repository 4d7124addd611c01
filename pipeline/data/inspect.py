"""Look inside a token dataset: per-class counts, codebook usage, perplexity, dead codes, and a
PNG grid of samples decoded back through the tokenizer.

Usage perplexity is ``exp(H)`` of the empirical token distribution (H in nats): K for a
perfectly uniform use of K codes, 1 when one code is used everywhere (``tokenizer.train.codebook_usage``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from maskgit_core.errors import ConfigError
from pipeline.data.shards import read_manifest, read_shard
from tokenizer.train import code_histogram, codebook_usage

__all__ = ["InspectReport", "inspect_dataset", "save_grid_png"]

log = logging.getLogger(__name__)


@dataclass
class InspectReport:
    """What ``inspect`` found; ``files`` are the PNGs/JSON written."""

    samples: int
    class_counts: dict[str, int]
    usage: dict[str, Any]
    files: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        u = {k: v for k, v in self.usage.items() if k not in ("counts", "dead_code_ids")}
        u["dead_code_ids_head"] = [int(i) for i in self.usage["dead_code_ids"][:32]]
        u["counts"] = [int(c) for c in self.usage["counts"]]
        return {"samples": self.samples, "class_counts": self.class_counts, "usage": u, "files": self.files}


def save_grid_png(images: np.ndarray, path: str | os.PathLike, *, cols: int = 8) -> None:
    """(N, 3, H, W) float in [0, 1] (clipped here) -> one PNG grid."""
    from pipeline.generate.imageio import make_grid, save_png, to_uint8

    save_png(make_grid(to_uint8(images), nrow=max(1, min(cols, len(images)))), path)


def _usage_png(counts: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3))
    ax[0].bar(np.arange(len(counts)), counts, width=1.0)
    ax[0].set(title="code usage by id", xlabel="code id", ylabel="count")
    ax[1].plot(np.sort(counts)[::-1])
    ax[1].set(title="code usage, sorted", xlabel="rank", ylabel="count", yscale="symlog")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def inspect_dataset(out: str, *, report_dir: str | os.PathLike, tokenizer_dir: str | None = None,
                    num_samples: int = 16, fmt: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> InspectReport:
    """Write ``inspect.json``, ``usage.png`` and (with a tokenizer) ``samples.png`` into report_dir.
    ``progress(done, total)`` is called with shards read after each one."""
    import json

    m = read_manifest(out)
    info = m.tokenizer
    fmt = fmt or m.formats[0]
    counts = np.zeros(info.codebook_size, np.int64)
    per_class: dict[int, int] = {}
    first: list[np.ndarray] = []
    first_labels: list[int] = []
    n = 0
    shards = m.shards_of(fmt)
    for i, s in enumerate(shards):
        rows = read_shard(out, s, info)
        counts += code_histogram(rows.tokens, info.codebook_size)
        for lab, c in zip(*np.unique(rows.labels, return_counts=True)):
            per_class[int(lab)] = per_class.get(int(lab), 0) + int(c)
        take = num_samples - len(first)
        if take > 0:
            first += list(rows.tokens[:take, 0])  # the centre view
            first_labels += [int(v) for v in rows.labels[:take]]
        n += len(rows)
        if progress is not None:
            progress(i + 1, len(shards))
    usage = {**codebook_usage(counts), "counts": counts, "dead_code_ids": np.flatnonzero(counts == 0)}
    names = {c["index"]: c.get("id", str(c["index"])) for c in m.classes}
    class_counts = {names.get(k, str(k)): v for k, v in sorted(per_class.items())}
    rd = Path(report_dir)
    rd.mkdir(parents=True, exist_ok=True)
    files = {"json": str(rd / "inspect.json"), "usage_png": str(rd / "usage.png")}
    _usage_png(counts, rd / "usage.png")
    if tokenizer_dir and first:
        import torch

        import tokenizer

        model = tokenizer.load(tokenizer_dir)
        sha = getattr(model, "weights_sha256", None)
        if sha and sha != info.checkpoint_sha256:
            raise ConfigError(f"tokenizer {tokenizer_dir} (sha256 {sha[:12]}) is not the one that made {out} "
                              f"({info.checkpoint_sha256[:12]}); pass the tokenizer named in the manifest")
        with torch.inference_mode():
            imgs = model.decode_ids(torch.from_numpy(np.stack(first).astype(np.int64))).clamp(0, 1).numpy()
        save_grid_png(imgs, rd / "samples.png")
        files["samples_png"] = str(rd / "samples.png")
    rep = InspectReport(n, class_counts, usage, files)
    (rd / "inspect.json").write_text(json.dumps(rep.to_dict(), indent=1))
    return rep
