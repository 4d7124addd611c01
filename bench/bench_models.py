"""Baseline speed of the official256 architectures on this machine (random weights; speed
does not depend on the values). Not a test: prints a table; figures go to docs/BENCHMARKS.md.

    .venv/bin/python bench/bench_models.py [--threads 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

import tokenizer as tok
import transformer as tfm


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--channels-last", action="store_true", help="NHWC memory format for the VQGAN convs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    vq = tok.build("official256").eval()
    if args.channels_last:
        vq = vq.to(memory_format=torch.channels_last)
    for b in (int(x) for x in args.batches.split(",")):
        x = torch.rand(b, 3, 256, 256)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            t = _time(lambda: vq.encode(x), args.repeats)
            ids = vq.encode(x)
            td = _time(lambda: vq.decode_ids(ids), args.repeats)
        rows.append({"what": "VQGAN encode official256", "batch": b, "seconds": t, "images_per_s": b / t})
        rows.append({"what": "VQGAN decode official256", "batch": b, "seconds": td, "images_per_s": b / td})
    del vq
    model = tfm.build("official256").eval()
    for b in (int(x) for x in args.batches.split(",")):
        tokens = torch.randint(0, 1024, (b, 257))
        with torch.inference_mode():
            t = _time(lambda: model(tokens), args.repeats)
        rows.append({"what": "transformer forward official256", "batch": b, "seconds": t,
                     "tokens_per_s": b * 257 / t, "ms_per_sequence": 1000 * t / b})
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'what':36s} {'batch':>5s} {'seconds':>8s}  rate")
    for r in rows:
        rate = (f"{r['images_per_s']:.2f} images/s" if "images_per_s" in r
                else f"{r['tokens_per_s']:.0f} tokens/s ({r['ms_per_sequence']:.0f} ms/sequence)")
        print(f"{r['what']:36s} {r['batch']:5d} {r['seconds']:8.3f}  {rate}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
