"""The training loop behind ``jobs/train_mvtm.py``: DeepSpeed engine, token stream, checkpoints.

- Config: ``TrainConfig`` (JSON file + ``key=value`` overrides); the DeepSpeed JSON holds the
  optimizer (AdamW, betas (0.9, 0.96), weight decay 0.045), precision, ZeRO stage, gradient
  clipping and accumulation; this config holds the data, model, objective and LR schedule.
- Determinism: the data order is a pure function of (seed, epoch) (``pipeline.data.stream``); the
  masking RNG of each micro-batch is seeded from (seed, the batch's first stream index) and the
  dropout RNG from (seed, micro step, rank). A resumed run therefore replays exactly what an
  uninterrupted one would have done; the checkpoint still records the RNG states for inspection.
- Checkpoints: ``<out>/checkpoints/step00000042/`` through ``engine.save_checkpoint`` with client
  state ``{step, micro_step, samples_seen, seed, rng}``; rank 0 writes ``COMPLETE`` last, after
  every rank finished. ``resume='auto'`` picks the newest directory holding ``COMPLETE``.
- Resume onto another world size: the stream continues at ``samples_seen`` on any world size.
  The weights/optimizer load directly for ZeRO stage 0; for ZeRO >= 1 convert first with
  DeepSpeed's ``ds_to_universal.py`` and set ``universal=true`` (``checkpoint.load_universal``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

import transformer
from transformer.objectives import compute_objective

from pipeline.data.stream import StreamConfig, TokenStream
from pipeline.train.checkpoint import COMPLETE, find_resume, tag_name
from pipeline.train.config import TrainConfig, lr_factor
from pipeline.train.export import export_checkpoint
from maskgit_core.errors import ConfigError

__all__ = ["train", "sample_grid"]

log = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


class _Ema:
    """fp32 EMA of the parameters (ZeRO stages 0-2, where every rank holds full parameters)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, p in module.named_parameters():
            self.shadow[k].mul_(self.decay).add_(p.detach().float(), alpha=1.0 - self.decay)


def sample_grid(model: torch.nn.Module, *, objective: str, tokenizer=None, n: int = 8,
                null_label: int | None = None) -> torch.Tensor:
    """A (3, H, n*W) image in [0, 1] of ``n`` class-conditional samples (classes 0, 1, ...; seed 0)."""
    from transformer.ar_sampling import ar_sample_tokens
    from transformer.sampling import sample_tokens

    cfg = model.config
    classes = [c for c in range(cfg.num_classes) if c != null_label]
    labels = torch.tensor([classes[i % len(classes)] for i in range(n)])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        if objective == "ar":
            tokens = ar_sample_tokens(model, labels, seed=0)  # (n, h, w)
        else:
            tokens = sample_tokens(model, labels, steps=8, seed=0).tokens  # (n, h, w)
        tokens = tokens.cpu()
        if tokenizer is not None:
            images = tokenizer.decode_ids(tokens).clamp(0, 1)  # (n, 3, H, W)
        else:
            images = (tokens.float() / (cfg.codebook_size - 1))[:, None].repeat(1, 3, 1, 1)  # (n, 3, h, w)
            scale = max(1, 32 // cfg.latent_size)
            images = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    model.train(was_training)
    return torch.cat(list(images.float()), dim=2)  # (3, H, n*W)


def _write_metrics(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def train(cfg: TrainConfig, ds_config: dict[str, Any], *, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) training under an initialised torch.distributed; return a summary (rank 0)."""
    import deepspeed
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    mcfg = cfg.model_config()
    ocfg = cfg.objective_config()
    ocfg.check_model(mcfg)
    null_label = ocfg.resolved_null_label(mcfg)

    ds = dict(ds_config)
    if cfg.universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    micro = int(ds.get("train_micro_batch_size_per_gpu", 8))
    accum = int(ds.get("gradient_accumulation_steps", 1))
    ds["train_batch_size"] = micro * accum * world
    zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if cfg.ema_decay and zero_stage >= 3:
        raise ConfigError("ema_decay needs full parameters on every rank: use ZeRO stage 0-2 (ds_config_zero2.json)")

    torch.manual_seed(cfg.seed)
    model = transformer.build(mcfg)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: lr_factor(s, warmup=cfg.warmup_steps, total=cfg.steps, schedule=cfg.lr_schedule,
                                 min_ratio=cfg.min_lr_ratio))
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=groups, config=ds,
                                                   lr_scheduler=sched)
    ema = _Ema(engine.module, cfg.ema_decay) if cfg.ema_decay else None

    state = {"step": 0, "micro_step": 0, "samples_seen": 0}
    tag = find_resume(ckpt_root) if resume == "auto" else resume
    if tag:
        load_dir = str(ckpt_root) if resume == "auto" or not os.path.isabs(tag) else str(Path(tag).parent)
        path, client = engine.load_checkpoint(load_dir, tag=Path(tag).name)
        if path is None:
            raise ConfigError(f"could not load checkpoint {tag!r} from {load_dir}")
        state = {k: int(client[k]) for k in state}
        if ema is not None and "ema" in client:
            ema.shadow = {k: v.float() for k, v in client["ema"].items()}
        if rank == 0:
            log.info("resumed %s: step %d, stream at global sample %d (saved by %d ranks, now %d)", tag,
                     state["step"], state["samples_seen"], client.get("world_size", -1), world)

    stream = TokenStream(StreamConfig(data=cfg.data, batch_size=micro, format=cfg.format, seed=cfg.seed,
                                      block_size=cfg.block_size, shuffle_buffer=cfg.shuffle_buffer,
                                      skip_bad_shards=cfg.skip_bad_shards),
                         codebook_size=mcfg.codebook_size, latent_size=mcfg.latent_size,
                         num_classes=mcfg.num_classes - (1 if null_label is not None else 0),
                         rank=rank, world_size=world, start=state["samples_seen"])
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0)
    writer = None
    metrics = out / "metrics.jsonl"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(out / "tb"))
        if stream.skipped_samples:
            log.warning("skipping %d samples of bad shards", stream.skipped_samples)

    def save(step: int) -> None:
        client = {**state, "world_size": world, "seed": cfg.seed, "rng": torch.get_rng_state(),
                  "format": cfg.format, "objective": cfg.objective}
        if ema is not None:
            client["ema"] = ema.shadow
        engine.save_checkpoint(str(ckpt_root), tag=tag_name(step), client_state=client, save_latest=False)
        dist.barrier()
        if rank == 0:
            (ckpt_root / tag_name(step) / COMPLETE).write_text(json.dumps({"step": step, **state}))
            done = sorted(p for p in ckpt_root.iterdir() if (p / COMPLETE).is_file())
            for old in done[:-cfg.keep_last]:
                (old / COMPLETE).unlink()
                import shutil
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    engine.train()
    net = _ConfiguredEngine(engine, mcfg)
    tokenizer = None
    start_step = state["step"]
    acc_loss = acc_correct = acc_scored = 0.0
    idx_min, idx_max, id_sum = math.inf, -1, 0
    t0, step_samples = time.perf_counter(), 0
    it = iter(loader)
    while state["step"] < cfg.steps and (cfg.stop_after is None or state["step"] - start_step < cfg.stop_after):
        batch = next(it)
        torch.manual_seed(_seed(cfg.seed, state["micro_step"], rank))  # dropout
        gen = torch.Generator(device=engine.device).manual_seed(_seed(cfg.seed, int(batch["index"][0]), 7))
        images = batch["images"].to(engine.device)
        labels = batch["labels"].to(engine.device)
        o = compute_objective(net, images, labels, ocfg, generator=gen)
        engine.backward(o.loss)
        engine.step()
        state["micro_step"] += 1
        state["samples_seen"] += micro * world
        acc_loss += float(o.loss.detach()) / accum
        acc_correct += float(o.correct)
        acc_scored += float(o.scored)
        idx_min, idx_max = min(idx_min, int(batch["index"].min())), max(idx_max, int(batch["index"].max()))
        id_sum += int(batch["sample_id"].sum())
        step_samples += len(images)
        if state["micro_step"] % accum != 0:
            continue
        state["step"] += 1
        if ema is not None:
            ema.update(engine.module)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            t = torch.tensor([acc_loss, acc_correct, acc_scored, step_samples, id_sum], dtype=torch.float64)
            dist.all_reduce(t)
            lo = torch.tensor([-idx_min, idx_max], dtype=torch.float64)
            dist.all_reduce(lo, op=dist.ReduceOp.MAX)
            if rank == 0:
                dt = time.perf_counter() - t0
                samples = float(t[3])
                row = {"step": state["step"], "loss": float(t[0]) / world, "masked_acc": float(t[1] / max(t[2], 1)),
                       "lr": scheduler.get_last_lr()[0], "samples_seen": state["samples_seen"],
                       "index_min": int(-lo[0]), "index_max": int(lo[1]), "sample_id_sum": int(t[4]),
                       "samples_per_s": samples / dt, "tokens_per_s": samples * mcfg.seq_len / dt,
                       "world_size": world}
                _write_metrics(metrics, row)
                for k in ("loss", "masked_acc", "lr", "samples_per_s", "tokens_per_s"):
                    writer.add_scalar(f"train/{k}", row[k], state["step"])
                log.info("step %d loss %.4f acc %.3f lr %.2e %.0f samples/s", row["step"], row["loss"],
                         row["masked_acc"], row["lr"], row["samples_per_s"])
            t0, step_samples = time.perf_counter(), 0
            idx_min, idx_max, id_sum = math.inf, -1, 0
        acc_loss = acc_correct = acc_scored = 0.0
        if cfg.sample_every and state["step"] % cfg.sample_every == 0 and rank == 0:
            if zero_stage >= 3:
                log.warning("sample_every needs full parameters on rank 0; not sampling under ZeRO-3")
            else:
                if tokenizer is None and cfg.sample_tokenizer:
                    import tokenizer as tokenizer_pkg
                    tokenizer = tokenizer_pkg.load(cfg.sample_tokenizer)
                grid = sample_grid(engine.module, objective=cfg.objective,
                                   tokenizer=tokenizer, null_label=null_label)
                writer.add_image("samples", grid, state["step"])
        if state["step"] % cfg.save_every == 0 or state["step"] == cfg.steps:
            save(state["step"])
    summary = {"step": state["step"], "samples_seen": state["samples_seen"], "skipped_samples": stream.skipped_samples}
    if state["step"] >= cfg.steps:
        export_dir = export_checkpoint(cfg, str(ckpt_root), tag_name(state["step"]), out / "export", engine=engine,
                                       ema=ema, zero_stage=zero_stage)
        summary["export"] = str(export_dir)
    if writer is not None:
        writer.close()
    return summary


class _ConfiguredEngine(torch.nn.Module):
    """The engine's forward with the model's ``config`` visible (compute_objective reads it)."""

    def __init__(self, engine, config):
        super().__init__()
        self.engine, self.config = engine, config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.engine(tokens)
