"""WebDataset member parsing: the hand-written ustar walk (``iter_ustar``) against ``tarfile``.

Writes real shards with ``write_webdataset_shard`` (4,096 samples; 16x16 and 32x32 token grids,
K=1024, one view), decompresses each once, then times listing every member with its payload
(name, bytes) both ways, best of ``--repeats``; prints samples/s and the ratio, the ratio once
gunzip (which both pay) is added, and the whole ``decode_webdataset`` (gunzip + walk + token
slicing) that ``read_shard`` and the training stream run.

    .venv/bin/python bench/bench_ustar.py [--samples 4096] [--repeats 5]
"""
from __future__ import annotations

import argparse
import gzip
import io
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data import shards as sh  # noqa: E402


def ustar_members(raw: bytes) -> list[tuple[str, bytes]]:
    return list(sh.iter_ustar(raw))


def tarfile_members(raw: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def best(fn, arg, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    print("| grid | members | iter_ustar samples/s | tarfile samples/s | speed-up | speed-up with gunzip "
          "| decode_webdataset samples/s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for side in (16, 32):
            info = sh.TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=1024, latent_h=side, latent_w=side,
                                    image_size=side * 16)
            rows = sh.ShardRows([f"train/c{i % 1000:04d}/img_{i:07d}.JPEG" for i in range(a.samples)],
                                rng.integers(0, 1000, a.samples),
                                rng.integers(0, 1024, (a.samples, 1, side, side), dtype=np.uint16))
            s = sh.write_webdataset_shard(f"{d}/g{side}", 0, rows, info)
            data = Path(d, f"g{side}", s.path).read_bytes()
            raw = gzip.decompress(data)
            assert ustar_members(raw) == tarfile_members(raw)  # same members, same bytes
            t_ustar = best(ustar_members, raw, a.repeats)
            t_tar = best(tarfile_members, raw, a.repeats)
            t_gz = best(gzip.decompress, data, a.repeats)
            t_full = best(lambda b: sh.decode_webdataset(b, info), data, a.repeats)
            n = a.samples
            print(f"| {side}x{side} | {3 * n} | {n / t_ustar:,.0f} | {n / t_tar:,.0f} | {t_tar / t_ustar:.1f}x "
                  f"| {(t_gz + t_tar) / (t_gz + t_ustar):.1f}x | {n / t_full:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
