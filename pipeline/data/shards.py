"""The token-shard contract: the interface between the tokenize job and the trainer.

A token dataset is a directory or URL prefix holding shards and one ``manifest.json``
(written last, after every shard is durable). See ``docs/SHARDS.md``.

- Parquet shards (``parquet/unit-00000.parquet``): one row per image: ``key`` (source-relative
  path), ``label`` (int32), ``n_aug`` (int16), ``tokens`` as ``fixed_size_list<uint16>[n_aug*h*w]``
  (uint32 for codebooks above 65,536), zstd, row groups of ``ROW_GROUP`` rows, ``key`` delta-encoded
  (``PARQUET_ENCODING``).
- WebDataset shards (``wds/unit-00000.tar.gz``): per image ``__key__`` (``<unit>_<row>``),
  ``tokens.npy`` (uint16 [n_aug, h, w]), ``cls`` (ascii label) and ``json`` (source key, label,
  n_aug). Plain ustar headers (integer mtime 0, no PAX records), gzip-compressed with mtime 0:
  deterministic bytes, and ~10x smaller than an uncompressed tar of tiny members. Any tar reader
  (``webdataset``, ``tarfile``) reads them.

Shard files are written whole and atomically (temp name + rename locally; a single PUT on
object stores), so a file either exists complete or not at all.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gzip
import hashlib
import io
import json
import logging
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from maskgit_core.errors import ConfigError, ShardError

from .storage import join, put_bytes_atomic, url_to_fs

__all__ = ["FORMAT_VERSION", "MANIFEST", "TokenizerInfo", "ShardInfo", "Manifest", "ShardRows",
           "write_manifest", "read_manifest", "write_parquet_shard",
           "write_webdataset_shard", "read_shard", "iter_parquet_batches", "check_compatible",
           "ShardError", "shard_relpath", "read_shard_bytes", "iter_ustar", "missing_shard_error",
           "parquet_tokens", "decode_webdataset"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
KIND = "maskgit-token-dataset"
ROW_GROUP = 4096
FORMATS = ("parquet", "webdataset")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- metadata

@dataclass(kw_only=True, frozen=True)
class TokenizerInfo:
    """Identity of the tokenizer that made the tokens; the trainer checks it against its model."""

    checkpoint_sha256: str
    """sha256 of the tokenizer's model.safetensors."""
    codebook_size: int
    """K; token ids are 0..K-1."""
    latent_h: int
    """Token grid height."""
    latent_w: int
    """Token grid width."""
    image_size: int
    """Side of the square crops that were encoded (pixels)."""
    preprocessing: str = "resize_shorter_center_crop"
    """How images became crops (ADM/LlamaGen convention by default)."""
    augmentations: tuple[str, ...] = ("center",)
    """Stored views per image, in order; tokens hold n_aug = len(augmentations) grids."""

    def __post_init__(self) -> None:
        if self.codebook_size < 2 or self.latent_h <= 0 or self.latent_w <= 0 or not self.augmentations:
            raise ConfigError(f"invalid TokenizerInfo: {self}")
        object.__setattr__(self, "augmentations", tuple(self.augmentations))

    @property
    def n_aug(self) -> int:
        return len(self.augmentations)

    @property
    def token_dtype(self) -> np.dtype:
        """uint16 up to 65,536 codes, else uint32 (never float16: not exact above 2048)."""
        return np.dtype(np.uint16 if self.codebook_size <= 65536 else np.uint32)

    @property
    def tokens_per_sample(self) -> int:
        return self.n_aug * self.latent_h * self.latent_w

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["augmentations"] = list(self.augmentations)
        d["token_dtype"] = self.token_dtype.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenizerInfo":
        d = {k: v for k, v in d.items() if k != "token_dtype"}
        return cls(**d)


@dataclass(kw_only=True)
class ShardInfo:
    """One shard file: where it is (relative to the dataset root), what it holds, its checksum."""

    path: str
    format: str
    unit: int
    samples: int
    bytes: int
    sha256: str
    first_key: str = ""
    last_key: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Manifest:
    """What ``manifest.json`` holds (format version 1)."""

    tokenizer: TokenizerInfo
    shards: list[ShardInfo]
    classes: list[dict[str, Any]] = field(default_factory=list)
    """[{'index': 0, 'id': 'n01440764', 'name': 'tench'}, ...]"""
    source: dict[str, Any] = field(default_factory=dict)
    """{'uri', 'layout', 'split', 'image_count'}"""
    counts: dict[str, int] = field(default_factory=dict)
    """{'images': listed source images, 'samples': tokenized, 'errors': in the error report}"""
    error_report: str | None = None
    """Path of the JSONL error report relative to the root (key, reason per line)."""
    format_version: int = FORMAT_VERSION
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def formats(self) -> list[str]:
        return sorted({s.format for s in self.shards})

    def shards_of(self, fmt: str) -> list[ShardInfo]:
        """Shards of one format in unit order."""
        if fmt not in FORMATS:
            raise ConfigError(f"unknown shard format {fmt!r}; choose one of {list(FORMATS)}")
        out = sorted((s for s in self.shards if s.format == fmt), key=lambda s: s.unit)
        if not out:
            raise ShardError(f"dataset has no {fmt} shards (it has {self.formats}); pick --format "
                             f"{self.formats[0] if self.formats else '?'} or re-tokenize with {fmt} output")
        return out

    def num_samples(self, fmt: str | None = None) -> int:
        fmt = fmt or self.formats[0]
        return sum(s.samples for s in self.shards_of(fmt))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "format_version": self.format_version, "created": self.created,
                "tokenizer": self.tokenizer.to_dict(), "source": self.source, "formats": self.formats,
                "shards": [s.to_dict() for s in sorted(self.shards, key=lambda s: (s.format, s.unit))],
                "classes": self.classes, "counts": self.counts, "error_report": self.error_report,
                "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = MANIFEST) -> "Manifest":
        if d.get("kind") != KIND:
            raise ShardError(f"{source}: not a token-dataset manifest (kind={d.get('kind')!r}, expected {KIND!r})")
        version = int(d.get("format_version", 0))
        if version != FORMAT_VERSION:
            raise ShardError(f"{source}: shard format_version {version}, this code reads version {FORMAT_VERSION}; "
                             "re-tokenize with this version or install the matching maskgit-pipeline")
        return cls(tokenizer=TokenizerInfo.from_dict(d["tokenizer"]),
                   shards=[ShardInfo(**s) for s in d["shards"]], classes=d.get("classes", []),
                   source=d.get("source", {}), counts=d.get("counts", {}), error_report=d.get("error_report"),
                   format_version=version, created=d.get("created", ""), extra=d.get("extra", {}))


def write_manifest(root: str, manifest: Manifest, **storage_options: Any) -> str:
    """Write ``manifest.json`` (atomically). Call it last, after every shard is durable."""
    fs, path = url_to_fs(root, **storage_options)
    target = join(path, MANIFEST)
    put_bytes_atomic(fs, target, json.dumps(manifest.to_dict(), indent=1).encode())
    return target


def read_manifest(root: str, **storage_options: Any) -> Manifest:
    """Read and validate ``manifest.json`` under ``root`` (a directory or URL prefix)."""
    fs, path = url_to_fs(root, **storage_options)
    target = join(path, MANIFEST)
    if not fs.exists(target):
        raise ShardError(f"{root}: no {MANIFEST} (an unfinished or interrupted tokenize run writes it last); "
                         "rerun `maskgit-pipeline tokenize ... --resume` to finish it")
    try:
        d = json.loads(fs.cat_file(target))
    except json.JSONDecodeError as e:
        raise ShardError(f"{target}: not valid JSON ({e})") from e
    return Manifest.from_dict(d, source=target)


def check_compatible(manifest: Manifest, *, codebook_size: int, latent_size: int | tuple[int, int],
                     source: str = "dataset") -> None:
    """Refuse shards that a model cannot train on: names both values and the fix."""
    t = manifest.tokenizer
    lh, lw = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    if t.codebook_size != codebook_size:
        raise ShardError(f"{source}: codebook_size in shards ({t.codebook_size}) does not match the model "
                         f"({codebook_size}); re-tokenize with the model's tokenizer or pick a model config with "
                         f"codebook_size={t.codebook_size}")
    if (t.latent_h, t.latent_w) != (lh, lw):
        raise ShardError(f"{source}: latent grid in shards ({t.latent_h}x{t.latent_w}) does not match the model "
                         f"({lh}x{lw}); re-tokenize at the model's resolution or pick a model config with "
                         f"latent_size={t.latent_h}")


# ---------------------------------------------------------------- rows and writers

@dataclass
class ShardRows:
    """The contents of one shard: N images."""

    keys: list[str]
    labels: np.ndarray  # (N,) int64
    tokens: np.ndarray  # (N, n_aug, h, w) uint16/uint32

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.tokens.ndim != 4 or len(self.keys) != len(self.labels) or len(self.keys) != len(self.tokens):
            raise ConfigError(f"ShardRows: keys {len(self.keys)}, labels {self.labels.shape}, tokens "
                              f"{self.tokens.shape} (expected (N, n_aug, h, w)) do not agree")

    def __len__(self) -> int:
        return len(self.keys)


def shard_relpath(fmt: str, unit: int) -> str:
    """Deterministic shard name of a work unit."""
    return f"parquet/unit-{unit:05d}.parquet" if fmt == "parquet" else f"wds/unit-{unit:05d}.tar.gz"


def _check_rows(rows: ShardRows, info: TokenizerInfo) -> np.ndarray:
    want = (info.n_aug, info.latent_h, info.latent_w)
    if len(rows) and tuple(rows.tokens.shape[1:]) != want:
        raise ConfigError(f"tokens have shape {rows.tokens.shape[1:]}, the tokenizer info says {want}")
    if len(rows) and (rows.tokens.min() < 0 or rows.tokens.max() >= info.codebook_size):
        raise ConfigError(f"token ids outside [0, {info.codebook_size})")
    return rows.tokens.astype(info.token_dtype, copy=False)


PARQUET_ENCODING: dict[str, Any] = {
    "use_dictionary": ["label", "n_aug", "tokens.list.element"],
    "column_encoding": {"key": "DELTA_BYTE_ARRAY"},
}
"""How the Parquet writer encodes the columns. Sorted keys share long prefixes
(``train/n01440764/n01440764_1002...``): DELTA_BYTE_ARRAY stores each key as the length of the prefix it
shares with the previous one plus the rest, 0.46 B/image after zstd vs 2.7 B with the default
dictionary (12,288 ImageNet-like keys). Labels, n_aug and token ids keep dictionary encoding (token ids
bit-packed to log2(K) bits before zstd). Readers need nothing: the encodings are in the file; files of
the earlier writer (dictionary keys) read the same."""


def _parquet_schema(info: TokenizerInfo) -> pa.Schema:
    value = pa.uint16() if info.token_dtype == np.uint16 else pa.uint32()
    meta = {"maskgit.format_version": str(FORMAT_VERSION), "maskgit.tokenizer": json.dumps(info.to_dict())}
    return pa.schema([("key", pa.string()), ("label", pa.int32()), ("n_aug", pa.int16()),
                      ("tokens", pa.list_(value, info.tokens_per_sample))], metadata=meta)


def _finish(fs, root: str, rel: str, fmt: str, unit: int, data: bytes, rows: ShardRows) -> ShardInfo:
    put_bytes_atomic(fs, join(root, rel), data)
    return ShardInfo(path=rel, format=fmt, unit=unit, samples=len(rows), bytes=len(data), sha256=_sha256(data),
                     first_key=rows.keys[0] if len(rows) else "", last_key=rows.keys[-1] if len(rows) else "")


def write_parquet_shard(root: str, unit: int, rows: ShardRows, info: TokenizerInfo, *,
                        row_group: int = ROW_GROUP, **storage_options: Any) -> ShardInfo:
    """Write one work unit's rows as a Parquet shard; return its ShardInfo."""
    tokens = _check_rows(rows, info)
    schema = _parquet_schema(info)
    flat = pa.array(tokens.reshape(-1), type=schema.field("tokens").type.value_type)
    table = pa.table({
        "key": pa.array(rows.keys, pa.string()),
        "label": pa.array(rows.labels.astype(np.int32), pa.int32()),
        "n_aug": pa.array(np.full(len(rows), info.n_aug, np.int16), pa.int16()),
        "tokens": pa.FixedSizeListArray.from_arrays(flat, info.tokens_per_sample),
    }, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=row_group, write_statistics=False,
                   **PARQUET_ENCODING)
    fs, path = url_to_fs(root, **storage_options)
    rel = shard_relpath("parquet", unit)
    return _finish(fs, path, rel, "parquet", unit, buf.getvalue(), rows)


def _tar_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(payload), 0, 0o444, 0, 0, "", ""
    tar.addfile(ti, io.BytesIO(payload))


def _npy_bytes(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


def write_webdataset_shard(root: str, unit: int, rows: ShardRows, info: TokenizerInfo,
                           **storage_options: Any) -> ShardInfo:
    """Write one work unit's rows as a gzip'd WebDataset tar; return its ShardInfo."""
    tokens = _check_rows(rows, info)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (key, label) in enumerate(zip(rows.keys, rows.labels)):
            k = f"{unit:05d}_{i:06d}"
            _tar_member(tar, f"{k}.tokens.npy", _npy_bytes(np.ascontiguousarray(tokens[i])))
            _tar_member(tar, f"{k}.cls", str(int(label)).encode())
            _tar_member(tar, f"{k}.json", json.dumps({"key": key, "label": int(label), "n_aug": info.n_aug},
                                                     separators=(",", ":")).encode())
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=6, mtime=0) as g:
        g.write(raw.getvalue())
    fs, path = url_to_fs(root, **storage_options)
    rel = shard_relpath("webdataset", unit)
    return _finish(fs, path, rel, "webdataset", unit, gz.getvalue(), rows)


# ---------------------------------------------------------------- readers

def missing_shard_error(path: str, *, more_bad: int = 0, skippable: bool = False) -> ShardError:
    """The error for a shard that the manifest lists and storage does not hold (every reader raises this one).

    ``more_bad``: further bad shards found in the same check; ``skippable``: the caller (the
    training stream) can skip bad shards, so the message offers ``skip_bad_shards=true``.
    """
    more = f" (and {more_bad} more bad shards)" if more_bad else ""
    skip = ", or pass skip_bad_shards=true to train without it" if skippable else ""
    return ShardError(f"{path}: shard listed in the manifest is missing{more}; restore it or re-run "
                      f"`maskgit-pipeline tokenize ... --resume` to rewrite missing units{skip}")


def read_shard_bytes(fs, path: str, shard: ShardInfo, *, verify: bool) -> bytes:
    """The whole file of ``shard`` at ``path`` on ``fs``; with ``verify``, size and sha256 are checked."""
    if not fs.exists(path):
        raise missing_shard_error(path)
    data = fs.cat_file(path)
    if verify and (len(data) != shard.bytes or _sha256(data) != shard.sha256):
        raise ShardError(f"{path}: shard is corrupt (size {len(data)} vs {shard.bytes} in the manifest or "
                         "sha256 mismatch); delete it and re-run tokenize with --resume")
    return data


def parquet_tokens(table: pa.Table, info: TokenizerInfo) -> np.ndarray:
    """The ``tokens`` column of a Parquet shard's table (or row group) -> (N, n_aug, h, w)."""
    flat = table.column("tokens").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return flat.reshape((table.num_rows, info.n_aug, info.latent_h, info.latent_w))


def iter_ustar(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, payload) of each regular member of an uncompressed ustar archive.

    8-27x faster than ``tarfile`` on our shards, 3-6x with gunzip included (``bench/bench_ustar.py``,
    docs/BENCHMARKS.md); both decode the same members.
    """
    off, n = 0, len(data)
    while off + 512 <= n:
        hdr = data[off:off + 512]
        if hdr[0] == 0:
            break
        name = hdr[0:100].split(b"\0", 1)[0].decode()
        prefix = hdr[345:500].split(b"\0", 1)[0].decode()
        if prefix:
            name = f"{prefix}/{name}"
        size = int(hdr[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        typeflag = hdr[156:157]
        off += 512
        if typeflag in (b"0", b"\0"):
            yield name, data[off:off + size]
        off += (size + 511) // 512 * 512


def decode_webdataset(data: bytes, info: TokenizerInfo, *, with_keys: bool = True
                      ) -> tuple[list[str] | None, np.ndarray, np.ndarray]:
    """A gzip'd WebDataset shard's bytes -> (source keys or None, labels (N,) int64, tokens (N, n_aug, h, w)).

    Token members share one .npy header, so the tokens are sliced out of one joined buffer
    (no per-member ``np.load``); labels come from the ``cls`` members and the source keys from
    the ``json`` members, which are parsed only ``with_keys``. The tokens are a read-only view
    of that buffer. Damaged data raises the underlying gzip / numpy / json error (the callers
    name the file).
    """
    shape = (info.n_aug, info.latent_h, info.latent_w)
    payloads, labels, keys = [], [], []
    for name, payload in iter_ustar(gzip.decompress(data)):
        if name.endswith(".tokens.npy"):
            payloads.append(payload)
        elif name.endswith(".cls"):
            labels.append(int(payload))
        elif with_keys and name.endswith(".json"):
            keys.append(json.loads(payload)["key"])
    if not payloads:
        return ([] if with_keys else None), np.zeros((0,), np.int64), np.zeros((0, *shape), info.token_dtype)
    ref = np.load(io.BytesIO(payloads[0]), allow_pickle=False)
    if ref.shape != shape or any(len(p) != len(payloads[0]) for p in payloads):
        raise ConfigError(f"tokens.npy members are not all {shape} {info.token_dtype}")
    head = len(payloads[0]) - ref.nbytes  # the .npy header, the same for every member
    tokens = np.frombuffer(b"".join(p[head:] for p in payloads), dtype=ref.dtype).reshape((-1, *shape))
    return (keys if with_keys else None), np.asarray(labels, np.int64), tokens


def read_shard(root: str, shard: ShardInfo, info: TokenizerInfo, *, verify: bool = True,
               **storage_options: Any) -> ShardRows:
    """Read a whole shard (Parquet or WebDataset) into memory, checking its checksum."""
    fs, path = url_to_fs(root, **storage_options)
    full = join(path, shard.path)
    data = read_shard_bytes(fs, full, shard, verify=verify)
    try:
        if shard.format == "parquet":
            table = pq.read_table(io.BytesIO(data))
            rows = ShardRows(table.column("key").to_pylist(), table.column("label").to_numpy().astype(np.int64),
                             parquet_tokens(table, info))
        else:
            keys, labels, tokens = decode_webdataset(data, info)
            rows = ShardRows(keys, labels, tokens)
    except ShardError:
        raise
    except Exception as e:  # pyarrow / gzip / numpy errors on damaged data
        raise ShardError(f"{full}: cannot decode {shard.format} shard ({type(e).__name__}: {e}); "
                         "delete it and re-run tokenize with --resume") from e
    if len(rows) != shard.samples:
        raise ShardError(f"{full}: holds {len(rows)} samples, the manifest says {shard.samples}")
    return rows


def iter_parquet_batches(root: str, shard: ShardInfo, info: TokenizerInfo, *, start_row: int = 0,
                         batch_rows: int = ROW_GROUP, **storage_options: Any) -> Iterator[ShardRows]:
    """Stream a Parquet shard from ``start_row`` on, reading only the row groups needed
    (seeking uses the file's row-group counts, not read-and-discard)."""
    fs, path = url_to_fs(root, **storage_options)
    full = join(path, shard.path)
    if not fs.exists(full):
        raise missing_shard_error(full)
    with fs.open(full, "rb") as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise ShardError(f"{full}: cannot open Parquet shard ({e}); delete it and re-run tokenize --resume") from e
        first = 0
        for g in range(pf.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n <= start_row:
                first += n
                continue
            t = pf.read_row_group(g, columns=["key", "label", "tokens"])
            skip = max(0, start_row - first)
            first += n
            t = t.slice(skip)
            for off in range(0, t.num_rows, batch_rows):
                b = t.slice(off, batch_rows)
                yield ShardRows(b.column("key").to_pylist(), b.column("label").to_numpy().astype(np.int64),
                                parquet_tokens(b, info))
