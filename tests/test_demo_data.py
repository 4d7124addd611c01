"""The built-in demo dataset, the demo's settings, stage runner and report."""
from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.demo.data import BAD_FILES, PHOTOS, DemoDataConfig, load_photo, make_demo_dataset
from tokenizer.preprocess import DecodeError, decode_rgb


SMALL = dict(num_classes=10, train_per_class=3, val_per_class=2)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_imagenet_layout_with_jpeg_files_and_class_map(tmp_path):
    ds = make_demo_dataset(tmp_path / "d", DemoDataConfig(**SMALL, image_size=48))
    classes = json.loads((tmp_path / "d" / "classes.json").read_text())
    assert [c["index"] for c in classes] == list(range(10))
    # The class index is the position of the folder name in sorted order, as with ImageNet synsets.
    assert sorted(p.name for p in ds.train_dir.iterdir()) == [c["id"] for c in classes]
    assert sorted(p.name for p in ds.val_dir.iterdir()) == [c["id"] for c in classes]
    lines = (tmp_path / "d" / "classes.txt").read_text().splitlines()
    assert lines == [f"{c['id']} {c['name']}" for c in classes]
    for c in classes:
        train = sorted((ds.train_dir / c["id"]).iterdir())
        val = sorted((ds.val_dir / c["id"]).iterdir())
        assert len(train) == 3 and len(val) == 2
        for f in train + val:
            assert f.suffix == ".JPEG" and f.name.startswith(c["id"] + "_")
            assert f.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG bytes, not just the name
            with Image.open(f) as im:
                assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 48)
    assert ds.num_train == 30 and ds.num_val == 20 and ds.bad_files == []


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _tree_digest(make_demo_dataset(tmp_path / "a", DemoDataConfig(**SMALL)).root)
    b = _tree_digest(make_demo_dataset(tmp_path / "b", DemoDataConfig(**SMALL)).root)
    c = _tree_digest(make_demo_dataset(tmp_path / "c", DemoDataConfig(**SMALL, seed=1)).root)
    assert a == b
    jpegs = [k for k in a if k.endswith(".JPEG")]
    assert sum(a[k] != c[k] for k in jpegs) == len(jpegs)


def test_classes_are_distinct_photos():
    # skimage.data.cat() is chelsea(): one photo must not make two classes.
    digests = {hashlib.sha256(load_photo(n).tobytes()).hexdigest() for n in PHOTOS}
    assert len(digests) == len(PHOTOS) == 16
    for n in PHOTOS:
        a = load_photo(n)
        assert a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8 and min(a.shape[:2]) >= 150


def test_crops_differ_within_a_class_and_follow_their_photo(tmp_path):
    ds = make_demo_dataset(tmp_path / "d", DemoDataConfig(num_classes=10, train_per_class=20, val_per_class=0))
    means = {}
    for c in ds.classes:
        arrs = [np.asarray(Image.open(f), dtype=np.float32) for f in sorted((ds.train_dir / c["id"]).iterdir())]
        assert len({a.tobytes() for a in arrs}) == 20  # random positions/scales, no duplicates
        means[c["name"]] = np.mean([a.mean(axis=(0, 1)) for a in arrs], axis=0)
    # Crops carry their photo's colour: the Hubble field is dark, the logo (on white) is bright.
    assert means["hubble_deep_field"].mean() < 80 < means["logo"].mean()


def test_bad_files_are_what_their_names_say(tmp_path):
    ds = make_demo_dataset(tmp_path / "d", DemoDataConfig(**SMALL, with_bad_files=True))
    listing = json.loads((tmp_path / "d" / "bad_files.json").read_text())
    assert sorted(Path(p).name for p in listing) == sorted(BAD_FILES) and sorted(listing) == sorted(ds.bad_files)
    for rel, info in listing.items():
        data = (ds.root / rel).read_bytes()
        if info["expect"] == "error":
            with pytest.raises(DecodeError):
                decode_rgb(data)
        else:
            assert decode_rgb(data).mode == "RGB"
    folder = ds.train_dir / "c00_astronaut"
    assert (folder / "c00_astronaut_bad_empty.JPEG").stat().st_size == 0
    with Image.open(folder / "c00_astronaut_bad_cmyk.JPEG") as im:
        assert (im.format, im.mode) == ("JPEG", "CMYK")
    with Image.open(folder / "c00_astronaut_bad_gray.JPEG") as im:
        assert (im.format, im.mode) == ("JPEG", "L")
    with Image.open(folder / "c00_astronaut_bad_png.JPEG") as im:
        assert im.format == "PNG"
    with pytest.raises(DecodeError, match="truncated"):
        decode_rgb((folder / "c00_astronaut_bad_truncated.JPEG").read_bytes())


@pytest.mark.parametrize("kw, match", [(dict(num_classes=5), "num_classes must be in \\[10, 16\\]"),
                                       (dict(image_size=16), "image_size must be in \\[32, 64\\]"),
                                       (dict(min_scale=0.6, max_scale=0.5), "min_scale")])
def test_config_errors_name_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        DemoDataConfig(**kw)


def test_cli_make_demo_data(tmp_path):
    r = CliRunner().invoke(cli, ["make-demo-data", str(tmp_path / "d"), "--num-classes", "10",
                                 "--train-per-class", "2", "--val-per-class", "1", "--with-bad-files"])
    assert r.exit_code == 0, r.output
    assert "10 classes, 20 train + 10 val images, 5 bad files" in r.output
    assert len(list((tmp_path / "d" / "train").rglob("*.JPEG"))) == 25
    r = CliRunner().invoke(cli, ["make-demo-data", str(tmp_path / "e"), "--num-classes", "40"])
    assert r.exit_code == 2 and "error: num_classes must be in [10, 16]" in r.output


def test_demo_runs_its_stages_and_reports_the_missing_ones(tmp_path):
    from pipeline.demo.context import StageUnavailable
    from pipeline.demo.run import STAGES, Stage, run_demo
    from pipeline.demo.settings import DemoSettings
    from tokenizer.train import TrainConfig

    def broken(ctx):
        raise RuntimeError("boom")

    def absent(ctx):
        raise StageUnavailable("module `x` is not in this build")

    stages = STAGES[:3] + (Stage("absent", "An absent stage", absent), Stage("broken", "A broken stage", broken),
                           STAGES[5])
    settings = replace(DemoSettings.quick(), data=DemoDataConfig(**SMALL), tokenizer_preset="debug",
                       tokenizer_train=TrainConfig(steps=3, batch_size=4, val_images=8, log_every=1))
    seen: list[str] = []
    ctx, records = run_demo(tmp_path / "out", settings=settings, stages=stages, progress=seen.append)
    status = {r.name: r.status for r in records}
    assert status == {"dataset": "ok", "train_tokenizer": "ok", "reconstructions": "ok", "absent": "unavailable",
                      "broken": "failed", "train_mvtm": "skipped"}
    assert any(s.startswith("[2/6] Train the tokenizer") for s in seen)
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# MaskGIT pipeline demo (quick)")
    assert "Stage `absent` not available in this build: module `x` is not in this build" in report
    assert "RuntimeError: boom" in report and "needs 'tokens'" in report
    for rel in ("figures/data_grid.png", "figures/tokenizer_reconstructions.png", "figures/tokenizer_loss.png"):
        assert f"]({rel})" in report
        with Image.open(tmp_path / "out" / rel) as im:
            assert im.format == "PNG" and min(im.size) > 32
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rec = metrics["reconstructions"]
    assert rec["images"] == 20 and 0.0 < rec["usage"] <= 1.0 and rec["latent_grid"] == [8, 8]
    assert metrics["train_tokenizer"]["steps"] == 3
    assert metrics["settings"]["tokenizer_preset"] == "debug" and metrics["settings"]["data"]["train_per_class"] == 3
    assert [c["verdict"] for c in metrics["claims"]] == ["not measured"] * 3


@pytest.mark.parametrize("name", ["quick", "full"])
def test_demo_settings_fit_the_demo_transformer(name):
    import tokenizer
    import transformer
    from pipeline.demo.settings import DemoSettings

    s = getattr(DemoSettings, name)()
    assert s.name == name
    tok = tokenizer.preset(s.tokenizer_preset)
    tcfg = transformer.preset(s.transformer_preset)
    transformer.check_pair(tcfg, tok.codebook_size, tok.latent_size)  # raises if codebook or grid differ
    assert tok.image_size == s.data.image_size and tok.latent_size == 8
    assert tcfg.num_classes == s.data.num_classes == 16
    assert s.tokenizer_train.threads == 1 and s.tokenizer_train.max_seconds is not None
    assert 8 in s.ablation_steps  # the T of "MaskGIT (T=8)" is also a point of the schedule ablation


def test_quick_preset_is_smaller_than_full_everywhere():
    from pipeline.demo.settings import DemoSettings

    q, f = DemoSettings.quick(), DemoSettings.full()
    assert f == DemoSettings()  # the defaults are the full demo
    for k in ("train_steps", "eval_per_class", "ablation_per_class", "proxy_epochs", "cas_epochs", "timing_images"):
        assert getattr(q, k) < getattr(f, k), k
    assert q.data.train_per_class < f.data.train_per_class and q.tokenizer_train.steps < f.tokenizer_train.steps
    assert set(q.ablation_steps) < set(f.ablation_steps)


@pytest.mark.parametrize("kw,match", [(dict(train_steps=0), "train_steps=0 must be >= 1"),
                                      (dict(ablation_steps=(8, 4)), "ablation_steps must be increasing"),
                                      (dict(edit_classes=(16, 20)), r"edit_classes .* one of them in \[0, 16\)"),
                                      (dict(transformer_preset="nope"), "transformer_preset: unknown transformer"),
                                      (dict(train_lr=0.0), "train_lr > 0")])
def test_demo_settings_errors_name_the_field(kw, match):
    from maskgit_core.errors import ConfigError
    from pipeline.demo.settings import DemoSettings

    with pytest.raises(ConfigError, match=match):
        replace(DemoSettings.quick(), **kw)


def test_a_changed_setting_reaches_the_dataset_stage(tmp_path):
    from pipeline.demo.context import DemoContext
    from pipeline.demo.settings import DemoSettings
    from pipeline.demo.stages_tokenizer import stage_make_dataset

    small = dict(SMALL, train_per_class=2, val_per_class=3)
    for per_row in (2, 3):
        settings = replace(DemoSettings.quick(), data=DemoDataConfig(**small), grid_per_class=per_row)
        ctx = DemoContext(out=tmp_path / f"out{per_row}", settings=settings)
        stage_make_dataset(ctx)
        assert ctx.metrics["dataset"]["train_images"] == 10 * 2 and ctx.metrics["dataset"]["val_images"] == 10 * 3
        # one row per class, ``grid_per_class`` images per row: 32 px + 2 px padding, upscaled 3x
        with Image.open(ctx.out / "figures" / "data_grid.png") as im:
            assert im.size == (3 * (per_row * 34 + 2), 3 * (10 * 34 + 2))


def test_cli_demo_builds_the_settings_from_quick(tmp_path, monkeypatch):
    from pipeline.demo import run as demo_run
    from pipeline.demo.context import DemoContext, StageRecord
    from pipeline.demo.settings import DemoSettings

    got = []

    def fake_run_demo(out, *, settings, progress):
        got.append(settings)
        return DemoContext(out=Path(out), settings=settings), [StageRecord("dataset", "Make the dataset", "ok")]

    monkeypatch.setattr(demo_run, "run_demo", fake_run_demo)
    for args in ([], ["--quick"]):
        r = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 0, r.output
    assert got == [DemoSettings.full(), DemoSettings.quick()]
