"""The training token stream: a deterministic, seekable IterableDataset over token shards.

Order (a pure function of ``(seed, epoch)``, the manifest's per-shard counts and the config):

1. shards are permuted; each shard is cut into blocks of ``block_size`` rows, and the blocks of
   each shard are permuted -> the epoch's *block sequence* (every sample exactly once);
2. the block sequence (N positions) is cut into ``partitions`` (P) contiguous *parts* of near-equal
   size (the first ``N % P`` hold one more);
3. the parts are interleaved sample by sample: epoch position ``e < P*(N // P)`` is index ``e // P``
   of part ``e % P``; the ``N % P`` tail positions are the last index of parts 0, 1, ...;
4. a bounded shuffle: each part is cut into windows of ``ceil(shuffle_buffer / P)`` samples, each
   permuted with its own seed; odd parts are read back to front (their index i is the part's
   position size-1-i), so neighbouring parts reach the row group they share together
   -> the epoch's *sample order*.

Epochs follow each other as one infinite stream; global stream index ``g`` is sample
``g % total`` of epoch ``g // total``. Each stored sample holds ``n_aug`` augmented token grids;
which one is used is a hash of ``(seed, epoch, sample id)``.

Distribution: micro-step ``s`` of the whole job consumes the contiguous range
``[start + s*W*B, start + (s+1)*W*B)`` of the stream; rank ``r`` of ``W`` takes every W-th position
of it from ``r`` on. The step's set of samples does not depend on W, and when W divides P a rank
reads only the parts ``= r + const (mod W)``: 1/W of the data (in general the parts of one residue
mod ``gcd(W, P)``). DataLoader worker ``w`` of ``n`` produces the rank's local batches
``w, w+n, ...`` (the DataLoader interleaves them back in order), so the batch sequence does not
depend on the number of workers. Because the job consumes a prefix of the stream, resuming at a
global sample index on any world size continues exactly there: ``seek`` is arithmetic over the
manifest counts (which part, which window, which block, which row group), no earlier data is read.

Reading: Parquet shards are read per row group (only those covering the needed blocks);
WebDataset shards (gzip'd tars have no random access) are read whole and checksum-verified.
Decoded units are cached (LRU, bounded by the parts this rank reads: each part's window plus the
units at its ends), so a unit is decoded once per epoch per process.
"""
from __future__ import annotations

import errno
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.data.shards import (FORMATS, Manifest, ShardError, ShardInfo, check_compatible, decode_webdataset,
                                  join, missing_shard_error, parquet_tokens, read_manifest, read_shard_bytes,
                                  url_to_fs)
from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError

__all__ = ["StreamConfig", "TokenStream", "ShardAccessError", "epoch_blocks", "stream_positions", "aug_index", "rank_positions",
           "StreamPlan"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pure order math

def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) & 0xFFFFFFFF for k in key])


def epoch_blocks(counts: list[int] | np.ndarray, block_size: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's block sequence: (n_blocks, 3) int64 rows ``[shard, start_row, end_row)``.

    Shards in a permuted order; within each shard its blocks permuted. Empty shards vanish.
    """
    counts = np.asarray(counts, dtype=np.int64)
    rows = []
    for shard in _rng(seed, epoch, 0).permutation(len(counts)):
        n = int(counts[shard])
        if n == 0:
            continue
        starts = np.arange(0, n, block_size, dtype=np.int64)
        starts = starts[_rng(seed, epoch, 1, shard).permutation(len(starts))]
        rows.append(np.stack([np.full_like(starts, shard), starts, np.minimum(starts + block_size, n)], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)


class StreamPlan:
    """Maps positions of the stream to (shard, row) without touching data; caches per epoch.

    The epoch's block sequence (positions ``0..N-1``) is cut into ``partitions`` contiguous parts
    (``part_bounds``); the sample order interleaves them sample by sample (``part_of``), and each
    part is shuffled in windows of ``window`` samples of its own. Odd parts are read back to front:
    the row group two neighbouring parts share is then needed by both at the same time (start or
    end of the epoch), so a rank reading both decodes it once.
    """

    def __init__(self, counts: list[int], *, block_size: int, shuffle_buffer: int, seed: int, partitions: int = 64):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.total = int(self.counts.sum())
        if self.total == 0:
            raise ShardError("the token dataset has no samples (all shards empty or skipped)")
        self.block_size, self.shuffle_buffer, self.seed = block_size, shuffle_buffer, seed
        self.partitions = partitions
        self.window = max(1, -(-shuffle_buffer // partitions))  # per part: all parts hold ~shuffle_buffer
        self.first_id = np.concatenate([[0], np.cumsum(self.counts)[:-1]])  # sample id of each shard's row 0
        self._epoch: int | None = None
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # LRU: (part, window) -> perm

    def part_bounds(self, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first block-sequence position, size) of each part: the first ``N % P`` parts hold one more."""
        m, rem = divmod(self.total, self.partitions)
        part = np.asarray(part, dtype=np.int64)
        return part * m + np.minimum(part, rem), m + (part < rem)

    def part_of(self, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Epoch positions (n,) -> (part, index within the part): position ``e < P*m`` is index
        ``e // P`` of part ``e % P``; the ``N % P`` tail positions are the last index of parts 0, 1, ..."""
        body = self.partitions * (self.total // self.partitions)
        e = np.asarray(e, dtype=np.int64)
        inside = e < body
        return (np.where(inside, e % self.partitions, e - body),
                np.where(inside, e // self.partitions, self.total // self.partitions))

    def _load_epoch(self, epoch: int) -> None:
        if self._epoch != epoch:
            self._blocks = epoch_blocks(self.counts, self.block_size, self.seed, epoch)
            self._block_end = np.cumsum(self._blocks[:, 2] - self._blocks[:, 1])  # (n_blocks,)
            self._epoch = epoch
            self._windows.clear()

    def _window_perm(self, epoch: int, part: int, j: int) -> np.ndarray:
        """Permutation of window ``j`` of ``part`` (LRU: enough for every part's current and next window)."""
        key = (part, j)
        if key in self._windows:
            self._windows.move_to_end(key)
            return self._windows[key]
        size = min(self.window, int(self.part_bounds(part)[1]) - j * self.window)
        perm = self._windows[key] = _rng(self.seed, epoch, 2, part, j).permutation(size)
        if len(self._windows) > 2 * self.partitions + 8:
            self._windows.popitem(last=False)
        return perm

    def _shuffled(self, epoch: int, part: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Index within the part -> its shuffled index (each window of the part permuted)."""
        win, off = np.divmod(idx, self.window)
        out = np.empty_like(idx)
        key = part * (self.total // self.window + 2) + win  # one int per (part, window)
        for k in np.unique(key):
            sel = key == k
            p, j = int(part[sel][0]), int(win[sel][0])
            out[sel] = j * self.window + self._window_perm(epoch, p, j)[off[sel]]
        return out

    def locate(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global stream indices (n,) -> (epoch, shard, row), each (n,) int64."""
        g = np.asarray(g, dtype=np.int64)
        epochs, pos = np.divmod(g, self.total)
        shard = np.empty_like(g)
        row = np.empty_like(g)
        for e in np.unique(epochs):
            sel = epochs == e
            self._load_epoch(int(e))
            part, idx = self.part_of(pos[sel])
            first, size = self.part_bounds(part)
            k = self._shuffled(int(e), part, idx)
            q = first + np.where(part % 2 == 1, size - 1 - k, k)  # position in the block sequence
            b = np.searchsorted(self._block_end, q, side="right")  # block of each position
            before = np.where(b > 0, self._block_end[np.maximum(b - 1, 0)], 0)
            shard[sel] = self._blocks[b, 0]
            row[sel] = self._blocks[b, 1] + (q - before)
        return epochs, shard, row


def stream_positions(counts: list[int], g: np.ndarray, *, block_size: int, shuffle_buffer: int, seed: int,
                     partitions: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure function: stream indices -> (epoch, shard, row)."""
    return StreamPlan(counts, block_size=block_size, shuffle_buffer=shuffle_buffer, seed=seed,
                      partitions=partitions).locate(g)


def rank_positions(start: int, local_batch: int, *, rank: int, world_size: int, batch_size: int) -> np.ndarray:
    """Stream indices of rank ``rank``'s local batch number ``local_batch`` (B,) int64: every
    ``world_size``-th position of the job's micro-step, from offset ``rank``."""
    first = start + local_batch * world_size * batch_size
    return first + rank + world_size * np.arange(batch_size, dtype=np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def aug_index(seed: int, epoch: np.ndarray, sample_id: np.ndarray, n_aug: int) -> np.ndarray:
    """Which stored augmentation each sample uses this epoch: a hash, uniform over n_aug."""
    if n_aug == 1:
        return np.zeros(np.shape(sample_id), np.int64)
    with np.errstate(over="ignore"):
        key = (_splitmix64(np.asarray(epoch, np.uint64) + np.uint64(seed) * np.uint64(0x100000001B3))
               ^ np.asarray(sample_id, np.uint64))
    return (_splitmix64(key) % np.uint64(n_aug)).astype(np.int64)


# ---------------------------------------------------------------- the dataset

@dataclass(kw_only=True, frozen=True)
class StreamConfig:
    """Where the token shards are and how to order them."""

    data: str
    """Dataset root (directory or s3://bucket/prefix) holding manifest.json."""
    batch_size: int
    """Samples per rank per micro-step."""
    format: str = "parquet"
    """Shard format to read: 'parquet' or 'webdataset'."""
    seed: int = 0
    """Order seed; the order is a pure function of (seed, epoch)."""
    block_size: int = 4096
    """Rows per block (permuted within a shard); best a multiple of the Parquet row group."""
    shuffle_buffer: int = 65536
    """Samples held in shuffle windows at once, over all parts (each part's window: ceil(this / partitions))."""
    partitions: int = 64
    """Parts of the epoch's block sequence, interleaved sample by sample; a world size that divides it
    reads only its ranks' parts (1/W of the data per rank)."""
    augment: bool = True
    """Pick a random stored augmentation per sample per epoch (False: always the first)."""
    skip_bad_shards: bool = False
    """Skip missing/corrupt shards and count them, instead of failing."""
    max_open_files: int = 32
    """Parquet shards kept open at once (least recently used closed first); bounds file descriptors."""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown shard format {self.format!r}; choose one of {list(FORMATS)}")
        for name in ("batch_size", "block_size", "shuffle_buffer", "partitions", "max_open_files"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"stream {name} must be positive, got {getattr(self, name)}")


class ShardAccessError(ShardError):
    """The storage refused to open a shard (too many open files, permissions, the network): the
    shard's bytes were never read, so it is not skipped and deleting it would not help."""


# errnos that say nothing about a shard's bytes: the process, the permissions or the network
_STORAGE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM, errno.ENOMEM, errno.ETIMEDOUT,
                   errno.ECONNRESET, errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EAGAIN}


def _storage_error(full: str, e: OSError) -> ShardAccessError:
    code = errno.errorcode.get(e.errno) or type(e).__name__
    if e.errno in (errno.EMFILE, errno.ENFILE):
        fix = ("the process ran out of file descriptors: raise the limit (`ulimit -n`) or lower the stream's "
               "max_open_files")
    elif e.errno in (errno.EACCES, errno.EPERM):
        fix = "the shard is not readable by this user: fix its permissions or the storage credentials"
    else:
        fix = "check the storage or the network, then rerun (training resumes from its last checkpoint)"
    return ShardAccessError(f"{full}: cannot open the shard: {code} ({e.strerror or e}); the shard's bytes were "
                            f"not read, so the data is not at fault: {fix}")


class TokenStream(IterableDataset):
    """Yields batches ``{'images': (B, h*w) int64, 'labels': (B,), 'index': (B,), 'sample_id': (B,),
    'aug': (B,)}`` for one rank, from global stream index ``start`` on (use ``batch_size=None`` in
    the DataLoader). ``index`` is the global stream position, ``sample_id`` the manifest-order id.
    """

    def __init__(self, cfg: StreamConfig, *, codebook_size: int, latent_size: int, num_classes: int | None = None,
                 rank: int = 0, world_size: int = 1, start: int = 0, num_batches: int | None = None,
                 storage_options: dict[str, Any] | None = None):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} outside [0, world_size={world_size})")
        self.cfg, self.rank, self.world_size, self.start = cfg, rank, world_size, int(start)
        self.num_batches = num_batches
        self.storage_options = dict(storage_options or {})
        self.manifest: Manifest = read_manifest(cfg.data, **self.storage_options)
        check_compatible(self.manifest, codebook_size=codebook_size, latent_size=latent_size, source=cfg.data)
        ncls = len(self.manifest.classes)
        if num_classes is not None:
            check_labels([c["index"] for c in self.manifest.classes], num_classes, error=ShardError,
                         what=f"{cfg.data}: the dataset has {ncls} classes; labels",
                         fix=f"pick a model config with num_classes>={ncls} (plus one if training with class dropout)")
        # labels a model may see: a label outside would silently become an image token id (-5 + K < K)
        self.label_bound = num_classes if num_classes is not None else max(
            [c["index"] + 1 for c in self.manifest.classes] + [ncls])
        self.info = self.manifest.tokenizer
        self.shards: list[ShardInfo] = self.manifest.shards_of(cfg.format)
        self.bad = self._check_files()
        counts = [0 if i in self.bad else s.samples for i, s in enumerate(self.shards)]
        self.skipped_samples = sum(s.samples for i, s in enumerate(self.shards) if i in self.bad)
        self.plan = StreamPlan(counts, block_size=cfg.block_size, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                               partitions=cfg.partitions)
        full = np.array([s.samples for s in self.shards], np.int64)
        self.plan.first_id = np.concatenate([[0], np.cumsum(full)[:-1]])  # ids stay stable when shards are skipped
        self.epoch_size = self.plan.total
        # parts this rank reads at once: those = r (mod gcd(W, P)) when one epoch's positions are dealt out
        self.parts_per_rank = cfg.partitions // math.gcd(world_size, cfg.partitions)
        self._cache: OrderedDict[tuple[int, int], tuple[int, np.ndarray, np.ndarray]] = OrderedDict()
        self._cached_rows, self._unit_rows = 0, 1  # rows held in _cache; rows of the largest unit seen
        self._files: OrderedDict[int, tuple[pq.ParquetFile, Any]] = OrderedDict()  # LRU: (file, fsspec handle)
        self._rg_rows: dict[int, int] = {}  # shard -> rows per row group (known once opened)
        # measurement counters (per process: each DataLoader worker keeps its own)
        self.units_decoded = 0  # row groups / whole WebDataset shards loaded
        self.samples_decoded = 0  # rows in them
        self.files_opened = 0  # Parquet shard files opened (reopens after an LRU close included)
        self.peak_open_files = 0  # most Parquet files open at once

    # -- checks
    def _check_files(self) -> dict[int, str]:
        """Missing or wrong-size shards (one listing per directory): error, or skip with the flag."""
        fs, root = url_to_fs(self.cfg.data, **self.storage_options)
        sizes: dict[str, int] = {}
        for d in sorted({join(root, s.path).rsplit("/", 1)[0] for s in self.shards}):
            fs.invalidate_cache(d)
            try:
                sizes.update({e["name"].rstrip("/"): int(e.get("size") or 0) for e in fs.ls(d, detail=True)})
            except FileNotFoundError:
                pass
        bad: dict[int, str] = {}  # shard -> what is wrong with it
        for i, s in enumerate(self.shards):
            full = join(root, s.path)
            size = sizes.get(full)
            if size is None:
                bad[i] = str(missing_shard_error(full))
            elif size != s.bytes:
                bad[i] = f"{full}: shard is corrupt (size {size} bytes, the manifest says {s.bytes})"
        if bad and not self.cfg.skip_bad_shards:
            i, first = next(iter(bad.items()))
            full = join(root, self.shards[i].path)
            if sizes.get(full) is None:
                raise missing_shard_error(full, more_bad=len(bad) - 1, skippable=True)
            more = f" (and {len(bad) - 1} more bad shards)" if len(bad) > 1 else ""
            raise ShardError(f"{first}{more}; delete it and re-run `maskgit-pipeline tokenize ... --resume`, or pass "
                             "skip_bad_shards=true to train without it")
        for msg in bad.values():
            log.warning("skipping: %s", msg)
        return bad

    # -- reading
    def _parquet(self, shard: int) -> pq.ParquetFile:
        """The open ParquetFile of ``shard``; at most ``max_open_files`` stay open (LRU)."""
        if shard in self._files:
            self._files.move_to_end(shard)
            return self._files[shard][0]
        while len(self._files) >= self.cfg.max_open_files:
            _, (_, handle) = self._files.popitem(last=False)
            handle.close()
        fs, root = url_to_fs(self.cfg.data, **self.storage_options)
        full = join(root, self.shards[shard].path)
        try:
            handle = fs.open(full, "rb")
        except FileNotFoundError as e:
            raise missing_shard_error(full, skippable=True) from e
        except OSError as e:  # opening reads no bytes: the process, permissions or the storage
            raise _storage_error(full, e) from e
        try:
            pf = pq.ParquetFile(handle)
        except Exception as e:
            handle.close()
            if isinstance(e, OSError) and e.errno in _STORAGE_ERRNOS:
                raise _storage_error(full, e) from e
            raise ShardError(f"{full}: cannot open Parquet shard ({type(e).__name__}: {e}); delete it and "
                             "re-run tokenize --resume, or pass skip_bad_shards=true") from e
        md = pf.metadata
        sizes = {md.row_group(g).num_rows for g in range(md.num_row_groups - 1)}
        if len(sizes) > 1:
            handle.close()
            raise ShardError(f"{full}: row groups of unequal size {sorted(sizes)}; rewrite it with shards.py")
        self._files[shard] = (pf, handle)
        self._rg_rows[shard] = md.row_group(0).num_rows if md.num_row_groups else 1
        self.files_opened += 1
        self.peak_open_files = max(self.peak_open_files, len(self._files))
        return pf

    def close(self) -> None:
        """Close every shard file this stream holds open (it reopens them when read again)."""
        while self._files:
            _, (_, handle) = self._files.popitem(last=False)
            handle.close()

    def _row_group(self, shard: int) -> int:
        """Rows per row group of ``shard`` (opens it the first time only)."""
        if shard not in self._rg_rows:
            self._parquet(shard)
        return self._rg_rows[shard]

    def _load_unit(self, key: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
        """(first row, labels (n,), tokens (n, n_aug, h, w)) of one row group / whole shard."""
        shard, unit = key
        s = self.shards[shard]
        if self.cfg.format == "webdataset":
            return 0, *self._read_wds(s)
        pf = self._parquet(shard)
        try:
            t = pf.read_row_group(unit, columns=["label", "tokens"])
            tokens = parquet_tokens(t, self.info)
            labels = t.column("label").to_numpy().astype(np.int64)
        except OSError as e:
            if e.errno not in _STORAGE_ERRNOS:
                raise ShardError(f"{join(self.cfg.data, s.path)}: cannot read row group {unit} ({type(e).__name__}: "
                                 f"{e}); delete it and re-run tokenize --resume, or pass skip_bad_shards=true") from e
            raise _storage_error(join(self.cfg.data, s.path), e) from e
        except Exception as e:
            raise ShardError(f"{join(self.cfg.data, s.path)}: cannot decode row group {unit} ({type(e).__name__}: "
                             f"{e}); delete it and re-run tokenize --resume, or pass skip_bad_shards=true") from e
        return unit * self._row_group(shard), labels, tokens

    def _read_wds(self, s: ShardInfo) -> tuple[np.ndarray, np.ndarray]:
        """Labels (n,) and tokens (n, n_aug, h, w) of a whole WebDataset shard, checksum-verified
        (``shards.decode_webdataset`` without the source keys, which training does not need)."""
        fs, root = url_to_fs(self.cfg.data, **self.storage_options)
        full = join(root, s.path)
        data = read_shard_bytes(fs, full, s, verify=True)
        try:
            _, labels, tokens = decode_webdataset(data, self.info, with_keys=False)
        except Exception as e:
            raise ShardError(f"{full}: cannot decode webdataset shard ({type(e).__name__}: {e}); delete it and "
                             "re-run tokenize --resume, or pass skip_bad_shards=true") from e
        if len(tokens) != s.samples or len(labels) != s.samples:
            raise ShardError(f"{full}: holds {len(tokens)} samples, the manifest says {s.samples}")
        return labels, tokens

    def _unit(self, key: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = self._load_unit(key)
        if self.label_bound:
            check_labels(value[1], self.label_bound, error=ShardError,
                         what=f"{join(self.cfg.data, self.shards[key[0]].path)}: labels",
                         fix="the shard does not match its class table: re-tokenize it from a source with valid "
                             "labels, or pass skip_bad_shards=true to train without it")
        self._cache[key] = value
        self.units_decoded += 1
        self.samples_decoded += len(value[1])
        self._cached_rows += len(value[1])
        self._unit_rows = max(self._unit_rows, len(value[1]))
        while self._cached_rows > self._cache_budget() and len(self._cache) > 1:
            self._cached_rows -= len(self._cache.popitem(last=False)[1][1])
        return value

    def _cache_budget(self) -> int:
        """Rows the unit cache may hold: every part this rank reads (one more for an epoch's turn)
        keeps two shuffle windows (the one read and the one before, at a window's turn), the indices
        one micro-step takes from it and the units at both ends, so no unit is decoded twice."""
        step = -(-self.world_size * self.cfg.batch_size // self.cfg.partitions)  # indices per part per step
        return (self.parts_per_rank + 1) * (2 * self.plan.window + step + 2 * self._unit_rows)

    # -- batches
    def batch_at(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch at the given global stream positions (B,)."""
        positions = np.asarray(positions, dtype=np.int64)
        epoch, shard, row = self.plan.locate(positions)
        sample_id = self.plan.first_id[shard] + row
        aug = (aug_index(self.cfg.seed, epoch, sample_id, self.info.n_aug) if self.cfg.augment
               else np.zeros_like(sample_id))
        n = len(positions)
        images = np.empty((n, self.info.latent_h * self.info.latent_w), np.int64)
        labels = np.empty((n,), np.int64)
        keep = np.ones((n,), bool)
        if self.cfg.format == "webdataset":
            unit = np.zeros_like(row)
        else:
            unit = row // np.array([self._row_group(int(s)) for s in shard])
        keys = sorted(set(zip(shard.tolist(), unit.tolist())))
        for key in keys:  # this batch's cached units are the most recent before any is evicted for a new one
            if key in self._cache:
                self._cache.move_to_end(key)
        for s, u in keys:
            sel = np.nonzero((shard == s) & (unit == u))[0]
            try:
                first, lab, tok = self._unit((s, u))
            except ShardError as e:
                if not self.cfg.skip_bad_shards or isinstance(e, ShardAccessError):
                    raise
                log.warning("skipping %d samples of a bad shard: %s", len(sel), e)
                keep[sel] = False
                self.skipped_samples += len(sel)
                continue
            r = row[sel] - first
            images[sel] = tok[r, aug[sel]].reshape(len(sel), -1)
            labels[sel] = lab[r]
        if not keep.any():
            raise ShardError("every sample of a batch came from bad shards; fix the dataset")
        out = {"images": images[keep], "labels": labels[keep], "index": positions[keep],
               "sample_id": sample_id[keep], "aug": aug[keep]}
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        k = wid
        while self.num_batches is None or k < self.num_batches:
            yield self.batch_at(rank_positions(self.start, k, rank=self.rank, world_size=self.world_size,
                                               batch_size=self.cfg.batch_size))
            k += nw

    def position_after(self, local_batches: int) -> int:
        """Global stream index after every rank consumed ``local_batches`` batches (the resume point)."""
        return self.start + local_batches * self.world_size * self.cfg.batch_size
