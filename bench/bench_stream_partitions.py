"""Decode work per rank of the training stream: partitioned reading (P parts) at W = 1, 8, 64.

Writes a synthetic ImageNet-shaped Parquet dataset (16x16 grid, K=1024, 2 stored augmentations)
through the real shard writers, then, for each world size and a couple of its ranks, iterates one
epoch's local batches of that rank in this process (no DataLoader workers) and reports the rank's
row groups and samples decoded, the decoded fraction of the data (ideal 1/W), wall time and peak
open files. ``--partitions 1`` gives the unpartitioned order for comparison (every rank decodes the
row groups of every part it takes samples from: all of them). A table goes to stderr, JSON to stdout.

    .venv/bin/python bench/bench_stream_partitions.py [--samples 200000] [--shards 100] [--row-group 4096]
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


def one_rank(root: str, *, world_size: int, rank: int, partitions: int, global_batch: int, block_size: int,
             total: int) -> dict:
    """One epoch (whole micro-steps) of one rank's local batches; its decode counters and time."""
    cfg = StreamConfig(data=root, batch_size=global_batch // world_size, block_size=block_size,
                       partitions=partitions)
    s = TokenStream(cfg, codebook_size=1024, latent_size=16, rank=rank, world_size=world_size,
                    num_batches=total // global_batch)
    t0, served = time.perf_counter(), 0
    for b in s:
        served += len(b["sample_id"])
    wall = time.perf_counter() - t0
    return {"partitions": partitions, "world_size": world_size, "rank": rank, "samples_served": served,
            "row_groups_decoded": s.units_decoded, "samples_decoded": s.samples_decoded,
            "decoded_fraction": round(s.samples_decoded / total, 4), "ideal_fraction": round(1 / world_size, 4),
            "wall_s": round(wall, 2), "peak_open_files": s.peak_open_files, "files_opened": s.files_opened}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=100)
    p.add_argument("--row-group", type=int, default=4096)
    p.add_argument("--global-batch", type=int, default=512, help="samples per micro-step over all ranks")
    p.add_argument("--partitions", default="64,1", help="comma-separated P values")
    p.add_argument("--worlds", default="1,8,64")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        write_synthetic_token_dataset(d, codebook_size=1024, latent_size=16, num_classes=1000,
                                      shard_sizes=[a.samples // a.shards] * a.shards, row_group=a.row_group)
        total = a.samples // a.shards * a.shards
        print(f"wrote {total} samples in {a.shards} shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        rows = []
        for parts in (int(x) for x in a.partitions.split(",")):
            for w in (int(x) for x in a.worlds.split(",")):
                for rank in sorted({0, w // 2}):
                    rows.append(one_rank(d, world_size=w, rank=rank, partitions=parts, global_batch=a.global_batch,
                                         block_size=a.row_group, total=total))
    keys = ["partitions", "world_size", "rank", "row_groups_decoded", "samples_decoded", "decoded_fraction",
            "ideal_fraction", "wall_s", "peak_open_files", "files_opened"]
    print(" ".join(f"{k:>18}" for k in keys), file=sys.stderr)
    for r in rows:
        print(" ".join(f"{r[k]:>18}" for k in keys), file=sys.stderr)
    print(json.dumps({"samples": total, "shards": a.shards, "row_group": a.row_group,
                      "global_batch": a.global_batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
