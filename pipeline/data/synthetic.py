"""A learnable synthetic token dataset written through the real shard writers.

For tests, benchmarks and the CPU training recipe when no tokenized corpus is at hand: each
class has a prototype token grid; a sample is its class prototype with a fraction of tokens
replaced by random codes. Augmentation 1 is the horizontal flip of augmentation 0 (as an
``hflip`` view would be). The files are ordinary Parquet / WebDataset shards plus
``manifest.json`` (written last), exactly what the tokenize job writes.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.shards import (Manifest, ShardRows, TokenizerInfo, write_manifest, write_parquet_shard,
                     write_webdataset_shard)

__all__ = ["write_synthetic_token_dataset"]


def write_synthetic_token_dataset(root: str, *, codebook_size: int, latent_size: int, num_classes: int,
                                  shard_sizes: list[int], n_aug: int = 2, noise: float = 0.2,
                                  formats: tuple[str, ...] = ("parquet",), row_group: int = 4096, seed: int = 0,
                                  **storage_options: Any) -> Manifest:
    """Write shards of ``shard_sizes[i]`` samples each in every format, then the manifest."""
    rng = np.random.default_rng(seed)
    augs = ("center", "hflip", "crop1", "crop2", "crop3", "crop4", "crop5", "crop6")[:n_aug]
    info = TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=codebook_size, latent_h=latent_size,
                         latent_w=latent_size, image_size=latent_size * 8, augmentations=augs)
    protos = rng.integers(0, codebook_size, (num_classes, latent_size, latent_size))  # (C, h, w)
    shards = []
    for unit, n in enumerate(shard_sizes):
        labels = rng.integers(0, num_classes, n)
        base = protos[labels]  # (n, h, w)
        noisy = np.where(rng.random(base.shape) < noise, rng.integers(0, codebook_size, base.shape), base)
        views = [noisy, noisy[:, :, ::-1]] + [np.roll(noisy, a, axis=2) for a in range(1, n_aug - 1)]
        tokens = np.stack(views[:n_aug], axis=1)  # (n, n_aug, h, w)
        rows = ShardRows([f"c{int(c):03d}/img_{unit:05d}_{i:06d}.JPEG" for i, c in enumerate(labels)], labels, tokens)
        for fmt in formats:
            if fmt == "parquet":
                shards.append(write_parquet_shard(root, unit, rows, info, row_group=row_group, **storage_options))
            else:
                shards.append(write_webdataset_shard(root, unit, rows, info, **storage_options))
    total = int(sum(shard_sizes))
    manifest = Manifest(tokenizer=info, shards=shards,
                        classes=[{"index": c, "id": f"c{c:03d}", "name": f"class {c}"} for c in range(num_classes)],
                        source={"uri": "synthetic", "layout": "synthetic", "split": "train", "image_count": total},
                        counts={"images": total, "samples": total, "errors": 0})
    write_manifest(root, manifest, **storage_options)
    return manifest
