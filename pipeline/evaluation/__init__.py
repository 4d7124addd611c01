"""Evaluation of generated images: FID, IS, k-NN precision/recall and classifier accuracy on
generated images (CAS), against a declared reference.

Feature extractor: a proxy classifier the project trains on its own real data
(``train_feature_classifier``); every result names it (``feature_extractor: proxy:<sha>``), and
its numbers are NOT comparable with published InceptionV3 FIDs. The standard FID InceptionV3 runs
when its weights file is present locally (``inception.load_inception(path)``; nothing is ever
downloaded); any object with ``name`` and ``forward(images) -> (features, logits)`` works.

Reference: real images (statistics computed on the fly) or a statistics .npz with ``mu`` and
``sigma`` (the ADM reference-batch format that 1d-tokenizer / LlamaGen use: ``mu``, ``sigma`` and
optionally ``arr_0`` images (N, H, W, 3) uint8). Statistics from another feature extractor are
refused when their dimension differs; with ``arr_0`` present the images are used instead.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .features import (ClassifierConfig, ProxyClassifier, as_float_images, extract, load_classifier,
                       save_classifier, train_feature_classifier)
from .metrics import (feature_stats, fid_from_features, frechet_distance, inception_score, precision_recall,
                      softmax, topk_accuracy)
from maskgit_core.errors import ConfigError

__all__ = ["compute_metrics", "cas_train_on_generated", "reference_stats", "save_reference", "load_reference",
           "load_image_set",
           "train_feature_classifier", "save_classifier", "load_classifier", "ProxyClassifier",
           "ClassifierConfig", "frechet_distance", "fid_from_features", "inception_score", "precision_recall",
           "topk_accuracy", "feature_stats", "extract"]

log = logging.getLogger(__name__)


def reference_stats(images, classifier: ProxyClassifier) -> dict:
    """Real images -> {"mu", "sigma", "features", "feature_name"} for ``compute_metrics``."""
    feats, _ = extract(classifier, images)
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats, "feature_name": classifier.name}


def save_reference(stats: dict, path: str | os.PathLike) -> Path:
    """Write reference statistics as .npz (mu, sigma, features, feature_name): no pickles."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, mu=stats["mu"], sigma=stats["sigma"], features=stats.get("features", np.zeros((0, 0))),
             feature_name=np.array(stats.get("feature_name", "unknown")))
    return p


def load_reference(path: str | os.PathLike) -> dict:
    """A reference .npz: ours (mu, sigma, features, feature_name) or ADM's (mu, sigma, arr_0)."""
    with np.load(path, allow_pickle=False) as z:
        keys = set(z.files)
        out: dict = {}
        if {"mu", "sigma"} <= keys:
            out["mu"], out["sigma"] = z["mu"], z["sigma"]
        if "features" in keys and z["features"].size:
            out["features"] = z["features"]
        if "feature_name" in keys:
            out["feature_name"] = str(z["feature_name"])
        if "arr_0" in keys or "images" in keys:
            out["images"] = z["arr_0" if "arr_0" in keys else "images"]
        if "labels" in keys:
            out["labels"] = z["labels"]
    if not ({"mu", "sigma"} <= set(out) or "images" in out):
        raise ConfigError(f"{path}: a reference .npz needs mu and sigma, or images in arr_0 / images; "
                          f"found {sorted(keys)}")
    return out


def load_image_set(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """All images (N, H, W, 3) uint8 and labels (or None) of an .npz (``images`` or ``arr_0``, optional
    ``labels``), a PNG/JPEG folder (sorted by name; labels from a ``labels.txt``) or a sample set, in
    memory (small sets: the proxy classifier's training). Read by ``image_sets``' readers, which
    `eval` streams instead."""
    from .image_sets import open_image_set

    s = open_image_set(str(path))
    batches = [b for u in s.units for b in s.batches(u, 4096)]
    labels = np.concatenate([lab for _, lab in batches])
    return np.concatenate([imgs for imgs, _ in batches]), (None if (labels < 0).all() else labels)


def compute_metrics(gen_images, *, classifier: ProxyClassifier, gen_labels=None, ref_images=None,
                    ref_stats: dict | None = None, k: int = 3, is_splits: int = 1) -> dict:
    """Metrics of generated images (N, 3, H, W) float [0, 1] or (N, H, W, 3) uint8.

    Reference: ``ref_images`` (real) or ``ref_stats`` (from ``reference_stats``/``load_reference``).
    Returns {fid, is_mean, is_std, precision, recall (when reference features exist), cas_top1,
    cas_top5 (when gen_labels are given), feature_extractor, n_generated, n_reference}."""
    gen = as_float_images(gen_images)
    gf, glog = extract(classifier, gen)
    if ref_images is not None:
        ref_stats = reference_stats(ref_images, classifier)
    if ref_stats is None:
        raise ConfigError("give a reference: ref_images (real images) or ref_stats (a reference .npz)")
    if "mu" not in ref_stats and "images" in ref_stats:
        ref_stats = reference_stats(ref_stats["images"], classifier)
    name = ref_stats.get("feature_name")
    if np.atleast_1d(ref_stats["mu"]).shape[0] != gf.shape[1]:
        if "images" in ref_stats:
            ref_stats = reference_stats(ref_stats["images"], classifier)
        else:
            raise ConfigError(f"reference statistics have {np.atleast_1d(ref_stats['mu']).shape[0]}-d features "
                              f"({name or 'unknown extractor'}), {classifier.name} gives {gf.shape[1]}-d; compute "
                              f"the reference with the same extractor (maskgit-pipeline eval --reference IMAGES)")
    elif name and name != classifier.name:
        log.warning("reference statistics come from %s, generated features from %s", name, classifier.name)
    mu, sigma = feature_stats(gf)
    out: dict = {"feature_extractor": classifier.name, "n_generated": int(gen.shape[0]),
                 "n_reference": int(ref_stats["features"].shape[0]) if "features" in ref_stats else None,
                 "fid": frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])}
    out["is_mean"], out["is_std"] = inception_score(softmax(glog), splits=is_splits)
    if "features" in ref_stats and ref_stats["features"].shape[0] > k and gf.shape[0] > k:
        out["precision"], out["recall"] = precision_recall(ref_stats["features"], gf, k=k)
    if gen_labels is not None:
        labels = np.asarray(gen_labels)
        out["cas_top1"] = topk_accuracy(glog, labels, 1)
        out["cas_top5"] = topk_accuracy(glog, labels, 5)
    return out


def cas_train_on_generated(gen_images, gen_labels, real_images, real_labels, *, epochs: int = 10,
                           seed: int = 0, **train_kw) -> dict:
    """The paper's Classification Accuracy Score (Ravuri & Vinyals 2019): train the proxy
    classifier on *generated* images with their conditioning labels, test it on *real* ones.
    Returns {"cas_paper_top1", "cas_paper_top5", "n_train", "n_test"}."""
    gl = np.asarray(gen_labels)
    rl = np.asarray(real_labels)
    nc = int(max(gl.max(), rl.max())) + 1
    clf = train_feature_classifier(gen_images, gl, num_classes=nc, epochs=epochs, seed=seed, **train_kw)
    _, logits = extract(clf, real_images)
    return {"cas_paper_top1": topk_accuracy(logits, rl, 1), "cas_paper_top5": topk_accuracy(logits, rl, 5),
            "n_train": int(gl.shape[0]), "n_test": int(rl.shape[0])}
