"""Hostile source files end as a reason at the image, quickly and in bounded memory: a thin image whose
resize would need gigabytes, a FIFO, a link to /dev/zero, an oversized file, WebDataset labels out of
range. (The real Ray job over these files is in tests/test_tokenize_job.py.)"""
from __future__ import annotations

import io
import os
import resource
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from maskgit_core.errors import DecodeError
from pipeline.data import sources
from pipeline.data.sources import ItemReader, SourceItem, list_source
from tokenizer.preprocess import preprocess_bytes
from tokenize_data import jpeg_bytes, photo


def _png(w: int, h: int) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 10)).save(b, format="PNG")
    return b.getvalue()


@pytest.mark.parametrize("w,h", [(2000, 1), (200000, 1), (1, 3000), (17, 1)])
def test_thin_images_are_refused_before_any_resize(w, h):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DecodeError, match=rf"image is {w}x{h} \(PNG\): aspect ratio above 16:1"):
        preprocess_bytes(_png(w, h), 256)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no 1.3 GiB resize


def test_a_wide_but_sane_image_still_encodes():
    views = preprocess_bytes(_png(160, 10), 8)  # 16:1 exactly
    assert views.shape == (1, 3, 8, 8)


def test_a_pixel_bomb_is_refused_from_its_header(monkeypatch):
    monkeypatch.setattr("tokenizer.preprocess.MAX_PIXELS", 100)
    with pytest.raises(DecodeError, match="above the limit of 100"):
        preprocess_bytes(_png(20, 20), 8)


def _item(path: Path, key: str) -> SourceItem:
    return SourceItem(key, 0, str(path))


def test_reader_refuses_fifos_devices_and_oversized_files(tmp_path, monkeypatch):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.jpg"
    big.write_bytes(jpeg_bytes(photo(1)))
    r = ItemReader()
    with pytest.raises(OSError, match=r"not a regular file \(a FIFO\): x.jpg"):
        r.read(_item(fifo, "x.jpg"))  # returns at once: the FIFO is never opened
    with pytest.raises(OSError, match=r"not a regular file \(a character device\): zero.jpg"):
        r.read(_item(zero, "zero.jpg"))
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 100)
    with pytest.raises(OSError, match=r"above the per-image limit of 100"):
        r.read(_item(big, "big.jpg"))
    with pytest.raises(OSError, match=r"tar member is 5,000 bytes, above the per-image limit"):
        r.read(SourceItem("a/b.jpg", 0, str(big), 0, 5000))


def _wds(path: Path, samples: dict[str, str]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, cls in samples.items():
            for name, payload in ((f"{key}.jpg", jpeg_bytes(photo(3))), (f"{key}.cls", cls.encode())):
                ti = tarfile.TarInfo(name)
                ti.size = len(payload)
                tar.addfile(ti, io.BytesIO(payload))


def test_webdataset_labels_out_of_range_are_listing_errors(tmp_path):
    """A cls of 999999999999 used to make the listing build a class table of that many rows."""
    _wds(tmp_path / "shard-000.tar", {"a": "1", "b": "999999999999", "c": "-5", "d": "0"})
    lst = list_source(str(tmp_path), layout="webdataset")
    assert [it.key for it in lst.items] == ["shard-000.tar/a", "shard-000.tar/d"]
    assert len(lst.classes) == 2
    reasons = dict(lst.errors)
    assert reasons["shard-000.tar/b"] == ".cls label 999999999999 outside [0, 1,000,000)"
    assert reasons["shard-000.tar/c"] == ".cls label -5 outside [0, 1,000,000)"


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_the_stream_refuses_labels_outside_the_class_table(tmp_path, fmt):
    """A shard label of -5 used to become a valid token id in training (only verify noticed)."""
    import numpy as np

    from maskgit_core.errors import ShardError
    from pipeline.data.shards import ShardRows, read_manifest, write_manifest, write_parquet_shard, \
        write_webdataset_shard
    from pipeline.data.stream import StreamConfig, TokenStream
    from pipeline.data.synthetic import write_synthetic_token_dataset

    root = str(tmp_path / "tokens")
    write_synthetic_token_dataset(root, codebook_size=16, latent_size=2, num_classes=3, shard_sizes=[8],
                                  formats=(fmt,), row_group=8)
    m = read_manifest(root)
    labels = np.array([0, 1, 2, -5, 0, 1, 2, 0])
    rows = ShardRows([f"k{i}" for i in range(8)], labels, np.zeros((8, m.tokenizer.n_aug, 2, 2), np.uint16))
    writer = write_parquet_shard if fmt == "parquet" else write_webdataset_shard
    m.shards = [writer(root, 0, rows, m.tokenizer)]
    write_manifest(root, m)
    stream = TokenStream(StreamConfig(data=root, batch_size=8, format=fmt), codebook_size=16, latent_size=2,
                         num_classes=3)
    with pytest.raises(ShardError, match=r"unit-00000.* labels \[-5\] outside \[0, 3\); the shard does not match"):
        stream.batch_at(np.arange(8))
