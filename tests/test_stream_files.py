"""The training stream keeps a bounded number of shard files open, and an error of the storage
(not of the shard's bytes) never advises deleting data."""
from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import stream as stream_mod
from pipeline.data.stream import StreamConfig, TokenStream
from pipeline.data.synthetic import write_synthetic_token_dataset

N_SHARDS, PER_SHARD, MAX_OPEN, MARGIN = 300, 4, 16, 8


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("many")
    write_synthetic_token_dataset(str(root), codebook_size=16, latent_size=2, num_classes=3,
                                  shard_sizes=[PER_SHARD] * N_SHARDS, n_aug=1, row_group=PER_SHARD)
    return root


def _stream(root: Path, **kw) -> TokenStream:
    cfg = StreamConfig(data=str(root), batch_size=8, block_size=PER_SHARD, shuffle_buffer=64, **kw)
    return TokenStream(cfg, codebook_size=16, latent_size=2, num_classes=3,
                       num_batches=N_SHARDS * PER_SHARD // 8)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_full_epoch_over_many_shards_keeps_few_files_open_under_a_low_limit(many_shards):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    start = _open_fds()
    low = start + 64  # far fewer than the 300 shards
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(low, hard), hard))
    try:
        ds = _stream(many_shards, max_open_files=MAX_OPEN)
        seen, peak = [], _open_fds()
        for batch in ds:
            seen.append(batch["sample_id"].numpy())
            peak = max(peak, _open_fds())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    ids = np.concatenate(seen)
    assert sorted(ids.tolist()) == list(range(N_SHARDS * PER_SHARD))  # the whole epoch, each sample once
    assert peak <= start + MAX_OPEN + MARGIN
    assert len(ds._files) <= MAX_OPEN
    assert ds.peak_open_files == MAX_OPEN and ds.files_opened >= N_SHARDS  # the counters see the LRU at work


def test_max_open_files_must_be_positive(many_shards):
    with pytest.raises(ValueError, match="max_open_files"):
        StreamConfig(data=str(many_shards), batch_size=8, max_open_files=0)


@pytest.mark.parametrize("err", [OSError(errno.EMFILE, "Too many open files"),
                                 PermissionError(errno.EACCES, "Permission denied")])
def test_an_error_of_the_storage_names_it_and_never_advises_deleting_data(many_shards, monkeypatch, err):
    ds = _stream(many_shards, skip_bad_shards=True)

    def refuse(*a, **k):
        raise err

    monkeypatch.setattr(stream_mod.pq, "ParquetFile", refuse)
    with pytest.raises(stream_mod.ShardError) as info:
        next(iter(ds))  # not skipped: the shard's bytes are fine
    msg = str(info.value)
    assert "delete" not in msg.lower()
    assert errno.errorcode[err.errno] in msg and "unit-" in msg


def test_a_storage_error_when_opening_is_never_blamed_on_the_shard(many_shards, monkeypatch):
    ds = _stream(many_shards, skip_bad_shards=True)
    real = stream_mod.url_to_fs

    class Refusing:
        def __init__(self, fs):
            self.fs = fs

        def open(self, *a, **k):
            raise OSError("connection dropped by the object store")  # no errno, as s3fs raises them

    monkeypatch.setattr(stream_mod, "url_to_fs", lambda *a, **k: (Refusing(real(*a, **k)[0]), real(*a, **k)[1]))
    with pytest.raises(stream_mod.ShardAccessError) as info:
        next(iter(ds))
    assert "delete" not in str(info.value).lower() and "connection dropped" in str(info.value)
