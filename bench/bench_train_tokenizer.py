"""Tokenizer trainer on the built-in demo data: steps, wall and CPU seconds, held-out PSNR, codebook usage.

    .venv/bin/python bench/bench_train_tokenizer.py --runs 1x20 2x20 1x150 1x600

Prints one table row per run (each a fresh model on the same data). CPU seconds are the
process's own, which stay comparable when other jobs share the cores; wall seconds do not.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from pipeline.demo.data import DemoDataConfig, make_demo_dataset
from tokenizer.train import TrainConfig, load_image_folder, train_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo")
    p.add_argument("--runs", nargs="+", default=["1x150", "1x600"], help="THREADSxSTEPS per run")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        make_demo_dataset(d, DemoDataConfig())
        images = load_image_folder(d, image_size=32, val_images=256)
    print(f"preset {a.preset}, {len(images.train)} train / {len(images.val)} held-out images, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| threads | steps | batch | wall s | CPU s | held-out PSNR dB (init) | usage | perplexity |")
    print("|---|---|---|---|---|---|---|---|")
    for run in a.runs:
        threads, steps = (int(v) for v in run.split("x"))
        cpu0, wall0 = time.process_time(), time.perf_counter()
        m = train_tokenizer(images, model_config=a.preset,
                            config=TrainConfig(steps=steps, batch_size=a.batch_size, threads=threads)).metrics
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        print(f"| {threads} | {m['steps']} | {a.batch_size} | {wall:.0f} | {cpu:.0f} | {m['psnr']:.2f} ({m['init_psnr']:.2f}) | "
              f"{m['usage']:.3f} | {m['perplexity']:.1f} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
