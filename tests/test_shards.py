"""The token-shard contract: writers, readers, manifest, compatibility checks."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.data import shards as sh


def _info(k: int = 1024, n_aug: int = 2) -> sh.TokenizerInfo:
    augs = ("center", "hflip")[:n_aug]
    return sh.TokenizerInfo(checkpoint_sha256="ab" * 32, codebook_size=k, latent_h=4, latent_w=4, image_size=64,
                            augmentations=augs)


def _rows(n: int, info: sh.TokenizerInfo, seed: int = 0) -> sh.ShardRows:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, info.codebook_size, size=(n, info.n_aug, info.latent_h, info.latent_w))
    return sh.ShardRows([f"n0{i % 3}/img_{i}.JPEG" for i in range(n)], rng.integers(0, 10, n), tokens)


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_write_read_round_trip(tmp_path, fmt):
    info = _info()
    rows = _rows(37, info)
    write = sh.write_parquet_shard if fmt == "parquet" else sh.write_webdataset_shard
    s = write(str(tmp_path), 3, rows, info)
    assert s.path == sh.shard_relpath(fmt, 3) and s.samples == 37 and (tmp_path / s.path).stat().st_size == s.bytes
    back = sh.read_shard(str(tmp_path), s, info)
    assert back.keys == rows.keys
    np.testing.assert_array_equal(back.labels, rows.labels)
    np.testing.assert_array_equal(back.tokens, rows.tokens)
    assert back.tokens.dtype == np.uint16
    # deterministic bytes: a rewrite of the same unit is identical (exactly-once reruns rely on it)
    assert write(str(tmp_path), 3, rows, info).sha256 == s.sha256


def test_uint32_for_large_codebooks(tmp_path):
    info = _info(k=70000, n_aug=1)
    rows = _rows(5, info)
    rows.tokens[0, 0, 0, 0] = 69999
    s = sh.write_parquet_shard(str(tmp_path), 0, rows, info)
    back = sh.read_shard(str(tmp_path), s, info)
    assert back.tokens.dtype == np.uint32 and back.tokens[0, 0, 0, 0] == 69999


def test_webdataset_library_reads_our_shards(tmp_path):
    import webdataset as wds

    info = _info()
    rows = _rows(10, info)
    s = sh.write_webdataset_shard(str(tmp_path), 0, rows, info)
    samples = list(wds.WebDataset(str(tmp_path / s.path), shardshuffle=False).decode())
    assert len(samples) == 10
    np.testing.assert_array_equal(samples[4]["tokens.npy"], rows.tokens[4])
    assert int(samples[4]["cls"]) == rows.labels[4] and samples[4]["json"]["key"] == rows.keys[4]


def test_parquet_seek_reads_from_row(tmp_path):
    info = _info(n_aug=1)
    rows = _rows(100, info)
    s = sh.write_parquet_shard(str(tmp_path), 0, rows, info, row_group=16)
    got = list(sh.iter_parquet_batches(str(tmp_path), s, info, start_row=37, batch_rows=10))
    keys = [k for b in got for k in b.keys]
    assert keys == rows.keys[37:]
    np.testing.assert_array_equal(np.concatenate([b.tokens for b in got]), rows.tokens[37:])


def test_manifest_round_trip_and_checks(tmp_path):
    info = _info()
    s = sh.write_parquet_shard(str(tmp_path), 0, _rows(8, info), info)
    m = sh.Manifest(tokenizer=info, shards=[s], classes=[{"index": 0, "id": "n0", "name": "zero"}],
                    counts={"images": 9, "samples": 8, "errors": 1}, error_report="errors.jsonl")
    sh.write_manifest(str(tmp_path), m)
    back = sh.read_manifest(str(tmp_path))
    assert back.tokenizer == info and back.shards[0] == s and back.num_samples("parquet") == 8
    with pytest.raises(sh.ShardError, match=r"no webdataset shards"):
        back.shards_of("webdataset")
    with pytest.raises(sh.ShardError, match=r"codebook_size in shards \(1024\) does not match the model \(512\)"):
        sh.check_compatible(back, codebook_size=512, latent_size=4)
    with pytest.raises(sh.ShardError, match=r"latent grid in shards \(4x4\) does not match the model \(16x16\)"):
        sh.check_compatible(back, codebook_size=1024, latent_size=16)
    sh.check_compatible(back, codebook_size=1024, latent_size=4)
    d = json.loads((tmp_path / "manifest.json").read_text())
    d["format_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(sh.ShardError, match="format_version 99"):
        sh.read_manifest(str(tmp_path))


def test_missing_and_corrupt_shards_are_named(tmp_path):
    info = _info()
    s = sh.write_parquet_shard(str(tmp_path), 0, _rows(8, info), info)
    p = tmp_path / s.path
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(sh.ShardError, match=r"unit-00000.parquet: shard is corrupt"):
        sh.read_shard(str(tmp_path), s, info)
    p.unlink()
    with pytest.raises(sh.ShardError, match=r"unit-00000.parquet: shard listed in the manifest is missing"):
        sh.read_shard(str(tmp_path), s, info)
    with pytest.raises(sh.ShardError, match="no manifest.json"):
        sh.read_manifest(str(tmp_path))


def test_bytes_per_sample_targets(tmp_path):
    """Parquet within 1.1x of 10 bits/token (K=1024), WebDataset within 2x of Parquet."""
    info = sh.TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=1024, latent_h=16, latent_w=16,
                            image_size=256)
    rng = np.random.default_rng(0)
    n = 4000
    rows = sh.ShardRows([f"n01440764/n01440764_{i:05d}.JPEG" for i in range(n)], rng.integers(0, 1000, n),
                        rng.integers(0, 1024, size=(n, 1, 16, 16)))
    pq_bytes = sh.write_parquet_shard(str(tmp_path), 0, rows, info).bytes / n
    wds_bytes = sh.write_webdataset_shard(str(tmp_path), 0, rows, info).bytes / n
    ideal = 256 * 10 / 8  # 320 B
    assert pq_bytes <= 1.1 * ideal, pq_bytes
    assert wds_bytes <= 2.0 * pq_bytes, (wds_bytes, pq_bytes)


def _imagenet_rows(n: int, grid: int, k: int, seed: int = 0) -> sh.ShardRows:
    """A unit of ``n`` sorted ImageNet-like keys (1,300 per class) with uniform random token ids."""
    rng = np.random.default_rng(seed)
    keys = sorted(f"n{1440764 + i // 1300:08d}/n{1440764 + i // 1300:08d}_{10000 + 7 * (i % 1300)}.JPEG"
                  for i in range(n))
    return sh.ShardRows(keys, np.asarray([i // 1300 for i in range(n)]), rng.integers(0, k, (n, 1, grid, grid)))


@pytest.mark.parametrize("grid", [4, 16])
def test_parquet_bytes_per_image_within_1_1x_of_the_uint16_payload(tmp_path, grid):
    """A default-size unit (12,288 images): Parquet bytes per image <= 1.1 x the token payload
    (grid^2 x 2 bytes of uint16), keys included; the key column is delta-encoded (< 1 B/image)."""
    import pyarrow.parquet as pq

    info = sh.TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=1024, latent_h=grid, latent_w=grid,
                            image_size=16 * grid)
    n = 3 * sh.ROW_GROUP
    s = sh.write_parquet_shard(str(tmp_path), 0, _imagenet_rows(n, grid, 1024), info)
    assert s.bytes / n <= 1.1 * grid * grid * 2, s.bytes / n
    md = pq.ParquetFile(tmp_path / s.path).metadata
    assert md.num_row_groups == 3 and "DELTA_BYTE_ARRAY" in md.row_group(0).column(0).encodings
    key_bytes = sum(md.row_group(g).column(0).total_compressed_size for g in range(md.num_row_groups))
    assert key_bytes / n < 1.0, key_bytes / n


def test_parquet_shards_of_the_earlier_writer_still_read(tmp_path):
    """Files written before the key column was delta-encoded (dictionary keys) read the same."""
    import pyarrow.parquet as pq

    info = _info(n_aug=1)
    rows = _rows(50, info)
    new = sh.write_parquet_shard(str(tmp_path / "new"), 0, rows, info, row_group=16)
    table = pq.read_table(tmp_path / "new" / new.path)
    old_dir = tmp_path / "old" / "parquet"
    old_dir.mkdir(parents=True)
    pq.write_table(table, old_dir / "unit-00000.parquet", compression="zstd", row_group_size=16,
                   write_statistics=False)  # the earlier writer's settings
    data = (old_dir / "unit-00000.parquet").read_bytes()
    assert pq.ParquetFile(old_dir / "unit-00000.parquet").metadata.row_group(0).column(0).encodings != \
        pq.ParquetFile(tmp_path / "new" / new.path).metadata.row_group(0).column(0).encodings
    old = sh.ShardInfo(path=new.path, format="parquet", unit=0, samples=50, bytes=len(data),
                       sha256=hashlib.sha256(data).hexdigest())
    back = sh.read_shard(str(tmp_path / "old"), old, info)
    assert back.keys == rows.keys and np.array_equal(back.tokens, rows.tokens)
    got = list(sh.iter_parquet_batches(str(tmp_path / "old"), old, info, start_row=20))
    assert [k for b in got for k in b.keys] == rows.keys[20:]
