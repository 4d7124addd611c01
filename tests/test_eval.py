"""Metric math against independent references and constructed sets; the proxy classifier and
compute_metrics end to end on small synthetic image sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from pipeline.evaluation import (cas_train_on_generated, compute_metrics, load_classifier, load_reference,
                                 reference_stats,
                                 save_classifier, save_reference, train_feature_classifier)
from pipeline.evaluation.metrics import (fid_from_features, frechet_distance, inception_score, precision_recall,
                                         topk_accuracy)
from pipeline.generate.imageio import to_uint8



def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


def test_fid_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    expected = 1.0 + 0.0 + 4.0 + ((1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 4) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)


def test_fid_general_gaussians_against_scipy_eigh_route():
    rng = np.random.default_rng(0)
    d = 6
    s1, s2 = _spd(rng, d), _spd(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # independent route: tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), via symmetric eigendecompositions
    w, v = linalg.eigh(s1)
    r1 = (v * np.sqrt(w)) @ v.T
    m = r1 @ s2 @ r1
    tr_sqrt = np.sqrt(np.clip(linalg.eigh(m, eigvals_only=True), 0, None)).sum()
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(mu1, s1, mu2[:3], s2[:3, :3])


def test_fid_from_samples_of_known_gaussians():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2))
    y = rng.normal(size=(20000, 2)) * 2.0 + np.array([3.0, 0.0])
    # |mu|^2 = 9; covariances I and 4I: sum (1 - 2)^2 over 2 dims = 2 -> 11
    assert fid_from_features(x, y) == pytest.approx(11.0, rel=0.03)


def test_inception_score_known_distributions():
    c = 5
    assert inception_score(np.eye(c)[np.arange(100) % c])[0] == pytest.approx(c)  # confident and diverse
    assert inception_score(np.tile(np.eye(c)[2], (50, 1)))[0] == pytest.approx(1.0)  # one class only
    assert inception_score(np.full((50, c), 1.0 / c))[0] == pytest.approx(1.0)  # not confident
    p = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    # p(y) = (.25, .5, .25); KL of each row = .5 ln 2 + .5 ln 1 = .5 ln 2 -> IS = sqrt(2)
    assert inception_score(p)[0] == pytest.approx(np.sqrt(2.0))
    mean, std = inception_score(np.eye(c)[np.arange(100) % c], splits=4)
    assert std >= 0 and mean == pytest.approx(c)


def test_precision_recall_constructed_sets():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 4))
    b = rng.normal(size=(200, 4)) + 50.0
    real = np.concatenate([a, b])
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0, k=3) == (0.0, 0.0)
    # mode dropping: generated covers one of two real modes -> precision 1, recall 1/2
    p, r = precision_recall(real, a[:100] + 0.0, k=3)
    assert p == 1.0 and r == pytest.approx(0.5, abs=0.05)


def test_topk_accuracy():
    lg = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    assert topk_accuracy(lg, np.array([1, 1, 2]), 1) == pytest.approx(2 / 3)
    assert topk_accuracy(lg, np.array([1, 1, 0]), 2) == pytest.approx(2 / 3)
    assert topk_accuracy(lg, np.array([2, 2, 0]), 5) == 1.0


def _colour_set(rng, n, classes=3, size=16):
    """Class c: an image whose channel c is bright; easy for a classifier, distinct features."""
    labels = np.arange(n) % classes
    x = rng.random((n, 3, size, size)).astype(np.float32) * 0.3
    x[np.arange(n), labels] += 0.6
    return torch.from_numpy(x), labels


def test_proxy_classifier_and_compute_metrics(tmp_path):
    rng = np.random.default_rng(3)
    real, labels = _colour_set(rng, 240)
    clf = train_feature_classifier(real, labels, epochs=4, batch_size=32, width=8, feature_dim=16)
    gen, glab = _colour_set(rng, 120)
    good = compute_metrics(gen, classifier=clf, gen_labels=glab, ref_images=real)
    assert good["feature_extractor"].startswith("proxy:")
    assert good["cas_top1"] > 0.9
    assert good["precision"] > 0.5 and good["recall"] > 0.5
    one_class = compute_metrics(gen[glab == 0], classifier=clf, ref_images=real)
    assert good["is_mean"] > one_class["is_mean"] >= 1.0  # diverse classes score higher than one class
    bad = compute_metrics(gen.flip(1).clamp(0, 1) * 0.2, classifier=clf, gen_labels=glab, ref_images=real)
    assert bad["fid"] > good["fid"]
    assert compute_metrics(gen, classifier=clf, gen_labels=(glab + 1) % 3, ref_images=real)["cas_top1"] < 0.1
    # round trips: classifier checkpoint and reference statistics
    again = load_classifier(save_classifier(clf, tmp_path / "clf"))
    assert again.name == clf.name
    ref = load_reference(save_reference(reference_stats(real, clf), tmp_path / "ref.npz"))
    from_stats = compute_metrics(gen, classifier=again, ref_stats=ref)
    assert from_stats["fid"] == pytest.approx(good["fid"], rel=1e-6)
    # ADM-format reference from another extractor (2048-d) with its images: the images are used
    np.savez(tmp_path / "adm.npz", mu=np.zeros(2048), sigma=np.eye(2048)[:4, :4] * 0 + np.eye(4),
             arr_0=to_uint8(real))
    adm = compute_metrics(gen, classifier=clf, ref_stats=load_reference(tmp_path / "adm.npz"))
    assert adm["fid"] == pytest.approx(good["fid"], rel=0.05)
    np.savez(tmp_path / "stats_only.npz", mu=np.zeros(2048), sigma=np.eye(4))
    with pytest.raises(ValueError, match="same extractor"):
        compute_metrics(gen, classifier=clf, ref_stats=load_reference(tmp_path / "stats_only.npz"))


def test_cli_eval_trains_proxy_and_reports(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    rng = np.random.default_rng(5)
    real, labels = _colour_set(rng, 120)
    gen, glab = _colour_set(rng, 60)
    np.savez(tmp_path / "ref.npz", arr_0=to_uint8(real), labels=labels)
    np.savez(tmp_path / "gen.npz", images=to_uint8(gen), labels=glab)
    r = CliRunner().invoke(cli, ["eval", "--generated", str(tmp_path / "gen.npz"), "--reference",
                                 str(tmp_path / "ref.npz"), "--classifier", str(tmp_path / "clf"),
                                 "--train-classifier", "--epochs", "3", "--json", str(tmp_path / "m.json"),
                                 "--save-reference", str(tmp_path / "stats.npz")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    import json

    m = json.loads((tmp_path / "m.json").read_text())
    assert m["feature_extractor"].startswith("proxy:") and "proxy" in r.output
    assert {"fid", "is_mean", "precision", "recall", "cas_top1", "cas_top5"} <= set(m)
    # the saved statistics give the same FID without the images
    r = CliRunner().invoke(cli, ["eval", "--generated", str(tmp_path / "gen.npz"), "--reference",
                                 str(tmp_path / "stats.npz"), "--classifier", str(tmp_path / "clf")])
    assert r.exit_code == 0, r.output
    assert f"fid: {m['fid']:.4f}" in r.output


def test_paper_cas_trains_on_generated_tests_on_real():
    rng = np.random.default_rng(6)
    gen, glab = _colour_set(rng, 150)
    real, rlab = _colour_set(rng, 60)
    good = cas_train_on_generated(gen, glab, real, rlab, epochs=3, batch_size=32, width=8, feature_dim=16)
    assert good["cas_paper_top1"] > 0.9 and good["n_train"] == 150
    shuffled = cas_train_on_generated(gen, (glab + 1) % 3, real, rlab, epochs=3, batch_size=32, width=8,
                                      feature_dim=16)  # generated images carry the wrong class
    assert shuffled["cas_paper_top1"] < 0.1


def test_inception_loads_only_a_local_state_dict(tmp_path):
    from pipeline.evaluation.inception import FIDInceptionV3, load_inception

    torch.manual_seed(0)
    net = FIDInceptionV3()
    n_params = sum(p.numel() for p in net.parameters())
    assert 23_000_000 < n_params < 24_500_000  # InceptionV3 with a 1008-way fc: ~23.9M
    state = net.state_dict()
    torch.save(state, tmp_path / "pt_inception.pth")
    model = load_inception(tmp_path / "pt_inception.pth")
    assert model.name.startswith("inception-v3-fid:")
    with torch.no_grad():
        feats, logits = model(torch.rand(1, 3, 32, 32))
    assert feats.shape == (1, 2048) and logits.shape == (1, 1008) and bool((feats >= 0).all())
    del state["fc.bias"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="fc.bias"):
        load_inception(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_inception(tmp_path / "absent.pth")


def test_inception_weights_without_batchnorm_counters_load(tmp_path):
    """BatchNorm's batch counter is unused in eval (torch's own loader lets a file omit it); a weights
    file saved without it is still the model, with the same outputs."""
    from pipeline.evaluation.inception import FIDInceptionV3, load_inception

    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "no-counters.pth")
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_inception(tmp_path / "no-counters.pth")(images), net(images), atol=0, rtol=0)


def test_cli_eval_needs_one_extractor(tmp_path):
    from click.testing import CliRunner

    from pipeline.cli import cli

    np.savez(tmp_path / "g.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    g = str(tmp_path / "g.npz")
    r = CliRunner().invoke(cli, ["eval", "--generated", g, "--reference", g])
    assert r.exit_code == 2 and "exactly one feature extractor" in r.output
