"""The demo's stages 6-7: MVTM and the same-size AR baseline, trained through the ``deepspeed`` launcher
(``pipeline.train.launcher.run_training``) on 2 CPU ranks, on the same tokens for the same steps."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.demo.context import DemoContext, plot_curves

__all__ = ["stage_train_mvtm", "stage_train_ar"]

RANKS = 2
"""CPU ranks the deepspeed launcher starts (the stage titles say so)."""


def _train(ctx: DemoContext, objective: str) -> dict[str, Any]:
    """Train ``objective`` (mvtm | ar) on the train tokens; the run's metrics, loss history and export."""
    from pipeline.train.launcher import free_port, jobs_dir, run_training

    settings = ctx.settings
    tokens = ctx.need("tokens", "tokenize")
    nc = ctx.num_classes() + 1  # + the null class of classifier-free guidance (class dropout)
    steps = settings.train_steps
    run = ctx.out / "runs" / objective
    ds = json.loads((jobs_dir() / "ds_config_cpu.json").read_text())
    ds["optimizer"]["params"]["lr"] = settings.train_lr
    ds_path = ctx.out / "runs" / "ds_config_demo.json"
    ds_path.parent.mkdir(parents=True, exist_ok=True)
    ds_path.write_text(json.dumps(ds, indent=1) + "\n")
    overrides = [f"steps={steps}", f"model={settings.transformer_preset}", f"warmup_steps={max(10, steps // 20)}",
                 f'model_overrides={{"num_classes": {nc}}}', "class_dropout=0.1", f"seed={settings.seed}",
                 "save_every=100000", "keep_last=1", "block_size=256", "shuffle_buffer=4096"]
    ctx.say(f"  deepspeed launcher, {RANKS} CPU ranks: {objective}, {steps} steps ...")
    t0 = time.perf_counter()
    summary = run_training(data=str(tokens), out=str(run), nproc=RANKS, objective=objective,
                           ds_config=str(ds_path), config=str(jobs_dir() / "train_debug.json"),
                           overrides=overrides, master_port=free_port())
    wall = time.perf_counter() - t0
    if "export" not in summary:
        raise RuntimeError(f"{objective} training stopped at step {summary.get('step')} without an export")
    hist = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [h["loss"] for h in hist]
    tail = losses[-max(1, len(losses) // 10):]
    m = {"steps": summary["step"], "samples_seen": summary["samples_seen"], "seconds": round(wall, 1),
         "lr": settings.train_lr,
         "first_loss": losses[0], "final_loss_mean_last_10pct": float(np.mean(tail)),
         "final_masked_acc": hist[-1].get("masked_acc"), "export": summary["export"], "num_classes": nc,
         "null_label": nc - 1, "ranks": hist[-1].get("world_size"),
         "samples_per_s": float(np.mean([h["samples_per_s"] for h in hist[len(hist) // 10:]])),
         "loss_history": {"step": [h["step"] for h in hist], "loss": losses}}
    return m


def stage_train_mvtm(ctx: DemoContext) -> None:
    """MVTM through the deepspeed launcher on 2 CPU ranks; paths["mvtm"] = the export."""
    m = _train(ctx, "mvtm")
    ctx.paths["mvtm"] = Path(m["export"])
    ctx.metrics["train_mvtm"] = m
    h = m["loss_history"]
    fig = plot_curves(ctx.out / "figures" / "loss_mvtm.png", {"MVTM": (h["step"], h["loss"])},
                      title="MVTM training loss (masked tokens)")
    ctx.add_figure("train_mvtm", "MVTM training loss per step (cross-entropy on the masked tokens)", fig)
    ctx.add_text("train_mvtm",
                 f"`run_training(objective='mvtm')`: the `deepspeed` launcher started {m['ranks']} CPU ranks "
                 f"(gloo, ZeRO-0, `jobs/ds_config_cpu.json` with peak lr {m['lr']:g}, micro-batch 8 per rank) of "
                 "`jobs/train_mvtm.py`; "
                 f"preset `{ctx.settings.transformer_preset}` with {m['num_classes']} classes ({m['null_label']} "
                 f"+ the null class {m['null_label']} for class dropout 0.1), {m['steps']} steps in "
                 f"{m['seconds']:.0f} s wall (launcher start-up included). Loss {m['first_loss']:.3f} -> "
                 f"{m['final_loss_mean_last_10pct']:.3f} (mean of the last 10 % of steps), masked-token accuracy "
                 f"{m['final_masked_acc']:.3f}.")


def stage_train_ar(ctx: DemoContext) -> None:
    """The same-size causal AR baseline on the same tokens for the same steps; paths["ar"]."""
    m = _train(ctx, "ar")
    ctx.paths["ar"] = Path(m["export"])
    ctx.metrics["train_ar"] = m
    series = {"AR (next token)": (m["loss_history"]["step"], m["loss_history"]["loss"])}
    if "train_mvtm" in ctx.metrics:
        h = ctx.metrics["train_mvtm"]["loss_history"]
        series = {"MVTM (masked tokens)": (h["step"], h["loss"]), **series}
    fig = plot_curves(ctx.out / "figures" / "loss_curves.png", series, title="Training loss, MVTM and AR")
    ctx.add_figure("train_ar", "Training losses of MVTM and the AR baseline (same preset, tokens, steps and "
                   "batch). The two losses score different predictions (masked tokens given the visible ones vs "
                   "the next token given the previous ones), so their values are not a quality comparison.", fig)
    ctx.add_text("train_ar",
                 f"`run_training(objective='ar')`: the same preset with `causal=True`, same tokens, same "
                 f"{m['steps']} steps of the same batch, {m['seconds']:.0f} s wall. Loss {m['first_loss']:.3f} -> "
                 f"{m['final_loss_mean_last_10pct']:.3f} (mean of the last 10 % of steps), next-token accuracy "
                 f"{m['final_masked_acc']:.3f}.")

