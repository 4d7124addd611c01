"""The Inception's 1008 logits mapped to dataset labels (pipeline.evaluation.labels): with a known
permuted label map over the real 1000 ImageNet synsets, top-1 after mapping is exact and without
mapping it is ~0 (the CAS bug: raw Inception columns scored against ImageNet-1k labels)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from maskgit_core.errors import ConfigError
from pipeline.data.sources import imagenet_class_entries
from pipeline.evaluation.labels import (INCEPTION_CLASSES, imagenet1k_synsets, inception_columns,
                                        read_inception_label_map, to_dataset_logits)
from pipeline.evaluation.metrics import topk_accuracy

SYNSETS = [e["id"] for e in imagenet_class_entries()]


def _permuted_map(seed: int = 0) -> dict[str, int]:
    """Each real ImageNet-1k synset on a distinct, shuffled column of the 1008."""
    cols = np.random.default_rng(seed).choice(INCEPTION_CLASSES, size=len(SYNSETS), replace=False)
    return dict(zip(SYNSETS, (int(c) for c in cols)))


def _pbtxt(pairs, *, one_line: bool = False) -> str:
    """A label map in the layout of TF's imagenet_2012_challenge_label_map_proto.pbtxt."""
    head = "# -*- protobuffer -*-\n# LabelMap from ImageNet 2012 full data set UID to int32 target class.\n\n"
    if one_line:
        return head + "\n".join(f'entry {{ target_class: {c} target_class_string: "{s}" }}' for s, c in pairs)
    return head + "".join(f'entry {{\n  target_class: {c}\n  target_class_string: "{s}"\n}}\n' for s, c in pairs)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_order_is_the_shards_imagenet1k_order():
    assert imagenet1k_synsets() == SYNSETS
    assert len(SYNSETS) == 1000 and SYNSETS[0] == "n01440764"


def test_permuted_map_puts_logits_in_dataset_order(tmp_path):
    truth = _permuted_map()
    label_map = read_inception_label_map(_write(tmp_path, "map.pbtxt", _pbtxt(truth.items())))
    assert label_map == truth
    cols = inception_columns(label_map)
    assert cols.shape == (1000,) and cols.dtype == np.int64

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 1000, size=3000)  # dataset labels (ImageNet-1k order)
    logits = rng.normal(size=(labels.size, INCEPTION_CLASSES)).astype(np.float32)
    true_cols = np.array([truth[SYNSETS[y]] for y in labels])
    logits[np.arange(labels.size), true_cols] = 10.0  # each image's class wins at its Inception column

    mapped = to_dataset_logits(logits, cols)
    assert mapped.shape == (labels.size, 1000)
    assert topk_accuracy(mapped, labels, k=1) == 1.0
    assert topk_accuracy(mapped, labels, k=5) == 1.0
    assert topk_accuracy(logits, labels, k=1) < 0.01  # what scoring the raw columns gives


def test_one_line_entries_and_json_give_the_same_map(tmp_path):
    truth = _permuted_map(seed=2)
    one_line = read_inception_label_map(_write(tmp_path, "map1.pbtxt", _pbtxt(truth.items(), one_line=True)))
    as_json = read_inception_label_map(_write(tmp_path, "map.json", json.dumps(truth)))
    assert one_line == as_json == truth


def test_custom_label_order_picks_its_columns():
    truth = _permuted_map(seed=3)
    order = [SYNSETS[7], SYNSETS[0], SYNSETS[999]]  # a 3-class dataset, label 0 = SYNSETS[7]
    cols = inception_columns(truth, order)
    assert cols.tolist() == [truth[s] for s in order]
    logits = np.arange(2 * INCEPTION_CLASSES, dtype=np.float32).reshape(2, INCEPTION_CLASSES)
    assert to_dataset_logits(logits, cols).tolist() == [[float(c) for c in cols],
                                                       [float(c + INCEPTION_CLASSES) for c in cols]]


def _bad_files():
    pairs = list(_permuted_map(seed=4).items())
    dup_synset = pairs[:-1] + [(pairs[0][0], pairs[-1][1])]
    dup_column = pairs[:-1] + [(pairs[-1][0], pairs[0][1])]
    too_high = pairs[:-1] + [(pairs[-1][0], INCEPTION_CLASSES)]
    return [
        ("dup-synset.pbtxt", _pbtxt(dup_synset), "listed twice"),
        ("999.pbtxt", _pbtxt(pairs[:-1]), "999 synsets, expected the 1000"),
        ("col-1008.pbtxt", _pbtxt(too_high), "column 1008, outside"),
        ("dup-column.pbtxt", _pbtxt(dup_column), "both map to column"),
        ("garbage.pbtxt", "this is not a label map\n", "unexpected text"),
        ("half-entry.pbtxt", _pbtxt(pairs).replace('target_class_string: "n01440764"', ""), "exactly one"),
        ("binary.pbtxt", None, "cannot read"),
        ("broken.json", '{"n01440764": 449,', "not valid JSON"),
        ("strings.json", json.dumps({s: str(c) for s, c in pairs}), "synset -> integer column"),
        ("dup-synset.json", "{" + ", ".join(f'"{s}": {c}' for s, c in dup_synset) + "}", "listed twice"),
    ]


@pytest.mark.parametrize("name,text,problem", _bad_files(), ids=[b[0] for b in _bad_files()])
def test_bad_label_map_files_name_the_file_and_the_problem(tmp_path, name, text, problem):
    p = tmp_path / name
    if text is None:
        p.write_bytes(b"\xff\xfe\x00entry")
    else:
        p.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(p))) as err:
        read_inception_label_map(p)
    assert problem in str(err.value)


def test_missing_label_map_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.pbtxt: no Inception label map here"):
        read_inception_label_map(tmp_path / "absent.pbtxt")


def test_synsets_outside_the_map_and_bad_logits_are_refused():
    truth = _permuted_map()
    with pytest.raises(ConfigError, match=r"1 of the dataset's 2 synsets are not in the Inception label map.*n99999999"):
        inception_columns(truth, [SYNSETS[0], "n99999999"])
    with pytest.raises(ConfigError, match="more than once"):
        inception_columns(truth, [SYNSETS[0], SYNSETS[0]])
    with pytest.raises(ConfigError, match="empty"):
        inception_columns(truth, [])
    cols = inception_columns(truth)
    with pytest.raises(ConfigError, match=r"must be \(N, 1008\), got \(4, 1000\)"):
        to_dataset_logits(np.zeros((4, 1000)), cols)
    with pytest.raises(ConfigError, match="inception_columns"):
        to_dataset_logits(np.zeros((4, INCEPTION_CLASSES)), np.array([0.5, 1.0]))
