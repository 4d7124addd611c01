"""Decode time per image: MaskGIT parallel decoding (T steps) vs the KV-cached autoregressive
baseline of the same size, over the same 16x16 = 256-token grid, measured side by side in one
run. Also the MaskGIT loop's overhead: decode time / (T x one forward measured separately), and
decode time / the time its own T forward calls took (immune to load changes between measurements).

    .venv/bin/python bench/bench_decode.py --preset small --batches 1,32 --steps 8

Prints a table (and JSON with --json). Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transformer  # noqa: E402
from transformer.ar_sampling import ar_sample_tokens  # noqa: E402
from transformer.sampling import sample_tokens  # noqa: E402


class _Timed(torch.nn.Module):
    """Wraps a model and adds up the wall time of its forward calls (for the loop-overhead column)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.inner = model
        self.config = model.config
        self.seconds = 0.0

    def forward(self, *a, **kw):
        t0 = time.perf_counter()
        out = self.inner(*a, **kw)
        self.seconds += time.perf_counter() - t0
        return out


def _time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="transformer preset (same size for both models)")
    ap.add_argument("--latent-size", type=int, default=16, help="grid side (16 -> 256 tokens)")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mg = transformer.build(args.preset, latent_size=args.latent_size, dropout=0.0, attention_dropout=0.0).eval()
    ar = transformer.build(args.preset, latent_size=args.latent_size, causal=True, dropout=0.0,
                           attention_dropout=0.0).eval()
    cfg = mg.config
    rows = []
    with torch.inference_mode():
        for b in [int(x) for x in args.batches.split(",")]:
            labels = [i % cfg.num_classes for i in range(b)]
            x = torch.full((b, cfg.seq_len), cfg.mask_token_id)
            x[:, 0] = cfg.codebook_size
            mg(x), ar(x[:, :1])  # warm-up (allocator, kernels)
            t_fwd = _time(lambda: mg(x), args.repeats)
            timed = _Timed(mg)
            t_mg = _time(lambda: sample_tokens(timed, labels, steps=args.steps, seed=None), args.repeats)
            in_model = timed.seconds / args.repeats
            t_ar = _time(lambda: ar_sample_tokens(ar, labels, seed=None), args.repeats)
            rows.append({"batch": b, "forward_s": t_fwd, "maskgit_s": t_mg, "ar_kv_s": t_ar,
                         "maskgit_ms_per_image": 1e3 * t_mg / b, "ar_ms_per_image": 1e3 * t_ar / b,
                         "speedup": t_ar / t_mg, "loop_overhead": t_mg / (args.steps * t_fwd),
                         "decode_over_its_forwards": t_mg / in_model})
    info = {"preset": args.preset, "params": mg.num_params(), "tokens": cfg.num_image_tokens, "steps": args.steps,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or
            platform.machine(), "rows": rows}
    print(f"preset {args.preset} ({mg.num_params() / 1e6:.1f}M params), {cfg.num_image_tokens} tokens, "
          f"MaskGIT T={args.steps}, {torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'MaskGIT ms/img':>15} {'AR+KV ms/img':>13} {'AR/MaskGIT':>11} {'decode/(T*fwd)':>15} "
          f"{'decode/its fwds':>16}")
    for r in rows:
        print(f"{r['batch']:>5} {r['maskgit_ms_per_image']:>15.1f} {r['ar_ms_per_image']:>13.1f} "
              f"{r['speedup']:>10.2f}x {r['loop_overhead']:>15.3f} {r['decode_over_its_forwards']:>16.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
