"""GPU: tokens/s and MFU of one training step of the `official256` MVTM transformer.

Plain PyTorch (no DeepSpeed needed on the GPU box): bf16 autocast, SDPA attention (flash /
memory-efficient kernels), fused AdamW (betas 0.9/0.96, wd 0.045), gradient clipping 1.0, the
real MVTM objective (transformer.objectives) on random tokens (the loader is benchmarked apart:
bench/bench_stream.py). Runs eager and, unless --no-compile, torch.compile'd; writes JSON to
$OUT/train_mfu.json (or ./train_mfu.json).

    PYTHONPATH=. python bench/gpu/train_mfu.py [--batch 128 256] [--steps 30] [--no-compile]

MFU = achieved FLOP/s / peak dense bf16 FLOP/s, with training FLOPs per token from
``MaskGITTransformer.flops_per_token()`` (6 N + 12 L D S attention). Peak: H100/H200 SXM
989 TFLOP/s, H100 PCIe 756 (override with --peak-tflops).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

import transformer  # noqa: E402
from transformer.objectives import ObjectiveConfig, compute_objective  # noqa: E402


def peak_tflops(name: str) -> float:
    n = name.lower()
    if "h100" in n and "pcie" in n:
        return 756.0
    if "h100" in n or "h200" in n or "gh200" in n:
        return 989.0
    if "a100" in n:
        return 312.0
    return float("nan")


def run(batch: int, steps: int, compile_: bool, warmup: int, *, preset: str = "official256",
        device: str = "cuda") -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = transformer.build(preset).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.045, fused=True)
    net = torch.compile(model) if compile_ else model
    if compile_:
        net.config = model.config
    cfg = model.config
    ocfg = ObjectiveConfig()
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, cfg.codebook_size, (batch, cfg.num_image_tokens), device=dev, generator=g)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=dev, generator=g)

    def step() -> torch.Tensor:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = compute_objective(net, images, labels, ocfg, generator=g)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return out.loss

    t_compile = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    t_compile = time.perf_counter() - t_compile
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    tokens = batch * cfg.seq_len
    flops = model.flops_per_token() * tokens / dt
    peak = peak_tflops(torch.cuda.get_device_name()) if dev.type == "cuda" else float("nan")
    return {"batch": batch, "compile": compile_, "step_ms": round(dt * 1e3, 2),
            "tokens_per_s": round(tokens / dt), "samples_per_s": round(batch / dt, 1),
            "tflops": round(flops / 1e12, 1), "mfu": round(flops / (peak * 1e12), 4) if peak == peak else None,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None, "warmup_s": round(t_compile, 1),
            "final_loss": float(loss.detach())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--smoke", action="store_true", help="CPU check of the script with the debug preset")
    a = p.parse_args()
    if a.smoke:
        print(json.dumps(run(4, 2, False, 1, preset="debug", device="cpu")))
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    if a.peak_tflops:
        globals()["peak_tflops"] = lambda _n: a.peak_tflops
    m = transformer.build("official256")
    result = {"device": name, "torch": torch.__version__, "params": m.num_params(),
              "flops_per_token": m.flops_per_token(), "peak_tflops": peak_tflops(name), "runs": []}
    del m
    for compile_ in ([False] if a.no_compile else [False, True]):
        for b in a.batch:
            try:
                r = run(b, a.steps, compile_, a.warmup)
            except torch.OutOfMemoryError:
                r = {"batch": b, "compile": compile_, "error": "out of memory"}
            print(json.dumps(r), flush=True)
            result["runs"].append(r)
            torch.cuda.empty_cache()
    ok = [r for r in result["runs"] if r.get("mfu") is not None]
    result["best"] = max(ok, key=lambda r: r["mfu"]) if ok else None
    out = Path(os.environ.get("OUT", ".")) / "train_mfu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}; best MFU {result['best']['mfu'] if result['best'] else None}")


if __name__ == "__main__":
    main()
