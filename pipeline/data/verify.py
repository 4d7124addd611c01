"""Check a token dataset against its manifest, and optionally against the source listing.

Manifest vs shards: every listed shard exists with the recorded size, sha256 and sample count;
keys are unique within each format and both formats (when present) hold the same keys and tokens;
token ids lie in [0, K) and labels in the class table; the counts add up (samples + errors =
images) and no key is both in a shard and in the error report.

With a source: the source, listed again, has exactly the keys of shards + error report (every
image exactly once), with the same labels.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable


from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError
from pipeline.data.shards import ShardError, join, read_manifest, read_shard, url_to_fs

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
    info = m.tokenizer
    rep.shards = len(m.shards)
    n_classes = len(m.classes)
    by_format: dict[str, dict[str, tuple[int, bytes]]] = {}
    report, checked, n_files = progress or (lambda done, total: None), 0, sum(len(m.shards_of(f)) for f in m.formats)
    for fmt in m.formats:
        seen: dict[str, tuple[int, bytes]] = {}
        for s in m.shards_of(fmt):
            report(checked, n_files)
            checked += 1
            try:
                rows = read_shard(out, s, info, verify=True)
            except ShardError as e:
                problem(str(e))
                continue
            if len(rows) and int(rows.tokens.max()) >= info.codebook_size:
                problem(f"{s.path}: token id {int(rows.tokens.max())} >= codebook size {info.codebook_size}")
            if n_classes:
                try:
                    check_labels(rows.labels, max(n_classes, max(c["index"] for c in m.classes) + 1),
                                 what=f"{s.path}: labels",
                                 fix="the manifest's class table lacks them; re-tokenize the source")
                except ConfigError as e:
                    problem(str(e))
            for k, lab, tok in zip(rows.keys, rows.labels, rows.tokens):
                if k in seen:
                    problem(f"key {k!r} appears twice in the {fmt} shards ({s.path})")
                seen[k] = (int(lab), tok.tobytes())
        by_format[fmt] = seen
        total = sum(s.samples for s in m.shards_of(fmt))
        if total != m.counts.get("samples"):
            problem(f"{fmt}: shards hold {total} samples, manifest counts say {m.counts.get('samples')}")
    report(checked, n_files)
    formats = list(by_format)
    if len(formats) == 2 and by_format[formats[0]] != by_format[formats[1]]:
        a, b = by_format[formats[0]], by_format[formats[1]]
        diff = sorted(set(a) ^ set(b))[:3] or [k for k in a if a[k] != b.get(k)][:3]
        problem(f"parquet and webdataset shards disagree (e.g. {diff})")
    keys = by_format[formats[0]] if formats else {}
    rep.samples = len(keys)

    errors = read_error_report(out, m.error_report)
    rep.errors = len(errors)
    err_keys = Counter(k for k, _ in errors)
    dup = [k for k, c in err_keys.items() if c > 1]
    if dup:
        problem(f"error report lists {len(dup)} key(s) twice, e.g. {dup[:3]}")
    both = sorted(set(err_keys) & set(keys))
    if both:
        problem(f"{len(both)} key(s) are both in a shard and in the error report, e.g. {both[:3]}")
    if m.counts.get("errors") != len(errors):
        problem(f"error report has {len(errors)} lines, manifest counts say {m.counts.get('errors')}")
    if m.counts.get("images") != len(keys) + len(errors):
        problem(f"manifest counts {m.counts.get('images')} images but shards + error report hold "
                f"{len(keys) + len(errors)}")

    if source is not None:
        from pipeline.data.sources import list_source

        lst = list_source(source, layout=layout if layout != "auto" else m.source.get("layout", "auto"),
                          split=split or m.source.get("split"),
                          label_map=label_map or m.extra.get("label_map", "sorted"), val_labels=val_labels)
        src = {it.key: it.label for it in lst.items}
        src_all = set(src) | {k for k, _ in lst.errors}
        rep.source_images = len(src_all)
        got = set(keys) | set(err_keys)
        missing, extra = sorted(src_all - got), sorted(got - src_all)
        if missing:
            problem(f"{len(missing)} source image(s) are in no shard and not in the error report, e.g. {missing[:3]}")
        if extra:
            problem(f"{len(extra)} key(s) in the dataset are not in the source listing, e.g. {extra[:3]}")
        wrong = [k for k, (lab, _) in keys.items() if k in src and src[k] != lab]
        if wrong:
            problem(f"{len(wrong)} sample(s) have labels that differ from the source's, e.g. {wrong[:3]}")
    if p:
        log.warning("verify %s: %d problem(s)", out, len(p))
    return rep
