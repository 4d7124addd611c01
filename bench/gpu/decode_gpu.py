"""GPU decode benchmark: MaskGIT (T=8) vs the KV-cached AR baseline of the same size, bf16,
256 tokens, batch 1 and 32. Self-contained: needs torch (+ numpy) and this repository's
``transformer/`` folder; nothing else of the project is imported (no safetensors, no ray).

    OUT=/tmp/out PYTHONPATH=. python bench/gpu/decode_gpu.py            # official256 size
    OUT=/tmp/out PYTHONPATH=. python bench/gpu/decode_gpu.py --preset base --batches 1,32

Writes $OUT/decode_gpu.json (and prints a table). Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _load_transformer_modules():
    """Import transformer/{config,model,schedules,sampling,ar_sampling}.py without running the
    package __init__ (which pulls checkpoint I/O and safetensors)."""
    pkg = types.ModuleType("mgt")
    pkg.__path__ = [str(REPO / "transformer")]
    sys.modules["mgt"] = pkg
    return (importlib.import_module("mgt.config"), importlib.import_module("mgt.model"),
            importlib.import_module("mgt.sampling"), importlib.import_module("mgt.ar_sampling"))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn, repeats: int) -> float:
    fn()
    _sync()
    ts = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="official256")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--device", default="cuda", help="cuda; 'cpu' only to smoke-test the script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine (bench/bench_decode.py runs on CPU)")
    dev = args.device
    config, model_mod, sampling, ar_sampling = _load_transformer_modules()
    dtype = getattr(torch, args.dtype)
    cfg = config.preset(args.preset).replace(dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    mg = model_mod.MaskGITTransformer(cfg).to(dev, dtype).eval()
    ar = model_mod.MaskGITTransformer(cfg.replace(causal=True)).to(dev, dtype).eval()
    rows = []
    with torch.inference_mode():
        for b in [int(x) for x in args.batches.split(",")]:
            labels = [i % cfg.num_classes for i in range(b)]
            x = torch.full((b, cfg.seq_len), cfg.mask_token_id, device=dev)
            x[:, 0] = cfg.codebook_size
            t_fwd = _time(lambda: mg(x), args.repeats)
            t_mg = _time(lambda: sampling.sample_tokens(mg, labels, steps=args.steps, seed=None), args.repeats)
            t_ar = _time(lambda: ar_sampling.ar_sample_tokens(ar, labels, seed=None), max(1, args.repeats // 2))
            rows.append({"batch": b, "forward_s": t_fwd, "maskgit_s": t_mg, "ar_kv_s": t_ar,
                         "maskgit_ms_per_image": 1e3 * t_mg / b, "ar_ms_per_image": 1e3 * t_ar / b,
                         "speedup": t_ar / t_mg, "loop_overhead": t_mg / (args.steps * t_fwd)})
            print(f"batch {b}: MaskGIT {1e3 * t_mg / b:.2f} ms/img, AR+KV {1e3 * t_ar / b:.2f} ms/img, "
                  f"AR/MaskGIT {t_ar / t_mg:.2f}x, decode/(T*fwd) {t_mg / (args.steps * t_fwd):.3f}")
    result = {"preset": args.preset, "params": sum(p.numel() for p in mg.parameters()),
              "tokens": cfg.num_image_tokens, "steps": args.steps, "dtype": args.dtype,
              "device": torch.cuda.get_device_name(0) if dev == "cuda" else dev, "torch": torch.__version__,
              "rows": rows,
              "target": "AR/MaskGIT >= 8x at batch 1"}
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_gpu.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'decode_gpu.json'}")


if __name__ == "__main__":
    main()
