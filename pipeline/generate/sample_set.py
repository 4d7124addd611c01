"""Sample a large image set (e.g. 50k for FID) as shards, locally or as Ray tasks across a cluster.

Image i has class ``labels[i]`` and noise seed ``seed + i`` whatever shard or worker draws it, so
the token set does not depend on the shard size or the number of GPUs (pixels may differ in the
last bit: the float decoder's result can depend on the batch size and thread count). Shards are
``shard-NNNNN.npz`` (images (n, H, W, 3) uint8, tokens (n, h, w), labels, indices), each written atomically; a
rerun skips shards already on disk; ``manifest.json`` is written last.

    python -m pipeline.generate.sample_set --checkpoint ckpt/ --tokenizer ckpt/ --per-class 50 --out samples/ \
        [--ray-address auto]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np
from maskgit_core.errors import ConfigError

__all__ = ["plan_shards", "sample_shard", "sample_set", "load_sample_set"]

log = logging.getLogger(__name__)


def plan_shards(n: int, shard_size: int) -> list[tuple[int, int]]:
    """[(start, stop), ...] covering range(n)."""
    if shard_size <= 0:
        raise ConfigError(f"shard_size must be positive, got {shard_size}")
    return [(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


def sample_shard(checkpoint: str, tokenizer_dir: str, labels: list[int], start: int, path: str, *, seed: int,
                 batch_size: int, device: str, sample_kw: dict) -> str:
    """Sample images ``start .. start+len(labels)`` into ``path`` (atomic). Returns the path."""
    import torch

    from transformer.ar_sampling import ar_sample_tokens
    from transformer.sampling import sample_tokens

    from pipeline.generate import decode_tokens, load_pair, to_uint8

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, vq = load_pair(checkpoint, tokenizer_dir, device=device)
    imgs, toks = [], []
    for i in range(0, len(labels), batch_size):
        lb = labels[i:i + batch_size]
        if model.config.causal:
            t = ar_sample_tokens(model, lb, seed=seed + start + i,
                                 **{k: v for k, v in sample_kw.items() if k in ("temperature", "top_k")})
        else:
            t = sample_tokens(model, lb, seed=seed + start + i, **sample_kw).tokens
        toks.append(t.cpu().numpy())
        imgs.append(to_uint8(decode_tokens(vq, t)))
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez(tmp, images=np.concatenate(imgs), tokens=np.concatenate(toks).astype(np.int32),
             labels=np.asarray(labels), indices=np.arange(start, start + len(labels)))
    os.replace(tmp, path)
    return str(path)


def sample_set(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, labels: list[int],
               out_dir: str | os.PathLike, *, seed: int = 0, shard_size: int = 1000, batch_size: int = 32,
               ray_address: str | None = None, device: str = "auto", **sample_kw) -> Path:
    """Sample ``len(labels)`` images into shards under ``out_dir``; with ``ray_address`` as Ray
    tasks (one GPU each when the cluster has GPUs), else in this process. Returns the manifest path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(len(labels), shard_size)
    todo = [(k, s, e) for k, (s, e) in enumerate(shards) if not (out / f"shard-{k:05d}.npz").is_file()]
    log.info("%d shards, %d to sample", len(shards), len(todo))
    args = [(str(checkpoint), str(tokenizer_dir), labels[s:e], s, str(out / f"shard-{k:05d}.npz")) for k, s, e in todo]
    kw = {"seed": seed, "batch_size": batch_size, "sample_kw": sample_kw}
    if ray_address is None:
        for a in args:
            sample_shard(*a, device=device, **kw)
    else:
        import ray

        from pipeline.ray_session import ray_session

        with ray_session(ray_address):
            gpus = ray.cluster_resources().get("GPU", 0)
            task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0.5 if not gpus else 1)(sample_shard)
            for done in ray.get([task.remote(*a, device="cuda" if gpus else "cpu", **kw) for a in args]):
                log.info("wrote %s", done)
    manifest = {"format_version": 1, "num_images": len(labels), "seed": seed, "checkpoint": str(checkpoint),
                "tokenizer": str(tokenizer_dir), "sample_kw": sample_kw,
                "shards": [{"path": f"shard-{k:05d}.npz", "start": s, "stop": e} for k, (s, e) in enumerate(shards)]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out / "manifest.json"


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--per-class", type=int, default=50, help="images per class (50 x 1000 = 50k)")
    ap.add_argument("--classes", default="all", help="'all' or comma-separated labels")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--guidance-scale", type=float, default=0.0)
    ap.add_argument("--null-label", type=int, default=None)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ray-address", default=None, help="'auto' for the cluster this runs in, 'local' to start one")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    from maskgit_core.checkpoint_io import resolve_checkpoint_dir
    from transformer import KIND

    cfg = json.loads((resolve_checkpoint_dir(a.checkpoint, KIND, "transformer") / "config.json").read_text())
    if a.classes == "all":
        classes = list(range(cfg["config"]["num_classes"]))
    else:
        classes = [int(c) for c in a.classes.split(",")]
    labels = [c for c in classes for _ in range(a.per_class)]
    kw = {"steps": a.steps, "schedule": a.schedule}
    if a.guidance_scale:
        kw.update(guidance_scale=a.guidance_scale, null_label=a.null_label)
    print(sample_set(a.checkpoint, a.tokenizer, labels, a.out, seed=a.seed, shard_size=a.shard_size,
                     batch_size=a.batch_size, ray_address=a.ray_address, **kw))


if __name__ == "__main__":
    main()
