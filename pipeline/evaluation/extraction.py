"""Feature extraction over an image set: streamed in batches through the feature network (on the GPU
when there is one), in this process or as Ray tasks (one per unit), resumable.

Memory: one batch of pixels at a time (uint8 on the host, float on the device); what is kept is the
features and logits, float32: 50,000 InceptionV3 rows are 410 MB + 202 MB.

With ``work_dir`` each unit's features are written to ``unit-NNNNN.npz`` (atomically; local or
``s3://``) next to ``features.json``, which records what they are features of (the set's identity
and the extractor's name). A rerun with the same set and extractor skips the units on disk; anything
else in ``work_dir`` is refused. Ray tasks need ``work_dir`` on storage every node sees.
"""
from __future__ import annotations

import io
import json
import logging
import posixpath
from typing import Any, Callable

import numpy as np
import torch

from maskgit_core.checks import resolve_device
from maskgit_core.errors import ConfigError
from pipeline.data.storage import put_bytes_atomic, url_to_fs
from pipeline.evaluation.image_sets import ImageSet, Unit, reopen

__all__ = ["extractor_spec", "load_extractor", "extract_unit", "extract_set", "FEATURES_JSON"]

log = logging.getLogger(__name__)

FEATURES_JSON = "features.json"


def extractor_spec(*, inception: str | None = None, classifier: str | None = None) -> dict[str, str]:
    """{"kind": "inception"|"proxy", "path": ...}: what a Ray task loads."""
    if (inception is None) == (classifier is None):
        raise ConfigError("pass exactly one feature extractor: --classifier DIR (the project's proxy) or "
                          "--inception FILE (local FID InceptionV3 weights)")
    return {"kind": "inception", "path": str(inception)} if inception else {"kind": "proxy", "path": str(classifier)}


def load_extractor(spec: dict[str, str], device: str = "cpu") -> torch.nn.Module:
    if spec["kind"] == "inception":
        from pipeline.evaluation.inception import load_inception

        model = load_inception(spec["path"])
    else:
        from pipeline.evaluation.features import load_classifier

        model = load_classifier(spec["path"])
    return model.to(device).eval()


@torch.no_grad()
def extract_unit(model: torch.nn.Module, image_set: ImageSet, unit: Unit, *, batch_size: int = 64,
                 device: str = "cpu") -> dict[str, np.ndarray]:
    """{"features" (n, D) float32, "logits" (n, C) float32, "labels" (n,) int64} of one unit; the
    uint8 batch goes to the device as it is and becomes float there."""
    feats, logits, labels = [], [], []
    pin = device.startswith("cuda")
    for u8, lab in image_set.batches(unit, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(u8))
        if pin:
            x = x.pin_memory()
        x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        f, lg = model(x)
        feats.append(f.float().cpu().numpy())
        logits.append(lg.float().cpu().numpy())
        labels.append(lab)
    if not feats:  # every image of a source unit skipped
        return {"features": np.zeros((0, 0), np.float32), "logits": np.zeros((0, 0), np.float32),
                "labels": np.zeros(0, np.int64)}
    return {"features": np.concatenate(feats), "logits": np.concatenate(logits), "labels": np.concatenate(labels)}


def _unit_bytes(out: dict[str, np.ndarray], skipped: list) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **out, skipped=np.array(json.dumps(skipped)))
    return buf.getvalue()


def _unit_task(set_spec: dict, unit: Unit, ext_spec: dict, path: str, batch_size: int, device: str) -> str:
    """One unit in a Ray task: reopen the set, load the extractor, extract, write ``path``."""
    image_set, unit = reopen(set_spec, unit)
    model = load_extractor(ext_spec, device)
    out = extract_unit(model, image_set, unit, batch_size=batch_size, device=device)
    fs, p = url_to_fs(path)
    put_bytes_atomic(fs, p, _unit_bytes(out, image_set.skipped))
    return path


def _prepare_work_dir(work_dir: str, ident: dict) -> tuple[Any, str]:
    fs, root = url_to_fs(work_dir)
    meta = posixpath.join(root, FEATURES_JSON)
    if fs.isfile(meta):
        have = json.loads(fs.cat_file(meta))
        diff = sorted(k for k in set(have) | set(ident) if have.get(k) != ident.get(k))
        if diff:
            raise ConfigError(f"{work_dir}: holds features of another run (differs in {diff}; see {FEATURES_JSON}); "
                              "use a new --work-dir, or the same images and extractor to resume")
    else:
        if fs.isdir(root) and fs.ls(root, detail=False):
            raise ConfigError(f"{work_dir}: not empty and no {FEATURES_JSON}; give an empty or new --work-dir")
        put_bytes_atomic(fs, meta, json.dumps(ident, indent=1).encode())
    return fs, root


def extract_set(image_set: ImageSet, ext_spec: dict, *, work_dir: str | None = None, ray_address: str | None = None,
                batch_size: int = 64, device: str = "auto",
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Features, logits and labels of every image of the set, in the set's order.

    Returns {"features", "logits", "labels", "feature_name", "skipped" [(key, reason)], "logit_bias"
    (the Inception's fc bias, float64, which IS leaves out; None for the proxy)}. With
    ``ray_address``: one Ray task per unit (one GPU each when the cluster has GPUs); needs
    ``work_dir``. ``progress(done_units, total_units)`` after each unit."""
    if ray_address is not None and work_dir is None:
        raise ConfigError("--ray-address needs --work-dir (storage every node sees: a shared path or s3://)")
    dev = resolve_device(device) if ray_address is None else device
    model = load_extractor(ext_spec, "cpu" if ray_address is not None else dev)
    name = model.name
    bias = model.fc.bias.detach().cpu().double().numpy() if ext_spec["kind"] == "inception" else None
    units = image_set.units
    total = len(units)
    results: dict[int, dict] = {}
    if work_dir is None:
        for u in units:
            results[u.index] = extract_unit(model, image_set, u, batch_size=batch_size, device=dev)
            if progress:
                progress(len(results), total)
        return {**_gather(units, results, name, image_set.listing_errors + image_set.skipped), "logit_bias": bias}
    ident = {"format_version": 1, "feature_name": name, "images": image_set.identity()}
    fs, root = _prepare_work_dir(work_dir, ident)
    path_of = {u.index: f"{work_dir.rstrip('/')}/unit-{u.index:05d}.npz" for u in units}
    todo = [u for u in units if not fs.isfile(posixpath.join(root, f"unit-{u.index:05d}.npz"))]
    log.info("%s: %d units, %d to extract (%s)", image_set.uri, total, len(todo), name)
    done = total - len(todo)
    if progress:
        progress(done, total)
    if ray_address is None:
        for u in todo:
            out = extract_unit(model, image_set, u, batch_size=batch_size, device=dev)
            put_bytes_atomic(fs, posixpath.join(root, f"unit-{u.index:05d}.npz"), _unit_bytes(out, image_set.skipped))
            image_set.skipped.clear()
            done += 1
            if progress:
                progress(done, total)
    else:
        _run_on_ray(ray_address, image_set, todo, ext_spec, path_of, batch_size, progress, done, total)
    out = _gather_files(fs, root, units, name)
    out["skipped"] = image_set.listing_errors + out["skipped"]
    return {**out, "logit_bias": bias}


def _run_on_ray(address, image_set, todo, ext_spec, path_of, batch_size, progress, done, total) -> None:
    import ray

    from pipeline.ray_session import ray_session

    with ray_session(address):
        gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1, max_retries=2)(_unit_task)
        pending = [task.remote(image_set.spec(u), u, ext_spec, path_of[u.index], batch_size, "cuda" if gpus else "cpu")
                   for u in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            log.info("features %s", ray.get(ready[0]))
            done += 1
            if progress:
                progress(done, total)


def _gather(units: list[Unit], results: dict[int, dict], name: str, skipped: list) -> dict[str, Any]:
    parts = [results[u.index] for u in units if results[u.index]["features"].size]
    if not parts:
        raise ConfigError("no image of the set could be read; see the skipped list")
    return {"features": np.concatenate([p["features"] for p in parts]),
            "logits": np.concatenate([p["logits"] for p in parts]),
            "labels": np.concatenate([p["labels"] for p in parts]), "feature_name": name, "skipped": skipped}


def _gather_files(fs, root: str, units: list[Unit], name: str) -> dict[str, Any]:
    results, skipped = {}, []
    for u in units:
        p = posixpath.join(root, f"unit-{u.index:05d}.npz")
        with fs.open(p, "rb") as f, np.load(io.BytesIO(f.read()), allow_pickle=False) as z:
            results[u.index] = {k: z[k] for k in ("features", "logits", "labels")}
            skipped += [tuple(s) for s in json.loads(str(z["skipped"]))]
    return _gather(units, results, name, skipped)
