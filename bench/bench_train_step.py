"""CPU: one DeepSpeed training step vs a plain PyTorch loop of the same model and batch.

Same transformer preset, MVTM objective, AdamW (torch), gradient clipping 1.0, fp32, one
process (DeepSpeed on gloo, ZeRO-0 as jobs/ds_config_cpu.json). Timed in alternating blocks
in one run so that machine noise hits both alike; reports the median step time of each.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_train_step.py [--preset demo] [--batch 64]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": "29531"}.items():
    os.environ.setdefault(k, v)

import torch  # noqa: E402

import transformer  # noqa: E402
from pipeline.train.loop import _ConfiguredEngine  # noqa: E402
from transformer.objectives import ObjectiveConfig, compute_objective  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="demo")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--steps", type=int, default=10, help="steps per block")
    a = p.parse_args()
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    cfg = transformer.preset(a.preset)
    ocfg = ObjectiveConfig()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, cfg.codebook_size, (a.batch, cfg.num_image_tokens), generator=g)
    labels = torch.randint(0, cfg.num_classes, (a.batch,), generator=g)

    torch.manual_seed(0)
    plain = transformer.build(cfg)
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-4, betas=(0.9, 0.96), weight_decay=0.045)

    def plain_step() -> None:
        out = compute_objective(plain, images, labels, ocfg, generator=torch.Generator().manual_seed(1))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        opt.step()

    ds_cfg = json.loads((Path(__file__).resolve().parents[1] / "jobs" / "ds_config_cpu.json").read_text())
    ds_cfg["train_micro_batch_size_per_gpu"] = a.batch
    ds_cfg["train_batch_size"] = a.batch
    ds_cfg["optimizer"]["params"]["lr"] = 1e-4
    torch.manual_seed(0)
    engine, *_ = deepspeed.initialize(model=transformer.build(cfg), config=ds_cfg,
                                      model_parameters=None)
    net = _ConfiguredEngine(engine, cfg)  # compute_objective reads model.config

    def ds_step() -> None:
        out = compute_objective(net, images, labels, ocfg, generator=torch.Generator().manual_seed(1))
        engine.backward(out.loss)
        engine.step()

    for f in (plain_step, ds_step):
        for _ in range(3):
            f()
    times: dict[str, list[float]] = {"plain": [], "deepspeed": []}
    for _ in range(a.blocks):
        for name, f in (("plain", plain_step), ("deepspeed", ds_step)):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                f()
            times[name].append((time.perf_counter() - t0) / a.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"preset": a.preset, "batch": a.batch, "threads": torch.get_num_threads(),
           "plain_ms": round(med["plain"] * 1e3, 2), "deepspeed_ms": round(med["deepspeed"] * 1e3, 2),
           "overhead_pct": round(100 * (med["deepspeed"] / med["plain"] - 1), 1)}
    print(f"{'preset':<8}{'batch':>6}{'plain ms':>10}{'deepspeed ms':>14}{'overhead %':>12}")
    print(f"{a.preset:<8}{a.batch:>6}{row['plain_ms']:>10}{row['deepspeed_ms']:>14}{row['overhead_pct']:>12}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
