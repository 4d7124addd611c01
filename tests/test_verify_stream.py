"""`verify_dataset` streams shard by shard: its memory does not grow with the dataset's token
bytes, and it still finds duplicate keys and formats that disagree."""
from __future__ import annotations

import tracemalloc

import numpy as np

from pipeline.data.shards import (Manifest, ShardRows, TokenizerInfo, write_manifest, write_parquet_shard,
                                  write_webdataset_shard)
from pipeline.data.verify import verify_dataset

LATENT, N_AUG, PER_SHARD, N_SHARDS = 16, 2, 256, 40
INFO = TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=1024, latent_h=LATENT, latent_w=LATENT,
                     image_size=LATENT * 8, augmentations=("center", "hflip"))


def _write(root, keys_of_unit, *, formats=("parquet",), tamper_unit=None, seed=0) -> int:
    """Shards whose keys are consecutive runs of a sorted listing (as the tokenize job writes them);
    returns the token bytes of one shard."""
    rng = np.random.default_rng(seed)
    shards, total = [], 0
    for unit, keys in enumerate(keys_of_unit):
        labels = rng.integers(0, 3, len(keys))
        tokens = rng.integers(0, 1024, (len(keys), N_AUG, LATENT, LATENT)).astype(np.uint16)  # (n, A, h, w)
        for fmt in formats:
            t = tokens.copy()
            if fmt == "webdataset" and unit == tamper_unit:
                t[0, 0, 0, 0] = (t[0, 0, 0, 0] + 1) % 1024
            write = write_parquet_shard if fmt == "parquet" else write_webdataset_shard
            shards.append(write(str(root), unit, ShardRows(list(keys), labels, t), INFO))
        total += len(keys)
    write_manifest(str(root), Manifest(
        tokenizer=INFO, shards=shards, classes=[{"index": c, "id": f"c{c}", "name": f"c{c}"} for c in range(3)],
        source={"uri": "test", "layout": "folder", "split": "train", "image_count": total},
        counts={"images": total, "samples": total, "errors": 0}))
    return PER_SHARD * N_AUG * LATENT * LATENT * 2


def _units(n_shards: int = N_SHARDS) -> list[list[str]]:
    return [[f"img_{u * PER_SHARD + i:07d}.JPEG" for i in range(PER_SHARD)] for u in range(n_shards)]


def test_verify_memory_stays_below_three_shards_of_tokens(tmp_path):
    """One shard in flight costs its file bytes plus its decoded tokens (about 2 shards); the old
    verify kept every shard's tokens (40 shards here)."""
    shard_bytes = _write(tmp_path / "big", _units())
    _write(tmp_path / "warm", _units(1))
    assert verify_dataset(str(tmp_path / "warm")).ok  # imports and caches are not the dataset's memory
    tracemalloc.start()
    try:
        rep = verify_dataset(str(tmp_path / "big"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rep.ok, rep.problems
    assert rep.samples == N_SHARDS * PER_SHARD and rep.shards == N_SHARDS
    assert peak < 3 * shard_bytes, f"peak {peak} bytes, one shard holds {shard_bytes} bytes of tokens"


def test_a_key_in_two_shards_is_found(tmp_path):
    units = _units(4)
    units[2][5] = units[0][7]  # a duplicate across shards
    units[2].sort()
    _write(tmp_path, units)
    rep = verify_dataset(str(tmp_path))
    assert any(units[0][7] in p and "twice" in p for p in rep.problems), rep.problems


def test_a_key_twice_in_one_shard_is_found(tmp_path):
    units = _units(3)
    units[1][3] = units[1][4]
    _write(tmp_path, units)
    rep = verify_dataset(str(tmp_path))
    assert any(units[1][4] in p and "twice" in p for p in rep.problems), rep.problems


def test_formats_that_disagree_in_one_unit_are_found(tmp_path):
    _write(tmp_path, _units(4), formats=("parquet", "webdataset"), tamper_unit=2)
    rep = verify_dataset(str(tmp_path))
    assert any("disagree" in p and "unit-00002" in p for p in rep.problems), rep.problems
    _write(tmp_path / "same", _units(4), formats=("parquet", "webdataset"))
    assert verify_dataset(str(tmp_path / "same")).ok
