"""Sample a large image set (e.g. 50k for FID) as shards, locally or as Ray tasks across a cluster.

Image i has class ``labels[i]`` and noise seed ``seed + i`` whatever shard or worker draws it, so
the token set does not depend on the shard size or the number of GPUs (pixels may differ in the
last bit: the float decoder's result can depend on the batch size and thread count). Shards are
``shard-NNNNN.npz`` (images (n, H, W, 3) uint8, tokens (n, h, w), labels, indices), each written atomically;
``manifest.json`` is written last.

Reruns: ``sample_set.json``, written first, records the set's settings (labels, seed, shard size,
sampling options, the sha256 of both checkpoints). A rerun with the same settings resumes (skips the
shards on disk); other settings, or a non-empty folder that is not a sample set, are refused unless
``overwrite``, which removes the set's own files (shards, manifest, settings) and samples again.

    maskgit-pipeline sample-set --checkpoint ckpt/ --tokenizer ckpt/ --per-class 50 --out samples/ \
        [--ray-address auto]
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np
from maskgit_core.errors import ConfigError
from maskgit_core.outputs import atomic_write, check_output_dir

__all__ = ["plan_shards", "sample_shard", "sample_set", "load_sample_set", "set_labels", "set_settings",
           "write_settings", "SETTINGS"]

SETTINGS = "sample_set.json"

log = logging.getLogger(__name__)


def plan_shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(n)."""
    if shard_size <= 0:
        raise ConfigError(f"shard_size must be positive, got {shard_size}")
    return [(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


def sample_shard(checkpoint: str, tokenizer_dir: str, labels: list[int], start: int, path: str, *, seed: int,
                 batch_size: int, device: str, sample_kw: dict) -> str:
    """Sample images ``start .. start+len(labels)`` into ``path`` (atomic). Returns the path."""
    from pipeline.generate.sampling import load_pair, resolve_device, sample_batches

    model, vq = load_pair(checkpoint, tokenizer_dir, device=resolve_device(device))
    imgs, toks = [], []
    for _, u8, tokens, _ in sample_batches(model, vq, labels, batch_size=batch_size, seed=seed + start, **sample_kw):
        imgs.append(u8)
        toks.append(tokens)
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez(tmp, images=np.concatenate(imgs), tokens=np.concatenate(toks).astype(np.int32),
             labels=np.asarray(labels), indices=np.arange(start, start + len(labels)))
    os.replace(tmp, path)
    return str(path)


def sample_set(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, labels: list[int],
               out_dir: str | os.PathLike, *, seed: int = 0, shard_size: int = 1000, batch_size: int = 32,
               ray_address: str | None = None, device: str = "auto",
               progress: Callable[[int, int], None] | None = None, overwrite: bool = False, **sample_kw) -> Path:
    """Sample ``len(labels)`` images into shards under ``out_dir``; with ``ray_address`` as Ray
    tasks (one GPU each when the cluster has GPUs), else in this process. ``progress(done, total)``
    is called with shard counts (shards found on disk count as done) as each shard is written.
    Returns the manifest path. A non-empty ``out_dir`` must hold a set of the same settings (it is
    resumed) unless ``overwrite`` (see the module docstring)."""
    out = Path(out_dir)
    _prepare_out(out, set_settings(checkpoint, tokenizer_dir, labels, seed=seed, shard_size=shard_size,
                                   sample_kw=sample_kw), overwrite=overwrite)
    shards = plan_shards(len(labels), shard_size)
    todo = [(k, s, e) for k, (s, e) in enumerate(shards) if not (out / f"shard-{k:05d}.npz").is_file()]
    log.info("%d shards, %d to sample", len(shards), len(todo))
    done = len(shards) - len(todo)
    if progress is not None:
        progress(done, len(shards))
    args = [(str(checkpoint), str(tokenizer_dir), labels[s:e], s, str(out / f"shard-{k:05d}.npz")) for k, s, e in todo]
    kw = {"seed": seed, "batch_size": batch_size, "sample_kw": sample_kw}
    if ray_address is None:
        for a in args:
            sample_shard(*a, device=device, **kw)
            done += 1
            if progress is not None:
                progress(done, len(shards))
    else:
        import ray

        from pipeline.ray_session import ray_session

        with ray_session(ray_address):
            gpus = ray.cluster_resources().get("GPU", 0)
            task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0.5 if not gpus else 1)(sample_shard)
            pending = [task.remote(*a, device="cuda" if gpus else "cpu", **kw) for a in args]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                log.info("wrote %s", ray.get(ready[0]))
                done += 1
                if progress is not None:
                    progress(done, len(shards))
    manifest = {"format_version": 1, "num_images": len(labels), "seed": seed, "checkpoint": str(checkpoint),
                "tokenizer": str(tokenizer_dir), "sample_kw": sample_kw,
                "shards": [{"path": f"shard-{k:05d}.npz", "start": s, "stop": e} for k, (s, e) in enumerate(shards)]}
    atomic_write(out / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    return out / "manifest.json"


def set_settings(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, labels: list[int], *,
                 seed: int, shard_size: int, sample_kw: dict) -> dict:
    """What makes a sample set what it is (its identity); batch size, device and Ray are not part of it."""
    from maskgit_core.checkpoint_io import resolve_checkpoint_dir
    from tokenizer import KIND as TOK_KIND
    from transformer import KIND as TF_KIND

    def sha(path, kind, sub):
        return json.loads((resolve_checkpoint_dir(path, kind, sub) / "config.json").read_text()).get("weights_sha256")

    return {"format_version": 1, "num_images": len(labels),
            "labels_sha256": hashlib.sha256(np.asarray(labels, "<i8").tobytes()).hexdigest(), "seed": seed,
            "shard_size": shard_size, "sample_kw": json.loads(json.dumps(sample_kw)),
            "checkpoint_sha256": sha(checkpoint, TF_KIND, "transformer"),
            "tokenizer_sha256": sha(tokenizer_dir, TOK_KIND, "tokenizer")}


def write_settings(out: str | os.PathLike, settings: dict) -> None:
    atomic_write(Path(out) / SETTINGS, lambda tmp: Path(tmp).write_text(json.dumps(settings, indent=1)))


def _prepare_out(out: Path, settings: dict, *, overwrite: bool) -> None:
    """Resume a set of the same settings; refuse anything else in ``out`` unless ``overwrite``."""
    if overwrite and out.is_dir():
        for p in [*out.glob("shard-*.npz"), out / "manifest.json", out / SETTINGS]:
            p.unlink(missing_ok=True)
    old = out / SETTINGS
    if old.is_file():
        have = json.loads(old.read_text())
        diff = sorted(k for k in set(have) | set(settings) if have.get(k) != settings.get(k))
        if diff:
            raise ConfigError(f"{out}: holds a sample set with other {diff} (see {SETTINGS}); use a new --out, the "
                              "same settings to resume it, or --overwrite to sample it again")
        return
    check_output_dir(out, overwrite=False)
    out.mkdir(parents=True, exist_ok=True)
    write_settings(out, settings)


def set_labels(checkpoint: str | os.PathLike, classes: str, per_class: int) -> list[int]:
    """Labels of a sample set: ``per_class`` of each class, classes ``all`` (every class of the
    checkpoint, from its config.json) or comma-separated labels, e.g. ``1,207,980``."""
    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    if classes == "all":
        from maskgit_core.checkpoint_io import resolve_checkpoint_dir
        from transformer import KIND

        cfg = json.loads((resolve_checkpoint_dir(checkpoint, KIND, "transformer") / "config.json").read_text())
        chosen = list(range(cfg["config"]["num_classes"]))
    else:
        try:
            chosen = [int(c) for c in classes.split(",") if c.strip()]
        except ValueError:
            raise ConfigError(f"--classes {classes!r}: 'all' or comma-separated integers, e.g. 1,207,980") from None
        if not chosen:
            raise ConfigError("--classes needs 'all' or at least one label")
    return [c for c in chosen for _ in range(per_class)]


def load_sample_set(out_dir: str | os.PathLike, *, key: str = "images") -> tuple[np.ndarray, np.ndarray]:
    """All images (N, H, W, 3) uint8 (or ``key="tokens"``) and labels of a finished set, in index order."""
    d = Path(out_dir)
    man = d / "manifest.json"
    if not man.is_file():
        raise FileNotFoundError(f"{man}: no manifest; the sampling run has not finished (rerun it to resume)")
    imgs, labels = [], []
    for s in json.loads(man.read_text())["shards"]:
        with np.load(d / s["path"], allow_pickle=False) as z:
            imgs.append(z[key])
            labels.append(z["labels"])
    return np.concatenate(imgs), np.concatenate(labels)
