"""Loader throughput: one process (no DataLoader workers) streaming batches from token shards.

Writes a synthetic ImageNet-shaped dataset (16x16 grid, K=1024, 2 stored augmentations) through
the real shard writers, then times ``TokenStream`` over Parquet and WebDataset shards.

    .venv/bin/python bench/bench_stream.py [--samples 200000] [--batch 256]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.stream import StreamConfig, TokenStream  # noqa: E402
from pipeline.data.synthetic import write_synthetic_token_dataset  # noqa: E402


def bench(root: str, fmt: str, *, batch: int, samples: int, world_size: int = 1) -> float:
    s = TokenStream(StreamConfig(data=root, batch_size=batch, format=fmt), codebook_size=1024, latent_size=16,
                    world_size=world_size, num_batches=samples // batch // world_size)
    it = iter(s)
    next(it)  # open files
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += len(b["images"])
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--shard", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_synthetic_token_dataset(d, codebook_size=1024, latent_size=16, num_classes=1000,
                                      shard_sizes=[a.shard] * (a.samples // a.shard),
                                      formats=("parquet", "webdataset"))
        print(f"wrote {a.samples} samples in {time.perf_counter() - t0:.1f} s")
        rows = []
        for fmt in ("parquet", "webdataset"):
            rate = bench(d, fmt, batch=a.batch, samples=a.samples)
            rows.append({"format": fmt, "world_size": 1, "samples_per_s": round(rate)})
        rate = bench(d, "parquet", batch=a.batch, samples=a.samples, world_size=8)
        rows.append({"format": "parquet", "world_size": 8, "samples_per_s": round(rate)})
    print(f"{'format':<12}{'ranks':>6}{'samples/s':>12}")
    for r in rows:
        print(f"{r['format']:<12}{r['world_size']:>6}{r['samples_per_s']:>12}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
