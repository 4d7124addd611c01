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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import transformer
from transformer.objectives import compute_objective

from pipeline.data.stream import StreamConfig, TokenStream
from pipeline.train.checkpoint import (COMPLETE, check_loadable_safely, commit_tag, find_resume, prune,
                                       resolve_resume, settings_difference, tag_name, temp_tag)
from pipeline.train.config import TrainConfig, ds_batch_sizes, lr_factor
from pipeline.train.export import export_checkpoint
from maskgit_core.errors import CheckpointError, ConfigError

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


@dataclass
class _Engine:
    """The DeepSpeed engine of a run with what the loop needs to know about it."""

    engine: Any
    scheduler: Any
    ema: "_Ema | None"
    model_cfg: transformer.TransformerConfig
    null_label: int | None
    micro: int
    """Micro-batch per rank."""
    accum: int
    """Gradient accumulation steps."""
    zero_stage: int


def _build_engine(cfg: TrainConfig, ds_config: dict[str, Any], *, world: int) -> _Engine:
    """The model, its AdamW parameter groups (no decay on biases/norms) and the LR schedule, under DeepSpeed."""
    import deepspeed

    mcfg = cfg.model_config()
    ocfg = cfg.objective_config()
    ocfg.check_model(mcfg)
    ds = dict(ds_config)
    if cfg.universal:
        ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
    micro, accum, ds["train_batch_size"] = ds_batch_sizes(ds, world)
    zero_stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if cfg.ema_decay and zero_stage >= 3:
        raise ConfigError("ema_decay needs full parameters on every rank: use ZeRO stage 0-2 (ds_config_zero2.json)")

    torch.manual_seed(cfg.seed)
    model = transformer.build(mcfg)
    model.gradient_checkpointing = cfg.activation_checkpointing
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
        opt, lambda s: lr_factor(s, warmup=cfg.warmup_steps, total=cfg.steps, schedule=cfg.lr_schedule,
                                 min_ratio=cfg.min_lr_ratio))
    engine, _, _, scheduler = deepspeed.initialize(model=model, model_parameters=groups, config=ds,
                                                   lr_scheduler=sched)
    if cfg.compile:
        engine.compile()  # torch.compile of the wrapped module, inductor backend
    ema = _Ema(engine.module, cfg.ema_decay) if cfg.ema_decay else None
    return _Engine(engine, scheduler, ema, mcfg, ocfg.resolved_null_label(mcfg), micro, accum, zero_stage)


def run_settings(cfg: TrainConfig, model_cfg: transformer.TransformerConfig) -> dict[str, Any]:
    """What a checkpoint means: a resume with other values would silently train something else."""
    return {"seed": cfg.seed, "objective": cfg.objective, "data": cfg.data, "format": cfg.format,
            "model": model_cfg.to_dict(),
            "stream": {"block_size": cfg.block_size, "shuffle_buffer": cfg.shuffle_buffer, "partitions": cfg.partitions}}


def _resume(cfg: TrainConfig, run: _Engine, ckpt_root: Path, resume: str | None, *, rank: int,
            world: int) -> dict[str, int]:
    """The loop state ``{step, micro_step, samples_seen}`` after loading ``resume`` ('auto' = the newest
    complete checkpoint, a tag, or a path); zeros when there is nothing to resume. Refuses a checkpoint
    that is incomplete, was made with other run settings, or holds more than tensors and plain data."""
    state = {"step": 0, "micro_step": 0, "samples_seen": 0}
    found = resolve_resume(ckpt_root, resume)
    if found is None:
        newest = find_resume(ckpt_root)
        if newest is not None:
            raise CheckpointError(f"{ckpt_root} already holds checkpoints (newest {newest}) and --resume is none: "
                                  "continue them with --resume auto, or train into a new --out directory")
        return state
    load_dir, tag = found
    current = run_settings(cfg, run.model_cfg)
    marker = json.loads((load_dir / tag / COMPLETE).read_text())
    _check_settings(marker.get("settings", {}), current, load_dir / tag)
    check_loadable_safely(load_dir / tag)
    path, client = run.engine.load_checkpoint(str(load_dir), tag=tag)
    if path is None:
        raise CheckpointError(f"could not load checkpoint {tag!r} from {load_dir}")
    _check_settings(client.get("settings", {k: client[k] for k in ("seed", "objective", "format") if k in client}),
                    current, load_dir / tag)
    state = {k: int(client[k]) for k in state}
    if run.ema is not None and "ema" in client:
        run.ema.shadow = {k: v.float() for k, v in client["ema"].items()}
    if rank == 0:
        log.info("resumed %s: step %d, stream at global sample %d (saved by %d ranks, now %d)", tag,
                 state["step"], state["samples_seen"], client.get("world_size", -1), world)
    return state


def _check_settings(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    diff = settings_difference(saved, current)
    if diff:
        raise CheckpointError(f"{where} was saved by a run with other settings ({'; '.join(diff)}); resume with "
                              "the same settings, or train into a new --out directory")


def _loader(cfg: TrainConfig, run: _Engine, *, rank: int, world: int, start: int):
    """This rank's token stream from global sample ``start`` and its DataLoader."""
    stream = TokenStream(StreamConfig(data=cfg.data, batch_size=run.micro, format=cfg.format, seed=cfg.seed,
                                      block_size=cfg.block_size, shuffle_buffer=cfg.shuffle_buffer,
                                      partitions=cfg.partitions, skip_bad_shards=cfg.skip_bad_shards),
                         codebook_size=run.model_cfg.codebook_size, latent_size=run.model_cfg.latent_size,
                         num_classes=run.model_cfg.num_classes - (1 if run.null_label is not None else 0),
                         rank=rank, world_size=world, start=start)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0)
    return stream, loader


def _save(cfg: TrainConfig, run: _Engine, ckpt_root: Path, state: dict[str, int], *, rank: int, world: int) -> None:
    """Every rank saves under a temporary tag; once all have, rank 0 commits it (fsync, rename,
    COMPLETE last) and drops the oldest complete checkpoints beyond ``keep_last``."""
    import torch.distributed as dist

    step = state["step"]
    settings = run_settings(cfg, run.model_cfg)
    client = {**state, "world_size": world, "seed": cfg.seed, "rng": torch.get_rng_state(),
              "format": cfg.format, "objective": cfg.objective, "settings": settings}
    if run.ema is not None:
        client["ema"] = run.ema.shadow
    if rank == 0 and (ckpt_root / temp_tag(step)).exists():  # left by a save that was killed
        shutil.rmtree(ckpt_root / temp_tag(step))
    dist.barrier()
    run.engine.save_checkpoint(str(ckpt_root), tag=temp_tag(step), client_state=client, save_latest=False)
    dist.barrier()
    if rank == 0:
        commit_tag(ckpt_root, step, {"step": step, **state, "settings": settings})
        for old in prune(ckpt_root, current_step=step, keep_last=cfg.keep_last):
            log.info("removed checkpoint %s (keep_last=%d)", old, cfg.keep_last)
    dist.barrier()


class _Meter:
    """Metrics between log steps: loss and accuracy of the last optimizer step (summed over its
    micro-steps on the device: no host sync per micro-step), and the samples, stream-index range and
    sample-id sum since the last log step (the coverage checks of the tests)."""

    def __init__(self, device):
        self.device = device
        self.step_sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss / accum, correct, scored
        self.last = self.step_sums.clone()
        self.zero_log()

    def zero_log(self) -> None:
        self.t0, self.samples = time.perf_counter(), 0
        self.idx_min, self.idx_max, self.id_sum = math.inf, -1, 0

    def add(self, o, batch: dict[str, torch.Tensor], accum: int) -> None:
        self.step_sums[0] += o.loss.detach().double() / accum
        self.step_sums[1] += torch.as_tensor(o.correct, dtype=torch.float64, device=self.device)
        self.step_sums[2] += torch.as_tensor(o.scored, dtype=torch.float64, device=self.device)
        self.idx_min = min(self.idx_min, int(batch["index"].min()))
        self.idx_max = max(self.idx_max, int(batch["index"].max()))
        self.id_sum += int(batch["sample_id"].sum())
        self.samples += len(batch["index"])

    def end_step(self) -> None:
        self.last, self.step_sums = self.step_sums, torch.zeros_like(self.step_sums)

    def row(self, run: _Engine, state: dict[str, int], *, world: int) -> dict[str, Any]:
        """All-reduce over ranks (every rank calls this) and the metrics row (used on rank 0)."""
        import torch.distributed as dist

        t = torch.cat([self.last.cpu(), torch.tensor([self.samples, self.id_sum], dtype=torch.float64)])
        dist.all_reduce(t)
        lo = torch.tensor([-self.idx_min, self.idx_max], dtype=torch.float64)
        dist.all_reduce(lo, op=dist.ReduceOp.MAX)
        dt = time.perf_counter() - self.t0
        samples = float(t[3])
        self.zero_log()
        return {"step": state["step"], "loss": float(t[0]) / world, "masked_acc": float(t[1] / max(t[2], 1)),
                "lr": run.scheduler.get_last_lr()[0], "samples_seen": state["samples_seen"],
                "index_min": int(-lo[0]), "index_max": int(lo[1]), "sample_id_sum": int(t[4]),
                "samples_per_s": samples / dt, "tokens_per_s": samples * run.model_cfg.seq_len / dt,
                "world_size": world}


class _Logger:
    """Rank 0's outputs: train_config.json, metrics.jsonl, TensorBoard scalars and sample grids."""

    def __init__(self, cfg: TrainConfig, out: Path):
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        self.cfg, self.metrics, self.writer, self.tokenizer = cfg, out / "metrics.jsonl", SummaryWriter(str(out / "tb")), None

    def log(self, row: dict[str, Any]) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k in ("loss", "masked_acc", "lr", "samples_per_s", "tokens_per_s"):
            self.writer.add_scalar(f"train/{k}", row[k], row["step"])
        log.info("step %d loss %.4f acc %.3f lr %.2e %.0f samples/s", row["step"], row["loss"],
                 row["masked_acc"], row["lr"], row["samples_per_s"])

    def samples(self, run: _Engine, step: int) -> None:
        if run.zero_stage >= 3:
            log.warning("sample_every needs full parameters on rank 0; not sampling under ZeRO-3")
            return
        if self.tokenizer is None and self.cfg.sample_tokenizer:
            import tokenizer as tokenizer_pkg
            self.tokenizer = tokenizer_pkg.load(self.cfg.sample_tokenizer)
        grid = sample_grid(run.engine.module, objective=self.cfg.objective, tokenizer=self.tokenizer,
                           null_label=run.null_label)
        self.writer.add_image("samples", grid, step)


def train(cfg: TrainConfig, ds_config: dict[str, Any], *, resume: str | None = None) -> dict[str, Any]:
    """Run (or resume) training under an initialised torch.distributed; return a summary (rank 0)."""
    import torch.distributed as dist

    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(cfg.out)
    ckpt_root = out / "checkpoints"
    run = _build_engine(cfg, ds_config, world=world)
    state = _resume(cfg, run, ckpt_root, resume, rank=rank, world=world)
    stream, loader = _loader(cfg, run, rank=rank, world=world, start=state["samples_seen"])
    logger = _Logger(cfg, out) if rank == 0 else None
    if logger is not None and stream.skipped_samples:
        log.warning("skipping %d samples of bad shards", stream.skipped_samples)

    engine, ocfg = run.engine, cfg.objective_config()
    engine.train()
    net = _ConfiguredEngine(engine, run.model_cfg)
    meter = _Meter(engine.device)
    start_step = state["step"]
    it = iter(loader)
    while state["step"] < cfg.steps and (cfg.stop_after is None or state["step"] - start_step < cfg.stop_after):
        batch = next(it)
        torch.manual_seed(_seed(cfg.seed, state["micro_step"], rank))  # dropout
        gen = torch.Generator(device=engine.device).manual_seed(_seed(cfg.seed, int(batch["index"][0]), 7))
        o = compute_objective(net, batch["images"].to(engine.device), batch["labels"].to(engine.device), ocfg,
                              generator=gen)
        engine.backward(o.loss)
        engine.step()
        state["micro_step"] += 1
        state["samples_seen"] += run.micro * world
        meter.add(o, batch, run.accum)
        if state["micro_step"] % run.accum != 0:
            continue
        state["step"] += 1
        meter.end_step()
        if run.ema is not None:
            run.ema.update(engine.module)
        if state["step"] % cfg.log_every == 0 or state["step"] == cfg.steps:
            row = meter.row(run, state, world=world)
            if logger is not None:
                logger.log(row)
        if cfg.sample_every and state["step"] % cfg.sample_every == 0 and logger is not None:
            logger.samples(run, state["step"])
        if state["step"] % cfg.save_every == 0 or state["step"] == cfg.steps:
            _save(cfg, run, ckpt_root, state, rank=rank, world=world)
    summary = {"step": state["step"], "samples_seen": state["samples_seen"], "skipped_samples": stream.skipped_samples}
    if state["step"] >= cfg.steps:
        export_dir = export_checkpoint(cfg, str(ckpt_root), tag_name(state["step"]), out / "export", engine=engine,
                                       ema=run.ema, zero_stage=run.zero_stage)
        summary["export"] = str(export_dir)
    if logger is not None:
        logger.writer.close()
    return summary


class _ConfiguredEngine(torch.nn.Module):
    """The engine's forward with the model's ``config`` visible (compute_objective reads it)."""

    def __init__(self, engine, config):
        super().__init__()
        self.engine, self.config = engine, config

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.engine(tokens)
