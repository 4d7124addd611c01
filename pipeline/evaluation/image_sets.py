"""Image sets for evaluation, read as they are written and streamed a batch at a time.

``open_image_set(uri)`` takes, local or on an object store (``s3://``):

- a **sample set** (a folder with ``manifest.json`` and ``shard-NNNNN.npz``, from ``sample-set``);
  one unit per shard;
- one **.npz** with ``images`` or ``arr_0`` (N, H, W, 3) uint8 and optional ``labels`` (``sample --npz``,
  the ADM reference batches); units of ``NPZ_UNIT`` rows;
- a **folder of PNG/JPEG** files (sorted by name, labels from an optional ``labels.txt``); units of
  ``FILE_UNIT`` files;
- a **dataset source** the tokenize job reads (an ImageNet folder, the tar-of-tars, WebDataset
  shards: ``pipeline.data.sources``), each image decoded and ADM centre-cropped to ``image_size``;
  units of ``FILE_UNIT`` images. Images that do not decode are skipped and counted (``skipped``).

Pixels are never all in memory: an .npz array is read from the file ``batch_size`` rows at a time
(straight from the archive for the ``np.savez`` layout; sequentially for ``savez_compressed``).
A unit is what one Ray task extracts and what a resumed run skips (``pipeline.evaluation.extraction``).
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
import struct
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from maskgit_core.errors import ConfigError
from pipeline.data.storage import url_to_fs

__all__ = ["Unit", "ImageSet", "open_image_set", "reopen", "npz_keys", "NPZ_UNIT", "FILE_UNIT", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)

NPZ_UNIT = 5000
"""Rows of a single .npz per unit (~1 GB of 256 px pixels, read a batch at a time)."""
FILE_UNIT = 1000
"""Image files (or dataset-source images) per unit."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Unit:
    """Images ``start .. start + count`` of the set (global indices), read and extracted together."""

    index: int
    start: int
    count: int


class ImageSet:
    """A set of uint8 RGB images in a fixed order, cut into units."""

    kind: str = ""

    def __init__(self, uri: str, storage_options: dict | None = None):
        self.uri = str(uri)
        self.storage_options = dict(storage_options or {})
        self.fs, self.path = url_to_fs(self.uri, **self.storage_options)
        self.units: list[Unit] = []
        self.skipped: list[tuple[str, str]] = []
        """(key, reason) of images that did not decode, as ``batches`` meets them."""
        self.listing_errors: list[tuple[str, str]] = []
        """(key, reason) of entries the listing could not use (dataset sources)."""

    @property
    def num_images(self) -> int:
        return sum(u.count for u in self.units)

    def spec(self, unit: Unit) -> dict[str, Any]:
        """What ``reopen`` needs to read ``unit`` of the same set in another process (a Ray task)."""
        return {"kind": self.kind, "uri": self.uri, "storage_options": self.storage_options}

    def identity(self) -> dict[str, Any]:
        """What makes the set's features what they are (a resumed extraction checks it)."""
        return {"kind": self.kind, "uri": self.uri, "units": [[u.start, u.count] for u in self.units]}

    def batches(self, unit: Unit, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images (b, H, W, 3) uint8, labels (b,) int64, -1 where unknown) of ``unit``."""
        raise NotImplementedError


# ------------------------------------------------------------------ .npz arrays, streamed

@dataclass
class _NpyMember:
    """Where an array's rows lie inside an .npz: a file object and the offset of row 0."""

    f: Any
    data_offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    sequential: bool
    """True for a compressed member: rows can only be read in order (``f`` is the member stream)."""

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except ValueError as e:
        raise ConfigError(f"{where}: not a NumPy array ({e})") from None
    if fortran or dtype.hasobject:
        raise ConfigError(f"{where}: a {'Fortran-order' if fortran else 'object'} array; expected C-order numbers "
                          "(object arrays would need unpickling, which is never done)")
    return shape, dtype


def _open_member(f, name: str, where: str) -> _NpyMember:
    """The .npy member ``name`` of the zip ``f`` (seekable): header parsed, positioned at row 0."""
    try:
        zf = zipfile.ZipFile(f)
        info = zf.getinfo(name)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if info.compress_type == zipfile.ZIP_STORED:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise ConfigError(f"{where}: damaged zip local header for {name}")
        n_name, n_extra = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + n_name + n_extra
        f.seek(start)
        shape, dtype = _read_npy_header(f, f"{where}:{name}")
        return _NpyMember(f, f.tell(), shape, dtype, sequential=False)
    m = zf.open(info)
    shape, dtype = _read_npy_header(m, f"{where}:{name}")
    return _NpyMember(m, 0, shape, dtype, sequential=True)


def _read_rows(m: _NpyMember, start: int, stop: int, pos: list[int]) -> np.ndarray:
    """Rows [start, stop) of the member; ``pos`` tracks the sequential reader's row."""
    rb = m.row_bytes
    if m.sequential:
        if start < pos[0]:
            raise ConfigError("a compressed .npz is read in order only")
        while pos[0] < start:  # skip rows before this unit, a batch at a time
            step = min(start - pos[0], max(1, (64 << 20) // max(rb, 1)))
            m.f.read(step * rb)
            pos[0] += step
    else:
        m.f.seek(m.data_offset + start * rb)
    arr = np.empty((stop - start,) + tuple(m.shape[1:]), m.dtype)
    buf = memoryview(arr).cast("B")
    got = 0
    while got < len(buf):
        n = m.f.readinto(buf[got:])
        if not n:
            raise ConfigError(f"truncated array: rows {start}..{stop} need {len(buf)} bytes, the file ends after {got}")
        got += n
    pos[0] = stop
    return arr


def _check_images(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
        raise ConfigError(f"{where}: images must be (N, H, W, 3) uint8, got {shape} {dtype}")


def npz_keys(f, where: str) -> list[str]:
    """The array names of the .npz open as ``f`` (its central directory only); ConfigError if not a zip."""
    try:
        return [n[:-4] for n in zipfile.ZipFile(f).namelist() if n.endswith(".npy")]
    except zipfile.BadZipFile:
        raise ConfigError(f"{where}: not an .npz file (no zip archive)") from None


def _read_labels(f, keys: list[str], n: int, where: str) -> np.ndarray:
    if "labels" not in keys:
        return np.full(n, -1, np.int64)
    m = _open_member(f, "labels.npy", where)
    if len(m.shape) != 1 or m.shape[0] != n or m.dtype.kind not in "iu":
        raise ConfigError(f"{where}: labels must be ({n},) integers, got {m.shape} {m.dtype}")
    return _read_rows(m, 0, n, [0]).astype(np.int64)


class NpzImages(ImageSet):
    """One .npz: ``images`` or ``arr_0`` (N, H, W, 3) uint8, optional ``labels``."""

    kind = "npz"

    def __init__(self, uri: str, storage_options: dict | None = None):
        super().__init__(uri, storage_options)
        with self.fs.open(self.path, "rb") as f:
            keys = npz_keys(f, self.uri)
            self.key = "images" if "images" in keys else "arr_0" if "arr_0" in keys else None
            if self.key is None:
                raise ConfigError(f"{self.uri}: no 'images' or 'arr_0' array; found {keys}")
            m = _open_member(f, f"{self.key}.npy", self.uri)
        _check_images(m.shape, m.dtype, f"{self.uri}:{self.key}")
        n = m.shape[0]
        self.units = [Unit(i, s, min(NPZ_UNIT, n - s)) for i, s in enumerate(range(0, n, NPZ_UNIT))]

    def batches(self, unit: Unit, batch_size: int):
        with self.fs.open(self.path, "rb", block_size=8 << 20) as f:
            keys = npz_keys(f, self.uri)
            labels = _read_labels(f, keys, self.num_images, self.uri)
            m = _open_member(f, f"{self.key}.npy", self.uri)
            pos = [0]
            for s in range(unit.start, unit.start + unit.count, batch_size):
                e = min(unit.start + unit.count, s + batch_size)
                yield _read_rows(m, s, e, pos), labels[s:e]


class SampleSet(ImageSet):
    """A finished ``sample-set`` folder: ``manifest.json`` + ``shard-NNNNN.npz``; unit = shard."""

    kind = "sample-set"

    def __init__(self, uri: str, storage_options: dict | None = None):
        super().__init__(uri, storage_options)
        man = posixpath.join(self.path, "manifest.json")
        if not self.fs.isfile(man):
            raise ConfigError(f"{self.uri}: no manifest.json; the sampling run has not finished (rerun it to resume)")
        try:
            shards = json.loads(self.fs.cat_file(man))["shards"]
            self.files = [str(s["path"]) for s in shards]
            self.units = [Unit(i, int(s["start"]), int(s["stop"]) - int(s["start"])) for i, s in enumerate(shards)]
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.uri}/manifest.json: not a sample-set manifest ({e!r})") from None
        for name in self.files:
            if "/" in name or "\\" in name or name.startswith("."):
                raise ConfigError(f"{self.uri}/manifest.json: shard path {name!r} leaves the folder")

    def batches(self, unit: Unit, batch_size: int):
        where = f"{self.uri}/{self.files[unit.index]}"
        with self.fs.open(posixpath.join(self.path, self.files[unit.index]), "rb", block_size=8 << 20) as f:
            keys = npz_keys(f, where)
            m = _open_member(f, "images.npy", where)
            _check_images(m.shape, m.dtype, where)
            if m.shape[0] != unit.count:
                raise ConfigError(f"{where}: {m.shape[0]} images, the manifest says {unit.count}")
            labels = _read_labels(f, keys, unit.count, where)
            pos = [0]
            for s in range(0, unit.count, batch_size):
                e = min(unit.count, s + batch_size)
                yield _read_rows(m, s, e, pos), labels[s:e]


def _decode_file(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{where}: not a readable image ({e})") from None


class ImageFolder(ImageSet):
    """PNG/JPEG files directly in a folder, sorted by name; labels from ``labels.txt`` if present.
    Images are used as they are (all of one size)."""

    kind = "image-folder"

    def __init__(self, uri: str, storage_options: dict | None = None):
        super().__init__(uri, storage_options)
        self.files = sorted(p for p in self.fs.ls(self.path, detail=False)
                            if posixpath.splitext(p)[1].lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ConfigError(f"{self.uri}: no .png/.jpg images in this folder")
        n = len(self.files)
        self.labels = np.full(n, -1, np.int64)
        lab = posixpath.join(self.path, "labels.txt")
        if self.fs.isfile(lab):
            vals = self.fs.cat_file(lab).split()
            if len(vals) != n:
                raise ConfigError(f"{self.uri}/labels.txt: {len(vals)} labels for {n} images")
            self.labels = np.array([int(v) for v in vals], np.int64)
        self.units = [Unit(i, s, min(FILE_UNIT, n - s)) for i, s in enumerate(range(0, n, FILE_UNIT))]

    def batches(self, unit: Unit, batch_size: int):
        for s in range(unit.start, unit.start + unit.count, batch_size):
            e = min(unit.start + unit.count, s + batch_size)
            imgs = [_decode_file(self.fs.cat_file(p), p) for p in self.files[s:e]]
            if len({im.shape for im in imgs}) > 1:
                raise ConfigError(f"{self.uri}: images of different sizes ({sorted({im.shape for im in imgs})[:3]}); "
                                  "use `eval reference` with --image-size for a dataset source")
            yield np.stack(imgs), self.labels[s:e]


class SourceImages(ImageSet):
    """A dataset source as the tokenize job lists it; each image ADM centre-cropped to ``image_size``."""

    kind = "source"

    def __init__(self, uri: str, storage_options: dict | None = None, *, image_size: int = 256,
                 layout: str = "auto", split: str | None = None, limit: int | None = None, items: list | None = None):
        super().__init__(uri, storage_options)
        self.image_size, self.layout, self.split = image_size, layout, split
        if items is None:
            from pipeline.data.sources import list_source

            listing = list_source(self.uri, layout=layout, split=split, **self.storage_options)
            items = listing.items[:limit] if limit else listing.items
            self.listing_errors = list(listing.errors)
        self.items = items
        n = len(self.items)
        if not n:
            raise ConfigError(f"{self.uri}: the source lists no images")
        self.units = [Unit(i, s, min(FILE_UNIT, n - s)) for i, s in enumerate(range(0, n, FILE_UNIT))]

    def spec(self, unit: Unit) -> dict[str, Any]:
        """The unit's own items travel with it (a task never lists the whole source again)."""
        return {**super().spec(unit), "image_size": self.image_size, "layout": self.layout, "split": self.split,
                "items": [it.to_list() for it in self.items[unit.start:unit.start + unit.count]]}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "image_size": self.image_size, "layout": self.layout, "split": self.split}

    def batches(self, unit: Unit, batch_size: int):
        from pipeline.data.sources import ItemReader
        from tokenizer.preprocess import preprocess_bytes

        reader = ItemReader(**self.storage_options)
        try:
            imgs: list[np.ndarray] = []
            labels: list[int] = []
            for item in self.items[unit.start:unit.start + unit.count]:
                try:
                    view = preprocess_bytes(reader.read(item), self.image_size)[0]  # (3, S, S)
                except Exception as e:  # noqa: BLE001 - a bad image is skipped and counted, never fatal
                    self.skipped.append((item.key, f"{type(e).__name__}: {e}"))
                    log.warning("skipped %s: %s", item.key, e)
                    continue
                imgs.append(view.transpose(1, 2, 0))
                labels.append(item.label)
                if len(imgs) == batch_size:
                    yield np.stack(imgs), np.asarray(labels, np.int64)
                    imgs, labels = [], []
            if imgs:
                yield np.stack(imgs), np.asarray(labels, np.int64)
        finally:
            reader.close()


def open_image_set(uri: str, *, source_size: int | None = None, layout: str = "auto", split: str | None = None,
                   limit: int | None = None, **storage_options: Any) -> ImageSet:
    """The set at ``uri``: a sample set, an .npz or a flat image folder; anything else (or any ``uri``
    with an explicit ``layout``/``split``) is a dataset source, centre-cropped to ``source_size``.
    Raises ConfigError / FileNotFoundError saying what was found instead."""
    fs, path = url_to_fs(str(uri), **storage_options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such file or folder")
    explicit = layout != "auto" or split is not None
    if not explicit and fs.isfile(path) and str(uri).endswith(".npz"):
        return NpzImages(str(uri), storage_options)
    if not explicit and fs.isdir(path):
        if fs.isfile(posixpath.join(path, "manifest.json")):
            return SampleSet(str(uri), storage_options)
        entries = fs.ls(path, detail=True)
        if any(posixpath.splitext(e["name"])[1].lower() in IMAGE_SUFFIXES for e in entries if e["type"] == "file"):
            return ImageFolder(str(uri), storage_options)
    if source_size is None:
        raise ConfigError(f"{uri}: not a sample set, an .npz of images or a folder of image files; for a dataset "
                          "source (ImageNet folder, tar-of-tars, WebDataset) give the evaluation resolution "
                          "(--reference-size / --image-size)")
    return SourceImages(str(uri), storage_options, image_size=source_size, layout=layout, split=split, limit=limit)


def reopen(spec: dict[str, Any], unit: Unit) -> tuple[ImageSet, Unit]:
    """The set ``ImageSet.spec(unit)`` describes, and the unit to read from it (inside a Ray task; a
    dataset source holds only that unit's items, so the unit starts at 0 there)."""
    kind = spec["kind"]
    so = spec.get("storage_options") or {}
    if kind == "source":
        from pipeline.data.sources import SourceItem

        items = [SourceItem.from_list(v) for v in spec["items"]]
        src = SourceImages(spec["uri"], so, image_size=spec["image_size"], layout=spec["layout"], split=spec["split"],
                           items=items)
        return src, Unit(unit.index, 0, len(items))
    cls = {"npz": NpzImages, "sample-set": SampleSet, "image-folder": ImageFolder}[kind]
    return cls(spec["uri"], so), unit
