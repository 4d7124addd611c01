"""The training token stream: order, exactly-once, seek/resume, augmentations, errors, s3."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data import shards as sh
from pipeline.data.stream import (StreamConfig, StreamPlan, TokenStream, aug_index, epoch_blocks, stream_positions)
from pipeline.data.synthetic import write_synthetic_token_dataset
from pipeline.train.launcher import free_port

SIZES = [100, 37, 250, 5, 64]
TOTAL = sum(SIZES)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    write_synthetic_token_dataset(str(root), codebook_size=64, latent_size=4, num_classes=10, shard_sizes=SIZES,
                                  formats=("parquet", "webdataset"), row_group=16, n_aug=3)
    return root


def _stream(root, **kw) -> TokenStream:
    opts = {k: kw.pop(k) for k in ("rank", "world_size", "start", "num_batches", "storage_options") if k in kw}
    cfg = StreamConfig(data=str(root), **{"batch_size": 7, "block_size": 16, "shuffle_buffer": 50, **kw})
    return TokenStream(cfg, codebook_size=64, latent_size=4, num_classes=10, **opts)


def test_epoch_blocks_cover_every_row_once_and_depend_on_seed_and_epoch():
    b = epoch_blocks(SIZES, 16, seed=3, epoch=0)
    rows = {(s, r) for s, a, e in b for r in range(a, e)}
    assert len(rows) == TOTAL == int((b[:, 2] - b[:, 1]).sum())
    assert np.array_equal(b, epoch_blocks(SIZES, 16, seed=3, epoch=0))  # pure
    assert not np.array_equal(b, epoch_blocks(SIZES, 16, seed=3, epoch=1))
    assert not np.array_equal(b, epoch_blocks(SIZES, 16, seed=4, epoch=0))
    shard_runs = [s for i, s in enumerate(b[:, 0]) if i == 0 or b[i - 1, 0] != s]
    assert len(shard_runs) == len(SIZES)  # a shard's blocks are read together (shards permuted, then blocks)


@pytest.mark.parametrize("partitions", [1, 4, 64])
def test_order_is_a_permutation_with_a_bounded_shuffle_window(partitions):
    plan = StreamPlan(SIZES, block_size=16, shuffle_buffer=50, seed=0, partitions=partitions)
    assert plan.window == -(-50 // partitions)  # the windows of all parts together hold ~shuffle_buffer
    g = np.arange(2 * TOTAL)
    epoch, shard, row = plan.locate(g)
    ids = plan.first_id[shard] + row
    for e in (0, 1):
        assert sorted(ids[epoch == e]) == list(range(TOTAL))  # every sample exactly once per epoch
    assert not np.array_equal(ids[:TOTAL], ids[TOTAL:])  # epochs are reshuffled
    # position p is index i of part k; the shuffle only permutes inside the part's windows, so its
    # block-sequence position stays in that window of that part, counted from the part's end for odd
    # parts (read back to front); P=1: windows of 50 over the sequence
    b = epoch_blocks(SIZES, 16, seed=0, epoch=0)
    seq = [plan.first_id[s] + r for s, a, e_ in b for r in range(a, e_)]
    where = np.array([{sid: q for q, sid in enumerate(seq)}[i] for i in ids[:TOTAL]])
    part, idx = plan.part_of(np.arange(TOTAL))
    first, size = plan.part_bounds(part)
    inside = np.where(part % 2 == 1, first + size - 1 - where, where - first)
    assert ((inside >= 0) & (inside < size)).all()
    assert np.array_equal(inside // plan.window, idx // plan.window)
    e2, s2, r2 = stream_positions(SIZES, g[::-1], block_size=16, shuffle_buffer=50, seed=0,
                                  partitions=partitions)  # pure, any order
    assert np.array_equal(s2[::-1], shard) and np.array_equal(r2[::-1], row)


@pytest.mark.parametrize("total,partitions", [(TOTAL, 64), (TOTAL, 8), (640, 64), (5, 64), (1, 1)])
def test_parts_tile_the_block_sequence_and_interleave_sample_by_sample(total, partitions):
    plan = StreamPlan([total], block_size=16, shuffle_buffer=50, seed=0, partitions=partitions)
    first, size = plan.part_bounds(np.arange(partitions))
    m, rem = divmod(total, partitions)
    assert list(size) == [m + 1] * rem + [m] * (partitions - rem)  # near-equal, N < P leaves parts empty
    assert first[0] == 0 and np.array_equal(first[1:], np.cumsum(size)[:-1])  # contiguous, in order
    part, idx = plan.part_of(np.arange(total))
    assert sorted(zip(part.tolist(), idx.tolist())) == [(p, i) for p in range(partitions) for i in range(size[p])]
    body = partitions * m
    assert np.array_equal(part[:body], np.arange(body) % partitions)  # sample by sample, part 0, 1, ...


@pytest.mark.parametrize("world_size,workers", [(1, 0), (3, 2), (8, 2)])
def test_ranks_and_workers_see_every_sample_once_per_epoch(data, world_size, workers):
    batches_needed = -(-TOTAL // (7 * world_size))
    seen = []
    for rank in range(world_size):
        s = _stream(data, rank=rank, world_size=world_size, num_batches=batches_needed)
        loader = torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers)
        for b in loader:
            seen.append(np.stack([b["index"].numpy(), b["sample_id"].numpy()], 1))
    seen = np.concatenate(seen)
    first_epoch = seen[seen[:, 0] < TOTAL]
    assert len(first_epoch) == TOTAL and sorted(first_epoch[:, 1]) == list(range(TOTAL))


def test_worker_count_does_not_change_the_batch_sequence(data):
    def run(workers):
        s = _stream(data, rank=1, world_size=2, num_batches=9)
        return [b["sample_id"] for b in torch.utils.data.DataLoader(s, batch_size=None, num_workers=workers)]
    a, b = run(0), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b) == 9


def test_resume_seeks_without_reading_earlier_data(data, monkeypatch):
    full = [b for b in _stream(data, rank=0, world_size=2, num_batches=40)]
    start = 2 * 7 * 25  # after 25 local batches of 2 ranks
    loaded = []
    orig = TokenStream._load_unit
    monkeypatch.setattr(TokenStream, "_load_unit", lambda self, key: (loaded.append(key), orig(self, key))[1])
    resumed = _stream(data, rank=0, world_size=2, start=start, num_batches=1)
    first = next(iter(resumed))
    assert torch.equal(first["sample_id"], full[25]["sample_id"]) and torch.equal(first["images"], full[25]["images"])
    # only the row groups that hold this batch's samples were read
    need = {(int(resumed.plan.locate(np.array([p]))[1][0]), int(resumed.plan.locate(np.array([p]))[2][0]) // 16)
            for p in first["index"].numpy()}
    assert set(loaded) == need


def test_resume_on_another_world_size_continues_at_the_same_global_sample(data):
    start = 2 * 7 * 5  # 5 steps of 2 ranks x 7
    one = next(iter(_stream(data, rank=0, world_size=1, batch_size=14, start=start, num_batches=1)))
    two = [next(iter(_stream(data, rank=r, world_size=2, start=start, num_batches=1))) for r in (0, 1)]
    # the step's positions are the same set; rank r of W takes every W-th of them from offset r
    assert torch.equal(one["index"], torch.arange(start, start + 14))
    assert [t["index"].tolist() for t in two] == [list(range(start + r, start + 14, 2)) for r in (0, 1)]
    both = {k: torch.cat([t[k] for t in two]) for k in ("index", "images")}
    order = torch.argsort(both["index"])
    assert torch.equal(one["index"], both["index"][order]) and torch.equal(one["images"], both["images"][order])


def _steps(root, *, world_size: int, batch_size: int, start: int, steps: int) -> list[set[tuple[int, int, int]]]:
    """The (index, sample id, aug) of each micro-step of a job of ``world_size`` ranks, all ranks together."""
    out: list[set] = [set() for _ in range(steps)]
    for rank in range(world_size):
        s = _stream(root, rank=rank, world_size=world_size, batch_size=batch_size, start=start, num_batches=steps)
        for k, b in enumerate(s):
            out[k] |= set(zip(b["index"].tolist(), b["sample_id"].tolist(), b["aug"].tolist()))
    return out


@pytest.mark.parametrize("before,after", [((8, 3), (3, 8)), ((2, 7), (1, 14))])
def test_resume_mid_epoch_on_another_world_size_continues_the_same_steps(data, before, after):
    """(world size, batch) -> (world size, batch) with the same global batch: from the resume point
    every step consumes the same samples as the uninterrupted run, and the epoch each sample once."""
    (w0, b0), (w1, b1) = before, after
    steps = -(-TOTAL // (w0 * b0))
    full = _steps(data, world_size=w0, batch_size=b0, start=0, steps=steps)
    k = steps // 3
    resumed = full[:k] + _steps(data, world_size=w1, batch_size=b1, start=k * w0 * b0, steps=steps - k)
    assert resumed == full
    epoch0 = [sid for step in resumed for i, sid, _ in step if i < TOTAL]
    assert sorted(epoch0) == list(range(TOTAL))


def test_the_batches_are_a_pure_function_of_seed_and_epoch(data):
    a = [b for b in _stream(data, rank=3, world_size=8, batch_size=3, num_batches=25)]
    b = [b for b in _stream(data, rank=3, world_size=8, batch_size=3, num_batches=25)]
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b) == 25
    c = [b for b in _stream(data, rank=3, world_size=8, batch_size=3, num_batches=25, seed=1)]
    assert not all(torch.equal(x["sample_id"], y["sample_id"]) for x, y in zip(a, c))
    late = _stream(data, rank=3, world_size=8, batch_size=3, start=10 * 8 * 3, num_batches=15)  # seek
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a[10:], late) for k in x)


RG, STEP = 16, 256  # row group of the many-shard dataset; samples per micro-step at every world size


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> tuple[Path, int, int]:
    """64 Parquet shards of uneven sizes (parts and shards do not line up), row groups of 16; an epoch
    of a whole number of steps. Returns (root, samples, row groups)."""
    sizes = [100 + (i * 37) % 61 for i in range(64)]
    sizes[-1] += -sum(sizes) % STEP
    root = tmp_path_factory.mktemp("many")
    write_synthetic_token_dataset(str(root), codebook_size=16, latent_size=2, num_classes=3, shard_sizes=sizes,
                                  row_group=RG, n_aug=1)
    return root, sum(sizes), sum(-(-n // RG) for n in sizes)


@pytest.mark.parametrize("world_size,ranks", [(1, [0]), (8, [0, 5]), (64, [0, 33, 63])])
def test_a_rank_decodes_about_one_world_size_th_of_the_data(many, monkeypatch, world_size, ranks):
    """With P=64, W in {1, 8, 64}: over one epoch a rank decodes its parts' row groups, each once, plus
    at most the two row groups at each part's ends (shared with the neighbouring parts' ranks)."""
    root, total, groups = many
    loaded: list[tuple[int, int]] = []
    orig = TokenStream._load_unit
    monkeypatch.setattr(TokenStream, "_load_unit", lambda self, key: (loaded.append(key), orig(self, key))[1])
    for rank in ranks:
        loaded.clear()
        cfg = StreamConfig(data=str(root), batch_size=STEP // world_size, block_size=32, shuffle_buffer=256,
                           partitions=64)
        s = TokenStream(cfg, codebook_size=16, latent_size=2, rank=rank, world_size=world_size,
                        num_batches=total // STEP)
        served = sum(len(b["sample_id"]) for b in s)
        assert served == total // world_size and s.parts_per_rank == 64 // world_size
        assert len(loaded) == len(set(loaded)) == s.units_decoded  # no row group decoded twice
        if world_size == 1:
            assert s.units_decoded == groups and s.samples_decoded == total
        else:
            bound = total / world_size + 2 * s.parts_per_rank * RG
            assert s.samples_decoded <= bound < 2 * total / world_size, (s.samples_decoded, bound)
        assert s.peak_open_files <= cfg.max_open_files


def test_augmentation_is_per_sample_per_epoch_and_reads_the_stored_view(data):
    m = sh.read_manifest(str(data))
    stored = {}
    for s in m.shards_of("parquet"):
        rows = sh.read_shard(str(data), s, m.tokenizer)
        base = sum(x.samples for x in m.shards_of("parquet") if x.unit < s.unit)
        for i in range(len(rows)):
            stored[base + i] = (rows.tokens[i], rows.labels[i])
    st = _stream(data)
    b = st.batch_at(np.arange(2 * TOTAL))
    for img, lab, sid, aug in zip(b["images"], b["labels"], b["sample_id"], b["aug"]):
        tok, label = stored[int(sid)]
        assert np.array_equal(img.numpy(), tok[int(aug)].reshape(-1)) and int(lab) == label
    a0, a1 = b["aug"][:TOTAL].numpy(), b["aug"][TOTAL:].numpy()
    assert set(a0) == {0, 1, 2} and (a0 != a1[np.argsort(b["sample_id"][TOTAL:].numpy())][
        np.argsort(np.argsort(b["sample_id"][:TOTAL].numpy()))]).any()
    counts = np.bincount(aug_index(0, np.zeros(30000, np.int64), np.arange(30000), 3), minlength=3)
    assert (np.abs(counts / 30000 - 1 / 3) < 0.02).all()
    assert (_stream(data, augment=False).batch_at(np.arange(50))["aug"] == 0).all()


def test_parquet_and_webdataset_give_identical_batches(data):
    p = _stream(data, format="parquet").batch_at(np.arange(0, 2 * TOTAL, 3))
    w = _stream(data, format="webdataset").batch_at(np.arange(0, 2 * TOTAL, 3))
    assert all(torch.equal(p[k], w[k]) for k in p)


def _copy(data: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(data, out)
    return out


def test_refuses_incompatible_shards_naming_both_values(data, tmp_path):
    cfg = StreamConfig(data=str(data), batch_size=4)
    with pytest.raises(sh.ShardError, match=r"codebook_size in shards \(64\) does not match the model \(1024\); "
                                            r"re-tokenize"):
        TokenStream(cfg, codebook_size=1024, latent_size=4)
    with pytest.raises(sh.ShardError, match=r"latent grid in shards \(4x4\) does not match the model \(16x16\)"):
        TokenStream(cfg, codebook_size=64, latent_size=16)
    with pytest.raises(sh.ShardError, match=r"has 10 classes; labels \[5, 6, 7, 8, 9\] outside \[0, 5\); pick a model config with num_classes>=10"):
        TokenStream(cfg, codebook_size=64, latent_size=4, num_classes=5)
    root = _copy(data, tmp_path)
    man = json.loads((root / "manifest.json").read_text())
    man["format_version"] = 7
    (root / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(sh.ShardError, match=r"format_version 7, this code reads version 1; re-tokenize"):
        _stream(root)


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_missing_and_truncated_shards_error_or_skip_and_count(data, tmp_path, fmt):
    root = _copy(data, tmp_path)
    m = sh.read_manifest(str(root))
    shards = m.shards_of(fmt)
    (root / shards[1].path).unlink()
    blob = (root / shards[2].path).read_bytes()
    (root / shards[2].path).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(sh.ShardError, match=r"unit-00001.*missing \(and 1 more bad shards\); restore it.*"
                                            r"skip_bad_shards=true"):
        _stream(root, format=fmt)
    shutil.copy(data / shards[1].path, root / shards[1].path)
    with pytest.raises(sh.ShardError, match=r"unit-00002.*corrupt \(size \d+ bytes, the manifest says \d+\)"):
        _stream(root, format=fmt)
    (root / shards[1].path).unlink()
    s = _stream(root, format=fmt, skip_bad_shards=True)
    assert s.skipped_samples == SIZES[1] + SIZES[2] and s.epoch_size == TOTAL - SIZES[1] - SIZES[2]
    ids = s.batch_at(np.arange(s.epoch_size))["sample_id"].numpy()
    bad = set(range(100, 100 + 37 + 250))
    assert len(set(ids)) == s.epoch_size and not bad & set(ids.tolist())


def test_corrupt_bytes_of_the_right_size_are_caught_when_read(data, tmp_path):
    root = _copy(data, tmp_path)
    shard = sh.read_manifest(str(root)).shards_of("webdataset")[2]
    blob = bytearray((root / shard.path).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (root / shard.path).write_bytes(bytes(blob))
    s = _stream(root, format="webdataset")
    with pytest.raises(sh.ShardError, match=r"unit-00002.*(corrupt|cannot decode)"):
        s.batch_at(np.arange(TOTAL))
    s = _stream(root, format="webdataset", skip_bad_shards=True)
    b = s.batch_at(np.arange(TOTAL))
    assert s.skipped_samples == 250 and len(b["sample_id"]) == TOTAL - 250


@pytest.fixture(scope="module")
def s3_server():
    exe = Path(sys.executable).parent / "moto_server"
    if not exe.exists():
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_stream_from_s3_equals_local(s3_server, data, monkeypatch):
    import s3fs

    for k, v in {"AWS_ENDPOINT_URL": s3_server, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("tokens")
    write_synthetic_token_dataset("s3://tokens/ds", codebook_size=64, latent_size=4, num_classes=10,
                                  shard_sizes=SIZES, formats=("parquet", "webdataset"), row_group=16, n_aug=3)
    for fmt in ("parquet", "webdataset"):
        remote = _stream("s3://tokens/ds", format=fmt, rank=1, world_size=2, start=70, num_batches=12)
        local = _stream(data, format=fmt, rank=1, world_size=2, start=70, num_batches=12)
        for a, b in zip(remote, local):
            assert all(torch.equal(a[k], b[k]) for k in a)
    fs.rm("tokens/ds/parquet/unit-00003.parquet")
    with pytest.raises(sh.ShardError, match=r"unit-00003.parquet: shard listed in the manifest is missing"):
        _stream("s3://tokens/ds", format="parquet")
