"""Check a token dataset against its manifest, and optionally against the source listing.

Manifest vs shards: every listed shard exists with the recorded size, sha256 and sample count;
keys are unique within each format and both formats (when present) hold the same keys and tokens;
token ids lie in [0, K) and labels in the class table; the counts add up (samples + errors =
images) and no key is both in a shard and in the error report.

With a source: the source, listed again, has exactly the keys of shards + error report (every
image exactly once), with the same labels.

Memory is bounded by one shard: shards are read one at a time; keys are checked unique through
each shard's sorted key range (units are consecutive runs of the sorted listing, so ranges do not
overlap; only shards whose ranges do overlap have their keys, not tokens, compared in a second
pass); the two formats are compared unit by unit through a digest of (keys, labels, tokens).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable


from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError
from pipeline.data.shards import Manifest, ShardError, ShardInfo, join, read_manifest, read_shard, url_to_fs

__all__ = ["VerifyReport", "verify_dataset", "read_error_report"]

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    """The outcome: ``ok`` when ``problems`` is empty."""

    out: str
    shards: int = 0
    samples: int = 0
    errors: int = 0
    source_images: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "ok": self.ok, "shards": self.shards, "samples": self.samples,
                "errors": self.errors, "source_images": self.source_images, "problems": self.problems}


def read_error_report(out: str, path: str | None) -> list[tuple[str, str]]:
    """(key, reason) lines of the JSONL error report."""
    if not path:
        return []
    fs, root = url_to_fs(out)
    full = join(root, path)
    if not fs.exists(full):
        raise ShardError(f"{full}: error report named in the manifest is missing; rerun tokenize --resume")
    return [(d["key"], d["reason"]) for d in map(json.loads, fs.cat_file(full).decode().splitlines()) if d]


@dataclass
class _Pass:
    """What the shard pass carries from shard to shard: O(shards), never tokens."""

    problem: Callable[[str], None]
    err_keys: Counter
    src: dict[str, int] | None = None
    src_errors: set[str] = field(default_factory=set)  # keys the source listing itself could not use
    unseen: set[str] | None = None  # source keys not found yet
    digests: dict[str, dict[int, tuple[str, str]]] = field(default_factory=dict)  # fmt -> unit -> (digest, path)
    ranges: dict[str, list[tuple[str, str, ShardInfo]]] = field(default_factory=dict)  # fmt -> (min, max, shard)
    samples: int = 0
    both: list[str] = field(default_factory=list)
    n_both: int = 0
    extra: list[str] = field(default_factory=list)
    n_extra: int = 0
    wrong: list[str] = field(default_factory=list)
    n_wrong: int = 0


def _digest(keys: list[str], labels, tokens) -> str:
    h = hashlib.sha256("\0".join(keys).encode())
    h.update(labels.astype("<i8").tobytes())
    h.update(memoryview(tokens if tokens.flags.c_contiguous else tokens.copy()).cast("B"))
    return h.hexdigest()


def _check_shard(out: str, m: Manifest, s: ShardInfo, fmt: str, first: bool, st: _Pass) -> None:
    """Read one shard and check it; only its key range and digest are kept."""
    info, n_classes = m.tokenizer, len(m.classes)
    try:
        rows = read_shard(out, s, info, verify=True)
    except ShardError as e:
        st.problem(str(e))
        return
    if len(rows) and int(rows.tokens.max()) >= info.codebook_size:
        st.problem(f"{s.path}: token id {int(rows.tokens.max())} >= codebook size {info.codebook_size}")
    if n_classes:
        try:
            check_labels(rows.labels, max(n_classes, max(c["index"] for c in m.classes) + 1),
                         what=f"{s.path}: labels", fix="the manifest's class table lacks them; re-tokenize the source")
        except ConfigError as e:
            st.problem(str(e))
    keys = sorted(rows.keys)
    for a, b in zip(keys, keys[1:]):
        if a == b:
            st.problem(f"key {a!r} appears twice in the {fmt} shards ({s.path})")
    if keys:
        st.ranges.setdefault(fmt, []).append((keys[0], keys[-1], s))
    st.digests.setdefault(fmt, {})[s.unit] = (_digest(list(rows.keys), rows.labels, rows.tokens), s.path)
    if first:
        st.samples += len(rows.keys)
        _check_keys_of_shard(rows.keys, rows.labels, st)


def _check_keys_of_shard(keys: list[str], labels, st: _Pass) -> None:
    """Error report and source checks of one shard's keys (first format only)."""
    for k, lab in zip(keys, labels):
        if k in st.err_keys:
            st.n_both += 1
            if len(st.both) < 3:
                st.both.append(k)
        if st.src is None:
            continue
        if k not in st.src:
            st.n_extra += 1
            if len(st.extra) < 3:
                st.extra.append(k)
        elif st.src[k] != int(lab):
            st.n_wrong += 1
            if len(st.wrong) < 3:
                st.wrong.append(k)
        st.unseen.discard(k)


def _check_ranges(out: str, m: Manifest, fmt: str, st: _Pass) -> None:
    """Keys unique across shards: sorted key ranges that do not overlap prove it; shards whose
    ranges overlap have their keys (only) compared."""
    ranges = sorted(st.ranges.get(fmt, []), key=lambda r: (r[0], r[1]))
    overlap: dict[int, ShardInfo] = {}
    hi, hi_shard = None, None
    for lo, top, s in ranges:
        if hi is not None and lo <= hi:
            overlap[hi_shard.unit], overlap[s.unit] = hi_shard, s
        if hi is None or top > hi:
            hi, hi_shard = top, s
    if not overlap:
        return
    where: dict[str, str] = {}
    for s in sorted(overlap.values(), key=lambda s: s.unit):
        try:
            keys = set(read_shard(out, s, m.tokenizer, verify=False).keys)
        except ShardError:
            continue  # already reported by the shard pass
        for k in keys:
            if k in where:
                st.problem(f"key {k!r} appears twice in the {fmt} shards ({where[k]} and {s.path})")
            where[k] = s.path


def verify_dataset(out: str, *, source: str | None = None, layout: str = "auto", split: str | None = None,
                   label_map: str | None = None, val_labels: str | None = None, max_problems: int = 50,
                   progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Verify ``out`` (see the module docstring); problems are collected, not raised.
    ``progress(done, total)`` is called with shard files checked (all formats) after each one."""
    rep = VerifyReport(out)
    p = rep.problems

    def problem(msg: str) -> None:
        if len(p) < max_problems:
            p.append(msg)

    m = read_manifest(out)
    rep.shards = len(m.shards)
    errors = read_error_report(out, m.error_report)
    st = _Pass(problem=problem, err_keys=Counter(k for k, _ in errors))
    if source is not None:
        from pipeline.data.sources import list_source

        lst = list_source(source, layout=layout if layout != "auto" else m.source.get("layout", "auto"),
                          split=split or m.source.get("split"),
                          label_map=label_map or m.extra.get("label_map", "sorted"), val_labels=val_labels)
        st.src = {it.key: it.label for it in lst.items}
        st.src_errors = {k for k, _ in lst.errors}
        st.unseen = set(st.src) | st.src_errors
        rep.source_images = len(st.unseen)
    report, checked, n_files = progress or (lambda done, total: None), 0, sum(len(m.shards_of(f)) for f in m.formats)
    for i, fmt in enumerate(m.formats):
        for s in m.shards_of(fmt):
            report(checked, n_files)
            checked += 1
            _check_shard(out, m, s, fmt, i == 0, st)
        _check_ranges(out, m, fmt, st)
        total = sum(s.samples for s in m.shards_of(fmt))
        if total != m.counts.get("samples"):
            problem(f"{fmt}: shards hold {total} samples, manifest counts say {m.counts.get('samples')}")
    report(checked, n_files)
    _compare_formats(st, problem)
    rep.samples = st.samples
    rep.errors = len(errors)
    _check_errors(m, st, len(errors), problem)
    if source is not None:
        _check_source(st, problem)
    if p:
        log.warning("verify %s: %d problem(s)", out, len(p))
    return rep


def _compare_formats(st: _Pass, problem: Callable[[str], None]) -> None:
    """Unit i of both formats holds the same rows: compare their digests."""
    if len(st.digests) != 2:
        return
    (fa, a), (fb, b) = st.digests.items()
    bad = [u for u in sorted(set(a) | set(b)) if a.get(u, (None,))[0] != b.get(u, (None,))[0]]
    if bad:
        shown = [f"{a[u][1] if u in a else '(none)'} vs {b[u][1] if u in b else '(none)'}" for u in bad[:3]]
        problem(f"{fa} and {fb} shards disagree in {len(bad)} unit(s) (keys, labels or tokens), e.g. {shown}; "
                "re-tokenize those units")


def _check_errors(m: Manifest, st: _Pass, n_errors: int, problem: Callable[[str], None]) -> None:
    dup = [k for k, c in st.err_keys.items() if c > 1]
    if dup:
        problem(f"error report lists {len(dup)} key(s) twice, e.g. {dup[:3]}")
    if st.n_both:
        problem(f"{st.n_both} key(s) are both in a shard and in the error report, e.g. {st.both}")
    if m.counts.get("errors") != n_errors:
        problem(f"error report has {n_errors} lines, manifest counts say {m.counts.get('errors')}")
    if m.counts.get("images") != st.samples + n_errors:
        problem(f"manifest counts {m.counts.get('images')} images but shards + error report hold "
                f"{st.samples + n_errors}")


def _check_source(st: _Pass, problem: Callable[[str], None]) -> None:
    err_extra = sorted(k for k in st.err_keys if k not in st.src and k not in st.src_errors)
    missing = sorted(st.unseen - set(st.err_keys))
    if missing:
        problem(f"{len(missing)} source image(s) are in no shard and not in the error report, e.g. {missing[:3]}")
    n_extra = st.n_extra + len(err_extra)
    if n_extra:
        problem(f"{n_extra} key(s) in the dataset are not in the source listing, e.g. {(st.extra + err_extra)[:3]}")
    if st.n_wrong:
        problem(f"{st.n_wrong} sample(s) have labels that differ from the source's, e.g. {st.wrong}")
