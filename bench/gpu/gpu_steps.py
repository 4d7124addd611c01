"""The small Python pieces of bench/gpu/run_gpu.sh: its inputs (token shards, JPEGs, a tokenizer
with random weights) and the JSON it keeps of the training and tokenize
runs. Needs only what the GPU image has plus the repo (numpy, Pillow, torch).

    python bench/gpu/gpu_steps.py tokens DIR [--tiny]
    python bench/gpu/gpu_steps.py jpegs DIR --count 4096 [--size 500 375]
    python bench/gpu/gpu_steps.py tokenizer DIR --preset official256
    python bench/gpu/gpu_steps.py train-report RUN_DIR LOG OUT_JSON
    python bench/gpu/gpu_steps.py tokenize-report DATASET LOG OUT_JSON
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def write_tokens(root: str, tiny: bool) -> None:
    """Synthetic token shards: official256's codebook and grid (4 x 4096 samples), or the debug
    model's (2 x 64) with --tiny."""
    from pipeline.data.synthetic import write_synthetic_token_dataset

    if tiny:
        write_synthetic_token_dataset(root, codebook_size=64, latent_size=4, num_classes=10,
                                      shard_sizes=[64, 64], row_group=64)
    else:
        write_synthetic_token_dataset(root, codebook_size=1024, latent_size=16, num_classes=1000,
                                      shard_sizes=[4096] * 4)


def _photo_jpeg(args: tuple[int, int, int]) -> bytes:
    """A smooth deterministic colour image (sines of both axes, per channel) as a q=90 JPEG."""
    import numpy as np
    from PIL import Image

    seed, w, h = args
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-6, 6, size=3)
        img[:, :, c] = 127 + 100 * np.sin(a * xx / w * np.pi + b * yy / h * np.pi + p)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_jpegs(root: str, count: int, size: tuple[int, int], classes: int, workers: int) -> None:
    """ROOT/train/n<class>/n<class>_<i>.JPEG, ImageNet's folder layout, ``count`` images in all."""
    jobs = [(i, size[0], size[1]) for i in range(count)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, data in enumerate(pool.map(_photo_jpeg, jobs, chunksize=32)):
            d = Path(root) / "train" / f"n{i % classes:08d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"n{i % classes:08d}_{i}.JPEG").write_bytes(data)


def write_tokenizer(directory: str, preset: str) -> None:
    """A tokenizer checkpoint with random weights (speed does not depend on them)."""
    import torch

    import tokenizer

    torch.manual_seed(0)
    tokenizer.save(tokenizer.build(preset), directory)


def _json_lines(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def train_report(run_dir: str, log: str, out: str) -> dict:
    """The trainer's summary line, its metrics rows and the median throughput after the first row
    (which holds start-up)."""
    metrics_file = Path(run_dir) / "metrics.jsonl"
    rows = _json_lines(metrics_file.read_text()) if metrics_file.exists() else []
    summary = _json_lines(Path(log).read_text(errors="replace")) if Path(log).exists() else []
    steady = rows[1:] or rows
    report = {"summary": summary[-1] if summary else None, "metrics": rows,
              "median_samples_per_s": statistics.median(r["samples_per_s"] for r in steady) if steady else None,
              "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None}
    Path(out).write_text(json.dumps(report, indent=1))
    return report


_DONE = re.compile(r"(\d+) samples, (\d+) errors of (\d+) images; .*?([\d.]+) s$")


def tokenize_report(dataset: str, log: str, out: str) -> dict:
    """The tokenize job's closing line (samples, errors, seconds -> images/s) and its resource plan."""
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    report: dict = {"dataset": os.path.basename(dataset.rstrip("/"))}
    for line in text.splitlines():
        if "resources: ResourcePlan(" in line:
            report["resources"] = line.split("resources: ", 1)[1]
        m = _DONE.search(line)
        if m:
            samples, errors, images, seconds = int(m[1]), int(m[2]), int(m[3]), float(m[4])
            report.update(samples=samples, errors=errors, images=images, seconds=seconds,
                          images_per_s=images / seconds if seconds else None, closing_line=line)
    Path(out).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("tokens")
    s.add_argument("dir")
    s.add_argument("--tiny", action="store_true")
    s = sub.add_parser("jpegs")
    s.add_argument("dir")
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    s.add_argument("--classes", type=int, default=8)
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    s = sub.add_parser("tokenizer")
    s.add_argument("dir")
    s.add_argument("--preset", required=True)
    s = sub.add_parser("train-report")
    s.add_argument("run_dir")
    s.add_argument("log")
    s.add_argument("out")
    s = sub.add_parser("tokenize-report")
    s.add_argument("dataset")
    s.add_argument("log")
    s.add_argument("out")
    a = p.parse_args(argv)
    if a.cmd == "tokens":
        write_tokens(a.dir, a.tiny)
    elif a.cmd == "jpegs":
        write_jpegs(a.dir, a.count, tuple(a.size), a.classes, a.workers)
    elif a.cmd == "tokenizer":
        write_tokenizer(a.dir, a.preset)
    elif a.cmd == "train-report":
        print(json.dumps({k: v for k, v in train_report(a.run_dir, a.log, a.out).items() if k != "metrics"}))
    else:
        print(json.dumps(tokenize_report(a.dataset, a.log, a.out)))


if __name__ == "__main__":
    main()
