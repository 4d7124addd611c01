"""The paper-scale evaluation: FID / IS / precision-recall / CAS of an image set (a sharded sample
set, an .npz, a folder) against a reference, features streamed (``extraction``), and the reference
statistics of a dataset source (``build_reference``).

Conventions (each checked against a reference implementation in tests/test_eval_reference_impls.py):

- FID: Fréchet distance of Gaussians fitted to the pool features (unbiased covariance), as
  pytorch-fid's ``calculate_frechet_distance``.
- IS: softmax of the Inception's 1008 logits *without* the fc bias (the TF reference code and
  torch-fidelity's ``logits_unbiased``), 10 splits after a seeded shuffle (torch-fidelity's
  ``isc_features_to_metric``: RandomState(2020)); the proxy classifier's logits as they are.
- Precision / recall: k = 3 nearest neighbours on the pool features, every generated image against
  every reference image (torch-fidelity's ``prc_features_to_metric``).
- CAS: top-1 / top-5 of the feature network's classes against the labels the images were generated
  for; with the Inception only through a label map from its 1008 outputs to the ImageNet-1k order
  (``labels.py``), otherwise not computed and the reason is given.
"""
from __future__ import annotations

import io
import json
import logging
import os
from typing import Any, Callable

import numpy as np

from maskgit_core.checks import resolve_device
from maskgit_core.errors import ConfigError
from pipeline.data.storage import put_bytes_atomic, url_to_fs
from pipeline.evaluation.extraction import extract_set
from pipeline.evaluation.image_sets import ImageSet, NpzImages, npz_keys, open_image_set
from pipeline.evaluation.metrics import (feature_stats, frechet_distance, inception_score, precision_recall,
                                         softmax, topk_accuracy)

__all__ = ["build_reference", "read_reference", "evaluate_sets", "metrics_from_features", "IS_SHUFFLE_SEED",
           "IS_SPLITS"]

log = logging.getLogger(__name__)

IS_SPLITS = 10
IS_SHUFFLE_SEED = 2020


def build_reference(image_set: ImageSet, ext_spec: dict, out: str | os.PathLike, *, work_dir: str | None = None,
                    ray_address: str | None = None, batch_size: int = 64, device: str = "auto",
                    keep_features: bool = True, progress: Callable[[int, int], None] | None = None) -> dict:
    """Reference statistics of the set's images -> ``out`` (.npz: mu, sigma (float64), features
    (float32, for precision/recall; omitted with ``keep_features=False``), feature_name, num_images,
    source, skipped). Returns what was written (without the arrays) as a dict."""
    got = extract_set(image_set, ext_spec, work_dir=work_dir, ray_address=ray_address, batch_size=batch_size,
                      device=device, progress=progress)
    mu, sigma = feature_stats(got["features"])
    info = {"feature_name": got["feature_name"], "num_images": int(got["features"].shape[0]),
            "source": image_set.uri, "kind": image_set.kind,
            "image_size": getattr(image_set, "image_size", None), "skipped": len(got["skipped"]),
            "skipped_first": [list(s) for s in got["skipped"][:20]]}
    _write_reference(out, mu, sigma, got["features"] if keep_features else None, got["feature_name"], info)
    return info


def _write_reference(out: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, features: np.ndarray | None,
                     feature_name: str, info: dict) -> None:
    """The statistics .npz (atomic; local or s3://): mu, sigma, [features float32], feature_name, info."""
    arrays = {"mu": mu, "sigma": sigma, "feature_name": np.array(feature_name), "info": np.array(json.dumps(info))}
    if features is not None:
        arrays["features"] = features.astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    fs, path = url_to_fs(str(out))
    put_bytes_atomic(fs, path, buf.getvalue())


def read_reference(path: str | os.PathLike) -> dict[str, Any]:
    """A statistics .npz without its images: ``mu``/``sigma`` (pytorch-fid's layout, ADM's reference
    batches, ours), ``features`` when present (ours), ``feature_name``, and ``has_images`` when it
    holds ``arr_0``/``images`` (ADM's batches: the images are then streamed for precision/recall)."""
    fs, p = url_to_fs(str(path))
    with fs.open(p, "rb") as f:
        data = f.read() if fs.size(p) < (64 << 20) else None
    src = io.BytesIO(data) if data is not None else fs.open(p, "rb")
    try:
        with np.load(src, allow_pickle=False) as z:
            keys = set(z.files)
            out: dict[str, Any] = {"path": str(path), "has_images": bool(keys & {"arr_0", "images"})}
            if {"mu", "sigma"} <= keys:
                out["mu"], out["sigma"] = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            if "features" in keys and z["features"].size:
                out["features"] = z["features"]
            if "feature_name" in keys:
                out["feature_name"] = str(z["feature_name"])
    except ValueError as e:
        raise ConfigError(f"{path}: not a statistics .npz ({e})") from None
    finally:
        if data is None:
            src.close()
    if "mu" not in out and not out["has_images"]:
        raise ConfigError(f"{path}: a reference .npz needs mu and sigma, or images in arr_0 / images; found "
                          f"{sorted(keys)}")
    return out


def metrics_from_features(gen: dict, ref: dict, *, k: int = 3, is_splits: int = IS_SPLITS,
                          is_shuffle_seed: int | None = IS_SHUFFLE_SEED, cas_columns: np.ndarray | None = None,
                          cas_note: str | None = None, logit_bias: np.ndarray | None = None,
                          device: str = "cpu") -> dict[str, Any]:
    """Metrics from features. ``gen``: features, logits, labels (-1 = unknown); ``ref``: mu, sigma and
    optionally features. ``logit_bias`` is subtracted for IS (the Inception's fc bias);
    ``cas_columns`` maps dataset labels to logit columns (None = the logits are in label order)."""
    gf = gen["features"]
    rmu = np.atleast_1d(ref["mu"])
    if rmu.shape[0] != gf.shape[1]:
        raise ConfigError(f"reference statistics have {rmu.shape[0]}-d features ({ref.get('feature_name') or 'unknown'}"
                          f" extractor), the generated images {gf.shape[1]}-d ({gen['feature_name']}); compute the "
                          "reference with the same extractor (maskgit-pipeline eval reference)")
    if ref.get("feature_name") and ref["feature_name"] != gen["feature_name"]:
        log.warning("reference statistics come from %s, generated features from %s", ref["feature_name"],
                    gen["feature_name"])
    if gf.shape[0] <= gf.shape[1]:
        log.warning("FID from %d generated images of %d-d features: the covariance is singular and the FID biased "
                    "upwards; the paper's protocol uses 50,000", gf.shape[0], gf.shape[1])
    mu, sigma = feature_stats(gf)
    out: dict[str, Any] = {"feature_extractor": gen["feature_name"], "n_generated": int(gf.shape[0]),
                           "n_reference": int(ref["features"].shape[0]) if "features" in ref else ref.get("n"),
                           "fid": frechet_distance(mu, sigma, ref["mu"], ref["sigma"])}
    is_logits = gen["logits"] - (0 if logit_bias is None else logit_bias)
    splits = min(is_splits, gf.shape[0])
    out["is_mean"], out["is_std"] = inception_score(softmax(is_logits), splits=splits, shuffle_seed=is_shuffle_seed)
    out["is_splits"] = splits
    if "features" in ref and ref["features"].shape[0] > k and gf.shape[0] > k:
        out["precision"], out["recall"] = precision_recall(ref["features"], gf, k=k, device=device)
        out["pr_k"] = k
    labels = gen.get("labels")
    if labels is not None and (labels >= 0).all():
        if cas_note:
            out["cas_note"] = cas_note
        else:
            lg = gen["logits"] if cas_columns is None else gen["logits"][:, cas_columns]
            if labels.max() >= lg.shape[1]:
                out["cas_note"] = (f"labels up to {int(labels.max())} but the classifier has {lg.shape[1]} classes; "
                                   "CAS not computed")
            else:
                out["cas_top1"] = topk_accuracy(lg, labels, 1)
                out["cas_top5"] = topk_accuracy(lg, labels, 5)
    return out


def _inception_cas(ext_spec: dict, label_map: str | None, labels: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """(columns, None) to score CAS with the Inception, or (None, why not)."""
    if ext_spec["kind"] != "inception" or labels is None or not (labels >= 0).all():
        return None, None
    if label_map is None:
        return None, ("not computed: the Inception's 1008 outputs are not in ImageNet-1k label order; pass "
                      "--inception-label-map imagenet_2012_challenge_label_map_proto.pbtxt (in TF's "
                      "inception-2015-12-05.tgz) to score CAS with it")
    if labels.max() >= 1000:
        return None, (f"not computed: labels up to {int(labels.max())}, the Inception knows ImageNet-1k's 1000 "
                      "classes only")
    from pipeline.evaluation.labels import inception_columns, read_inception_label_map

    return inception_columns(read_inception_label_map(label_map)), None


def evaluate_sets(generated: str, reference: str, ext_spec: dict, *, label_map: str | None = None, k: int = 3,
                  is_splits: int = IS_SPLITS, work_dir: str | None = None, ray_address: str | None = None,
                  batch_size: int = 64, device: str = "auto", image_size: int | None = None,
                  save_reference: str | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Metrics of the images at ``generated`` against ``reference`` (statistics .npz, or images of any
    kind ``open_image_set`` reads). Pixels are streamed; ``work_dir`` makes both extractions resumable
    (``work_dir/generated``, ``work_dir/reference``) and is required with ``ray_address``.
    ``image_size``: the reference is a dataset source, centre-cropped to this; ``save_reference``: write
    the statistics computed from reference images there."""
    def prog(what):
        return (lambda d, t: progress(what, d, t)) if progress else None

    def sub(name):
        return None if work_dir is None else f"{str(work_dir).rstrip('/')}/{name}"

    kw = {"ray_address": ray_address, "batch_size": batch_size, "device": device}
    gen_set = open_image_set(generated)
    gen = extract_set(gen_set, ext_spec, work_dir=sub("generated"), progress=prog("generated"), **kw)
    ref: dict[str, Any]
    is_stats = str(reference).endswith(".npz") and _is_stats_npz(reference)
    if is_stats:
        ref = read_reference(reference)
        if "mu" in ref and np.atleast_1d(ref["mu"]).shape[0] != gen["features"].shape[1] and ref["has_images"]:
            ref.pop("mu"), ref.pop("sigma")  # another extractor's statistics: use the file's images instead
        from_file = "mu" in ref
        if "features" not in ref and ref["has_images"]:
            got = extract_set(NpzImages(str(reference)), ext_spec, work_dir=sub("reference"),
                              progress=prog("reference"), **kw)
            ref["features"] = got["features"]
            if "mu" not in ref:
                ref["mu"], ref["sigma"] = feature_stats(got["features"])
                ref["feature_name"] = got["feature_name"]
            else:
                ref["n"] = int(got["features"].shape[0])
        ref["statistics"] = "from the file" if from_file else "computed from the file's images"
    else:
        got = extract_set(open_image_set(reference, source_size=image_size), ext_spec, work_dir=sub("reference"),
                          progress=prog("reference"), **kw)
        mu, sigma = feature_stats(got["features"])
        ref = {"mu": mu, "sigma": sigma, "features": got["features"], "feature_name": got["feature_name"],
               "statistics": "computed from the reference images"}
        if save_reference:
            _write_reference(save_reference, mu, sigma, got["features"], got["feature_name"],
                             {"source": str(reference), "num_images": int(got["features"].shape[0])})
    columns, note = _inception_cas(ext_spec, label_map, gen["labels"])
    dev = resolve_device(device) if ray_address is None else "cpu"
    out = metrics_from_features(gen, ref, k=k, is_splits=is_splits, cas_columns=columns, cas_note=note,
                                logit_bias=gen["logit_bias"], device=dev)
    out["reference"] = str(reference)
    out["reference_statistics"] = ref["statistics"]
    out["generated"] = str(generated)
    out["skipped_generated"] = len(gen["skipped"])
    return out


def _is_stats_npz(path: str) -> bool:
    """An .npz with mu/sigma (statistics, maybe with images) rather than only images."""
    fs, p = url_to_fs(str(path))
    with fs.open(p, "rb") as f:
        return {"mu", "sigma"} <= set(npz_keys(f, str(path)))
