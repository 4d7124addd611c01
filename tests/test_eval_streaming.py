"""Evaluation at scale: image sets read as they are written (sample-set shards, .npz, folders, dataset
sources; local and s3://), streamed a batch at a time, features extracted resumably in process or as
Ray tasks, reference statistics from a dataset source, and the `eval` / `eval reference` commands."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from maskgit_core.errors import ConfigError
from pipeline.cli import cli
from pipeline.evaluation import compute_metrics, save_classifier, train_feature_classifier
from pipeline.evaluation.evaluate import evaluate_sets, metrics_from_features
from pipeline.evaluation.extraction import extract_set, extractor_spec
from pipeline.evaluation.image_sets import NpzImages, open_image_set
from tokenize_data import add_bad_file, make_imagenet_tree
from tokenize_fixtures import s3  # noqa: F401,F811 - the loopback S3 server fixture


def _images(n: int, seed: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Colour-coded images of 3 classes (a learnable set) with a little noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    base = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]])[labels]
    imgs = base[:, None, None, :] + rng.integers(-25, 25, size=(n, size, size, 3))
    return np.clip(imgs, 0, 255).astype(np.uint8), labels


def _write_sample_set(d, images, labels, shard_size):
    """The sample-set layout (pipeline/generate/sample_set.py): shard-NNNNN.npz + manifest.json."""
    d.mkdir(parents=True)
    shards = []
    for k, s in enumerate(range(0, len(images), shard_size)):
        e = min(len(images), s + shard_size)
        np.savez(d / f"shard-{k:05d}.npz", images=images[s:e], tokens=np.zeros((e - s, 2, 2), np.int32),
                 labels=labels[s:e], indices=np.arange(s, e))
        shards.append({"path": f"shard-{k:05d}.npz", "start": s, "stop": e})
    (d / "manifest.json").write_text(json.dumps({"format_version": 1, "num_images": len(images), "shards": shards}))


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clf")
    imgs, labels = _images(96, seed=0)
    torch.manual_seed(0)
    save_classifier(train_feature_classifier(imgs, labels, epochs=2, width=8, feature_dim=16), d / "clf")
    return d / "clf"


def _all_batches(image_set, batch_size):
    got = [b for u in image_set.units for b in image_set.batches(u, batch_size)]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got]), [len(g[0]) for g in got]


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_read_a_batch_at_a_time(tmp_path, monkeypatch, compressed):
    """An .npz array comes out in batches of the requested rows, in units, equal to the array; the
    np.savez layout is read in place, savez_compressed sequentially; labels ride along."""
    import pipeline.evaluation.image_sets as image_sets

    monkeypatch.setattr(image_sets, "NPZ_UNIT", 7)
    imgs, labels = _images(23, seed=1)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "s.npz", arr_0=imgs, labels=labels)
    s = open_image_set(str(tmp_path / "s.npz"))
    assert isinstance(s, NpzImages) and [u.count for u in s.units] == [7, 7, 7, 2]
    got, got_labels, sizes = _all_batches(s, 3)
    assert np.array_equal(got, imgs) and got_labels.tolist() == labels.tolist()
    assert max(sizes) == 3  # never more than a batch of pixels at a time
    np.savez(tmp_path / "nolab.npz", images=imgs)
    assert (_all_batches(open_image_set(str(tmp_path / "nolab.npz")), 5)[1] == -1).all()


def test_bad_npz_files_are_refused_by_name(tmp_path):
    np.savez(tmp_path / "f.npz", images=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ConfigError, match=r"f\.npz:images.*\(N, H, W, 3\) uint8"):
        open_image_set(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "o.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ConfigError, match="never done"):
        open_image_set(str(tmp_path / "o.npz"))
    imgs, _ = _images(10, seed=0)
    np.savez(tmp_path / "t.npz", images=imgs)
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(b"junk" + data[4:])
    with pytest.raises(ConfigError, match="t.npz"):
        s = open_image_set(str(tmp_path / "t.npz"))
        _all_batches(s, 4)
    (tmp_path / "x.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ConfigError, match="not an .npz"):
        open_image_set(str(tmp_path / "x.npz"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_image_set(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="--reference-size"):
        open_image_set(str(tmp_path / "empty"))


def test_sample_set_folder_unit_per_shard_and_hostile_manifest(tmp_path):
    imgs, labels = _images(10, seed=2)
    _write_sample_set(tmp_path / "set", imgs, labels, shard_size=4)
    s = open_image_set(str(tmp_path / "set"))
    assert s.kind == "sample-set" and [u.count for u in s.units] == [4, 4, 2]
    got, got_labels, _ = _all_batches(s, 3)
    assert np.array_equal(got, imgs) and got_labels.tolist() == labels.tolist()
    man = json.loads((tmp_path / "set" / "manifest.json").read_text())
    man["shards"][0]["path"] = "../../etc/passwd"
    (tmp_path / "set" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ConfigError, match="leaves the folder"):
        open_image_set(str(tmp_path / "set"))


def test_streamed_metrics_equal_the_in_memory_ones(tmp_path, clf_dir):
    """The same images through `evaluate_sets` (a sample set streamed in batches of 5) and through the
    in-memory `compute_metrics`: the same FID, IS, precision/recall and CAS."""
    from pipeline.evaluation import load_classifier

    gen, gl = _images(40, seed=3)
    real, _ = _images(60, seed=4)
    _write_sample_set(tmp_path / "gen", gen, gl, shard_size=16)
    np.savez(tmp_path / "real.npz", images=real)
    spec = extractor_spec(classifier=str(clf_dir))
    m = evaluate_sets(str(tmp_path / "gen"), str(tmp_path / "real.npz"), spec, batch_size=5, device="cpu",
                      is_splits=1)
    ref = compute_metrics(gen, classifier=load_classifier(clf_dir), gen_labels=gl, ref_images=real)
    assert m["n_generated"] == 40 and m["n_reference"] == 60
    assert m["fid"] == pytest.approx(ref["fid"], rel=1e-4, abs=1e-5)
    assert m["is_mean"] == pytest.approx(ref["is_mean"], rel=1e-5)
    assert (m["precision"], m["recall"]) == pytest.approx((ref["precision"], ref["recall"]))
    assert m["cas_top1"] == ref["cas_top1"] and m["cas_top5"] == ref["cas_top5"]


def test_extraction_resumes_from_the_work_dir_and_refuses_another_run(tmp_path, clf_dir):
    gen, gl = _images(30, seed=5)
    _write_sample_set(tmp_path / "gen", gen, gl, shard_size=10)
    s = open_image_set(str(tmp_path / "gen"))
    spec = extractor_spec(classifier=str(clf_dir))
    work = str(tmp_path / "work")
    first = extract_set(s, spec, work_dir=work, device="cpu", batch_size=4)
    (tmp_path / "work" / "unit-00001.npz").unlink()  # as if the run died before unit 1 was written
    seen = []
    again = extract_set(s, spec, work_dir=work, device="cpu", batch_size=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 3), (3, 3)]  # two units found on disk, one extracted
    assert np.array_equal(first["features"], again["features"]) and first["labels"].tolist() == gl.tolist()
    other, ol = _images(30, seed=6)
    _write_sample_set(tmp_path / "other", other, ol, shard_size=15)
    with pytest.raises(ConfigError, match=r"features of another run.*images"):
        extract_set(open_image_set(str(tmp_path / "other")), spec, work_dir=work, device="cpu")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="not empty"):
        extract_set(s, spec, work_dir=str(tmp_path / "junk"), device="cpu")
    assert (tmp_path / "junk" / "mine.txt").read_text() == "a user's file"


def test_reference_from_a_dataset_source_skips_bad_images(tmp_path, clf_dir):
    """`eval reference` on an ImageNet class-folder tree of real JPEGs, one truncated: centre crops at
    --image-size, the bad file skipped and named; `eval` then uses the statistics and the features."""
    make_imagenet_tree(tmp_path / "src", per_class=5)
    bad = add_bad_file(tmp_path / "src", "truncated")
    out = tmp_path / "ref.npz"
    r = CliRunner().invoke(cli, ["eval", "reference", str(tmp_path / "src" / "train"), "--out", str(out),
                                 "--classifier", str(clf_dir), "--image-size", "16", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "15 images, proxy:" in r.output and "1 skipped" in r.output and bad.split("/")[-1] in r.output
    with np.load(out) as z:
        assert z["features"].shape == (15, 16) and z["mu"].shape == (16,) and z["sigma"].shape == (16, 16)
        info = json.loads(str(z["info"]))
    assert info["num_images"] == 15 and info["image_size"] == 16 and info["skipped"] == 1
    gen, gl = _images(12, seed=7)
    np.savez(tmp_path / "gen.npz", images=gen, labels=gl)
    r = CliRunner().invoke(cli, ["eval", "--generated", str(tmp_path / "gen.npz"), "--reference", str(out),
                                 "--classifier", str(clf_dir), "--device", "cpu", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["n_reference"] == 15 and m["is_splits"] == 10 and "precision" in m and "cas_top1" in m
    assert m["reference_statistics"] == "from the file"


def test_adm_reference_batch_stats_used_and_images_streamed_for_pr(tmp_path, clf_dir):
    """ADM's layout (mu, sigma, arr_0): FID uses the file's mu/sigma; precision/recall the features of
    its images (streamed); statistics of another dimension with images fall back to the images."""
    from pipeline.evaluation import load_classifier
    from pipeline.evaluation.features import extract
    from pipeline.evaluation.metrics import feature_stats, frechet_distance

    gen, gl = _images(20, seed=8)
    real, _ = _images(30, seed=9)
    np.savez(tmp_path / "gen.npz", images=gen, labels=gl)
    clf = load_classifier(clf_dir)
    rf, _ = extract(clf, real)
    mu, sigma = feature_stats(rf)
    mu_file = mu + 0.5  # shifted: proves the file's statistics are the ones used
    np.savez(tmp_path / "adm.npz", arr_0=real, mu=mu_file, sigma=sigma)
    spec = extractor_spec(classifier=str(clf_dir))
    m = evaluate_sets(str(tmp_path / "gen.npz"), str(tmp_path / "adm.npz"), spec, device="cpu")
    gmu, gsig = feature_stats(extract(clf, gen)[0])
    assert m["fid"] == pytest.approx(frechet_distance(gmu, gsig, mu_file, sigma), rel=1e-4)
    assert m["reference_statistics"] == "from the file" and "precision" in m and m["n_reference"] == 30
    np.savez(tmp_path / "adm2048.npz", arr_0=real, mu=np.zeros(2048), sigma=np.eye(2048))
    m2 = evaluate_sets(str(tmp_path / "gen.npz"), str(tmp_path / "adm2048.npz"), spec, device="cpu")
    assert m2["reference_statistics"] == "computed from the file's images"
    assert m2["fid"] == pytest.approx(frechet_distance(gmu, gsig, mu, sigma), rel=1e-3)
    np.savez(tmp_path / "pfid.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # pytorch-fid layout, other extractor
    with pytest.raises(ConfigError, match="2048-d features.*same extractor"):
        evaluate_sets(str(tmp_path / "gen.npz"), str(tmp_path / "pfid.npz"), spec, device="cpu")


def test_sample_set_on_s3_is_streamed(tmp_path, clf_dir, s3):
    """A sample set and the work dir on the loopback S3 server (moto): the same features as locally."""
    import fsspec

    gen, gl = _images(12, seed=10)
    _write_sample_set(tmp_path / "gen", gen, gl, shard_size=5)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3})
    fs.mkdir("evalb")
    fs.put(str(tmp_path / "gen"), "evalb/gen", recursive=True)
    spec = extractor_spec(classifier=str(clf_dir))
    remote = extract_set(open_image_set("s3://evalb/gen"), spec, work_dir="s3://evalb/work", device="cpu")
    local = extract_set(open_image_set(str(tmp_path / "gen")), spec, device="cpu")
    assert np.array_equal(remote["features"], local["features"]) and remote["labels"].tolist() == gl.tolist()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("evalb/work")) == [
        "features.json", "unit-00000.npz", "unit-00001.npz", "unit-00002.npz"]


def test_metrics_from_features_cas_columns_and_notes():
    """CAS scores the logit columns a label map gives; without a usable map it says why."""
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 4))
    labels = np.arange(40) % 4
    perm = np.array([2, 0, 3, 1])  # label i -> logit column perm[i]
    logits = np.full((40, 6), -5.0)
    logits[np.arange(40), perm[labels]] = 5.0
    gen = {"features": feats, "logits": logits, "labels": labels, "feature_name": "t"}
    ref = {"mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
    assert metrics_from_features(gen, ref, cas_columns=perm)["cas_top1"] == 1.0
    assert metrics_from_features(gen, ref)["cas_top1"] < 0.5  # scored in the wrong order
    m = metrics_from_features(gen, ref, cas_note="not computed: no label map")
    assert "cas_top1" not in m and m["cas_note"] == "not computed: no label map"
    m = metrics_from_features({**gen, "labels": labels + 5}, ref)
    assert "cas_top1" not in m and "classes" in m["cas_note"]


@pytest.mark.integration
def test_features_as_ray_tasks_equal_in_process(tmp_path, clf_dir):
    """Units as Ray tasks on a local cluster: the same features, written to the work dir, resumable."""
    import ray

    gen, gl = _images(25, seed=11)
    _write_sample_set(tmp_path / "gen", gen, gl, shard_size=10)
    make_imagenet_tree(tmp_path / "src", per_class=3)
    spec = extractor_spec(classifier=str(clf_dir))
    local = extract_set(open_image_set(str(tmp_path / "gen")), spec, device="cpu")
    src_local = extract_set(open_image_set(str(tmp_path / "src" / "train"), source_size=16), spec, device="cpu")
    with pytest.raises(ConfigError, match="needs --work-dir"):
        extract_set(open_image_set(str(tmp_path / "gen")), spec, ray_address="local")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = extract_set(open_image_set(str(tmp_path / "gen")), spec, ray_address="local",
                             work_dir=str(tmp_path / "w1"))
        src_ray = extract_set(open_image_set(str(tmp_path / "src" / "train"), source_size=16), spec,
                              ray_address="local", work_dir=str(tmp_path / "w2"))
    finally:
        ray.shutdown()
    assert np.allclose(on_ray["features"], local["features"], atol=1e-5)
    assert on_ray["labels"].tolist() == gl.tolist()
    assert np.allclose(src_ray["features"], src_local["features"], atol=1e-5)
    assert src_ray["labels"].tolist() == src_local["labels"].tolist()
    assert sorted(p.name for p in (tmp_path / "w1").iterdir()) == [
        "features.json", "unit-00000.npz", "unit-00001.npz", "unit-00002.npz"]


def test_cli_cas_with_the_inception_needs_its_label_map(tmp_path):
    """`eval --inception`: without a label map CAS is not computed and the output says why; with the
    label map (pbtxt) CAS scores the columns of the dataset's labels, as computed by hand here."""
    from pipeline.evaluation.inception import FIDInceptionV3, load_inception
    from pipeline.evaluation.labels import imagenet1k_synsets
    from pipeline.evaluation.metrics import topk_accuracy

    torch.manual_seed(0)
    torch.save(FIDInceptionV3().state_dict(), tmp_path / "inc.pth")
    cols = 1 + np.random.default_rng(0).permutation(1000)  # synset of label i sits at column cols[i]
    (tmp_path / "map.pbtxt").write_text("".join(
        f'entry {{\n  target_class: {c}\n  target_class_string: "{s}"\n}}\n'
        for s, c in zip(imagenet1k_synsets(), cols)))
    gen, _ = _images(6, seed=12, size=32)
    gl = np.array([0, 1, 2, 500, 998, 999])
    np.savez(tmp_path / "gen.npz", images=gen, labels=gl)
    np.savez(tmp_path / "real.npz", images=_images(6, seed=13, size=32)[0])
    base = ["eval", "--generated", str(tmp_path / "gen.npz"), "--reference", str(tmp_path / "real.npz"),
            "--inception", str(tmp_path / "inc.pth"), "--device", "cpu", "--is-splits", "2"]
    r = CliRunner().invoke(cli, base + ["--json", str(tmp_path / "a.json")])
    assert r.exit_code == 0, r.output
    a = json.loads((tmp_path / "a.json").read_text())
    assert "cas_top1" not in a and "--inception-label-map" in a["cas_note"] and a["is_splits"] == 2
    r = CliRunner().invoke(cli, base + ["--inception-label-map", str(tmp_path / "map.pbtxt"),
                                        "--json", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    b = json.loads((tmp_path / "b.json").read_text())
    with torch.no_grad():
        _, logits = load_inception(tmp_path / "inc.pth")(torch.from_numpy(gen).permute(0, 3, 1, 2).float() / 255)
    expect = topk_accuracy(logits.numpy()[:, cols], gl, 5)
    assert b["cas_top5"] == pytest.approx(expect) and "cas_note" not in b
    assert b["fid"] == pytest.approx(a["fid"]) and b["feature_extractor"].startswith("inception-v3-fid:")


def test_reference_from_tar_of_tars_equals_the_folder(tmp_path, clf_dir):
    """The original tar-of-tars, read in place, gives the same reference features as the folder tree."""
    import io
    import tarfile

    from pipeline.evaluation.evaluate import build_reference
    from tokenize_data import WNIDS

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    make_imagenet_tree(tmp_path / "src", per_class=3)
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in WNIDS:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((tmp_path / "src" / "train" / wnid).iterdir()):
                    add(inner, f.name, f.read_bytes())
            add(outer, f"{wnid}.tar", buf.getvalue())
    spec = extractor_spec(classifier=str(clf_dir))
    a = build_reference(open_image_set(str(tmp_path / "src" / "train"), source_size=16), spec, tmp_path / "a.npz",
                        device="cpu")
    b = build_reference(open_image_set(str(tmp_path / "ILSVRC2012_img_train.tar"), source_size=16), spec,
                        tmp_path / "b.npz", device="cpu")
    assert a["kind"] == b["kind"] == "source" and a["num_images"] == b["num_images"] == 9
    with np.load(tmp_path / "a.npz") as za, np.load(tmp_path / "b.npz") as zb:
        assert np.array_equal(za["features"], zb["features"]) and np.allclose(za["mu"], zb["mu"])
