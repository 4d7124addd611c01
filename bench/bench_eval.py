"""Evaluation at scale: feature-extraction images/s and the memory of a streamed `eval`.

1. ``rate``: images/s of the FID InceptionV3 (random weights; the network, not the weights, sets the
   cost) and of a proxy classifier on 256 px uint8 batches, through the same ``extract_unit`` that
   `eval` uses, on this machine's device (CPU unless a GPU is present).
2. ``memory``: a sample set of ``--n`` images at 256 px (``--shard-size`` per shard, the layout
   `sample-set` writes) evaluated by the real command (`maskgit-pipeline eval`, a child process)
   against a reference .npz of ``--n-ref`` images, with the proxy classifier; its wall time and peak
   RSS (the pixels alone would be n x 196,608 B as uint8, 4x that as float32).

    .venv/bin/python bench/bench_eval.py [--n 50000] [--n-ref 10000] [--rate-images 256] [--work DIR]

Prints a table to stderr and JSON to stdout.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation import save_classifier, train_feature_classifier  # noqa: E402
from pipeline.evaluation.extraction import extract_unit, resolve_device  # noqa: E402
from pipeline.evaluation.image_sets import NpzImages  # noqa: E402
from pipeline.evaluation.inception import FIDInceptionV3  # noqa: E402

SIZE = 256


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth random colour fields (cheap to make, not constant), uint8 (n, 256, 256, 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, SIZE // 8, axis=1), SIZE // 8, axis=2)


def _write_set(d: Path, n: int, shard_size: int, classes: int = 1000) -> None:
    d.mkdir(parents=True)
    shards = []
    for k, s in enumerate(range(0, n, shard_size)):
        e = min(n, s + shard_size)
        labels = np.arange(s, e) // max(1, n // classes)
        np.savez(d / f"shard-{k:05d}.npz", images=_images(e - s, seed=k), labels=np.minimum(labels, classes - 1),
                 indices=np.arange(s, e))
        shards.append({"path": f"shard-{k:05d}.npz", "start": s, "stop": e})
    (d / "manifest.json").write_text(json.dumps({"format_version": 1, "num_images": n, "shards": shards}))


def rate(work: Path, n: int, batch_size: int) -> list[dict]:
    dev = resolve_device("auto")
    np.savez(work / "rate.npz", images=_images(n, seed=1))
    s = NpzImages(str(work / "rate.npz"))
    torch.manual_seed(0)
    clf = train_feature_classifier(_images(64, 2), np.arange(64) % 4, epochs=1, image_size=32)
    out = []
    for name, model in (("inception-v3-fid (random weights)", FIDInceptionV3().eval()), ("proxy 32 px", clf)):
        model = model.to(dev)
        warm = s.units[0].__class__(0, 0, min(batch_size, n))
        extract_unit(model, s, warm, batch_size=batch_size, device=dev)
        t0 = time.perf_counter()
        got = sum(len(extract_unit(model, s, u, batch_size=batch_size, device=dev)["features"]) for u in s.units)
        wall = time.perf_counter() - t0
        out.append({"extractor": name, "device": dev, "images": got, "batch_size": batch_size,
                    "seconds": round(wall, 2), "images_per_s": round(got / wall, 1),
                    "threads": torch.get_num_threads()})
    return out


def memory(work: Path, n: int, n_ref: int, shard_size: int) -> dict:
    t0 = time.perf_counter()
    _write_set(work / "gen", n, shard_size)
    np.savez(work / "ref.npz", images=_images(n_ref, seed=10_000))
    torch.manual_seed(0)
    save_classifier(train_feature_classifier(_images(256, 3), np.arange(256) % 8, epochs=1, image_size=32),
                    work / "clf")
    made = time.perf_counter() - t0
    cmd = [str(Path(sys.executable).parent / "maskgit-pipeline"), "eval", "--generated", str(work / "gen"),
           "--reference", str(work / "ref.npz"), "--classifier", str(work / "clf"), "--device", "cpu",
           "--batch-size", "250", "--json", str(work / "m.json")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    m = json.loads((work / "m.json").read_text())
    return {"n_generated": m["n_generated"], "n_reference": m["n_reference"], "shard_size": shard_size,
            "make_seconds": round(made, 1), "eval_seconds": round(wall, 1), "peak_rss_bytes": peak,
            "pixels_uint8_bytes": n * SIZE * SIZE * 3, "pixels_float32_bytes": n * SIZE * SIZE * 3 * 4,
            "metrics": {k: m[k] for k in ("fid", "is_mean", "precision", "recall") if k in m}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--n-ref", type=int, default=10_000)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--rate-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--work", default=None, help="Scratch folder (default: a temporary one, removed).")
    ap.add_argument("--skip", choices=["rate", "memory"], action="append", default=[])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        res: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": torch.get_num_threads()}
        if "rate" not in args.skip:
            res["rate"] = rate(work, args.rate_images, args.batch_size)
            for r in res["rate"]:
                print(f"{r['extractor']:>36} on {r['device']}: {r['images_per_s']:8.1f} images/s "
                      f"({r['images']} in {r['seconds']} s, batch {r['batch_size']})", file=sys.stderr)
        if "memory" not in args.skip:
            res["memory"] = m = memory(work, args.n, args.n_ref, args.shard_size)
            print(f"eval of {m['n_generated']} x 256 px vs {m['n_reference']}: {m['eval_seconds']} s, peak RSS "
                  f"{m['peak_rss_bytes'] / 2**30:.2f} GiB (pixels: {m['pixels_uint8_bytes'] / 2**30:.1f} GiB uint8, "
                  f"{m['pixels_float32_bytes'] / 2**30:.1f} GiB float32)", file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
