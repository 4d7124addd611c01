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


CPU_SECONDS: list[float] = []


def _time(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after a warm-up; the matching process CPU time goes to
    CPU_SECONDS (on a shared machine CPU time is the steadier figure at 1 thread)."""
    fn()  # warm-up
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    CPU_SECONDS.append(cpu)
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
        rows.append({"what": "VQGAN encode official256", "batch": b, "seconds": t, "images_per_s": b / t,
                     "cpu_seconds": CPU_SECONDS[-2]})
        rows.append({"what": "VQGAN decode official256", "batch": b, "seconds": td, "images_per_s": b / td,
                     "cpu_seconds": CPU_SECONDS[-1]})
    del vq
    model = tfm.build("official256").eval()
    for b in (int(x) for x in args.batches.split(",")):
        tokens = torch.randint(0, 1024, (b, 257))
        with torch.inference_mode():
            t = _time(lambda: model(tokens), args.repeats)
        rows.append({"what": "transformer forward official256", "batch": b, "seconds": t,
                     "tokens_per_s": b * 257 / t, "ms_per_sequence": 1000 * t / b, "cpu_seconds": CPU_SECONDS[-1]})
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'what':36s} {'batch':>5s} {'seconds':>8s}  rate")
    for r in rows:
        rate = (f"{r['images_per_s']:.2f} images/s" if "images_per_s" in r
                else f"{r['tokens_per_s']:.0f} tokens/s ({r['ms_per_sequence']:.0f} ms/sequence)")
        print(f"{r['what']:36s} {r['batch']:5d} {r['seconds']:8.3f}  {rate}  (CPU {r['cpu_seconds']:.3f} s)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
