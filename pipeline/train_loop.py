"""The training loop behind ``jobs/train_mvtm.py``: DeepSpeed engine, token stream, checkpoints.

- Config: ``TrainConfig`` (JSON file + ``key=value`` overrides); the DeepSpeed JSON holds the
  optimizer (AdamW, betas (0.9, 0.96), weight decay 0.045), precision, ZeRO stage, gradient
  clipping and accumulation; this config holds the data, model, objective and LR schedule.
- Determinism: the data order is a pure function of (seed, epoch) (``pipeline.stream``); the
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import transformer
from transformer.objectives import ObjectiveConfig, compute_objective

from .stream import StreamConfig, TokenStream

__all__ = ["TrainConfig", "load_train_config", "parse_overrides", "find_resume", "lr_factor", "train",
           "export_checkpoint", "export_run", "sample_grid", "deepspeed_command", "run_training", "jobs_dir", "COMPLETE"]

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE"
LR_SCHEDULES = ("cosine", "constant")


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """Everything the trainer needs besides the DeepSpeed JSON."""

    data: str
    """Token dataset root (directory or s3:// prefix with manifest.json)."""
    out: str
    """Run directory: checkpoints/, export/, metrics.jsonl, tb/."""
    model: str = "debug"
    """Transformer preset name."""
    model_overrides: dict = field(default_factory=dict)
    """TransformerConfig field overrides, e.g. {"num_classes": 11}."""
    objective: str = "mvtm"
    """'mvtm' or 'ar' (the AR baseline: forces causal=True on the model)."""
    label_smoothing: float = 0.1
    """Label smoothing of the token cross-entropy."""
    class_dropout: float = 0.0
    """Probability of the null class (classifier-free guidance); 0 = off."""
    null_label: int | None = None
    """Null class label for class dropout (None = num_classes - 1)."""
    format: str = "parquet"
    """Shard format to read: parquet or webdataset."""
    seed: int = 0
    """Seeds init, data order, masking and dropout."""
    steps: int = 100
    """Optimizer steps to train in total (a resumed run stops at the same step)."""
    warmup_steps: int = 10
    """Linear warmup from 0 to the DeepSpeed config's lr."""
    lr_schedule: str = "cosine"
    """After warmup: 'cosine' (to min_lr_ratio * lr at `steps`) or 'constant'."""
    min_lr_ratio: float = 0.0
    """Final lr of the cosine schedule as a fraction of the peak."""
    ema_decay: float = 0.0
    """EMA of the weights (e.g. 0.9999); 0 = off. Exported instead of the raw weights when on."""
    save_every: int = 50
    """Checkpoint every N optimizer steps (and at the end)."""
    keep_last: int = 3
    """Complete checkpoints to keep (older ones are deleted)."""
    log_every: int = 1
    """Log metrics every N optimizer steps."""
    num_workers: int = 0
    """DataLoader worker processes per rank."""
    block_size: int = 4096
    """Stream block size (rows)."""
    shuffle_buffer: int = 16384
    """Stream shuffle window (samples)."""
    skip_bad_shards: bool = False
    """Skip missing/corrupt shards (and count them) instead of failing."""
    universal: bool = False
    """Resume from a DeepSpeed universal checkpoint (after ds_to_universal.py), any world size."""
    sample_every: int = 0
    """Log a grid of 8 class-conditional samples to TensorBoard every N steps (0 = off; ZeRO 0-2)."""
    sample_tokenizer: str | None = None
    """Tokenizer checkpoint to decode samples into images; None logs the token-id maps as images."""
    stop_after: int | None = None
    """Stop (without final export) after this many steps of this run; for tests/preemption drills."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
        for name in ("steps", "save_every", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ValueError("warmup_steps must be >= 0 and ema_decay in [0, 1)")
        self.objective_config()  # validates objective fields

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(objective=self.objective, label_smoothing=self.label_smoothing,
                               class_dropout=self.class_dropout, null_label=self.null_label)

    def model_config(self) -> transformer.TransformerConfig:
        over = dict(self.model_overrides)
        if self.objective == "ar":
            over["causal"] = True
        return transformer.preset(self.model).replace(**over)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["steps=10", "model_overrides={\"causal\": true}", "data=/x"] -> dict (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value (e.g. steps=100)")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_train_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from a JSON file plus overrides; unknown keys list the valid ones."""
    d: dict[str, Any] = json.loads(Path(path).read_text()) if path else {}
    d.update(overrides)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown training config keys {unknown}; valid keys are {sorted(names)}")
    missing = [k for k in ("data", "out") if not d.get(k)]
    if missing:
        raise ValueError(f"training config lacks {missing}: pass --data DATASET and --out RUN_DIR "
                         "(or set them in the --config file)")
    return TrainConfig(**d)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def _tag(step: int) -> str:
    return f"step{step:08d}"


def find_resume(ckpt_root: str | os.PathLike) -> str | None:
    """The newest checkpoint tag under ``ckpt_root`` that holds the completion marker."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    tags = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step") and (p / COMPLETE).is_file())
    return tags[-1] if tags else None


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
        raise ValueError("ema_decay needs full parameters on every rank: use ZeRO stage 0-2 (ds_config_zero2.json)")

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
            raise ValueError(f"could not load checkpoint {tag!r} from {load_dir}")
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
        engine.save_checkpoint(str(ckpt_root), tag=_tag(step), client_state=client, save_latest=False)
        dist.barrier()
        if rank == 0:
            (ckpt_root / _tag(step) / COMPLETE).write_text(json.dumps({"step": step, **state}))
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
        export_dir = export_checkpoint(cfg, str(ckpt_root), _tag(state["step"]), out / "export", engine=engine,
                                       ema=ema, null_label=null_label, zero_stage=zero_stage)
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


def export_checkpoint(cfg: TrainConfig, ckpt_root: str, tag: str, out: str | os.PathLike, *, engine=None,
                      ema: "_Ema | None" = None, null_label: int | None = None, zero_stage: int = 0) -> Path | None:
    """Write ``model.safetensors`` + ``config.json`` (loadable by ``transformer.load``) on rank 0."""
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_initialized() else 0
    if ema is not None:
        state = {k: v.clone() for k, v in ema.shadow.items()}
    elif zero_stage == 0 and engine is not None:
        state = {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
    else:
        state = None
    if rank != 0:
        return None
    if state is None:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(ckpt_root, tag=tag)
    model = transformer.build(cfg.model_config())
    model.load_state_dict(state)
    extra = {"objective": cfg.objective, "trained_steps": int(tag.removeprefix("step")), "data": cfg.data}
    if null_label is not None:
        extra["null_label"] = null_label
    return transformer.save(model, out, extra=extra)


# ---------------------------------------------------------------- launching and exporting from outside

def jobs_dir() -> Path:
    """Where jobs/train_mvtm.py and the shipped DeepSpeed configs live."""
    import jobs

    return Path(jobs.__file__).resolve().parent


def deepspeed_command(*, data: str, out: str, nproc: int = 2, ds_config: str | None = None,
                      config: str | None = None, objective: str = "mvtm", resume: str | None = "auto",
                      overrides: list[str] | None = None, master_port: int = 29500) -> list[str]:
    """The `deepspeed` launcher command line that trains on ``nproc`` local ranks (CPU or GPU)."""
    import shutil
    import sys

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    jd = jobs_dir()
    if ds_config is None:
        ds_config = str(jd / ("ds_config.json" if torch.cuda.is_available() else "ds_config_cpu.json"))
    cmd = [launcher, "--num_gpus", str(nproc), "--master_port", str(master_port), str(jd / "train_mvtm.py"),
           "--deepspeed_config", ds_config, "--data", str(data), "--out", str(out), "--objective", objective]
    if config:
        cmd += ["--config", config]
    if resume:
        cmd += ["--resume", resume]
    return cmd + list(overrides or [])


def run_training(**kwargs: Any) -> dict[str, Any]:
    """Run ``deepspeed_command(**kwargs)`` to completion (OMP_NUM_THREADS=1 per rank on CPU);
    return the summary the job prints. Raises ValueError with the job's last error line on failure."""
    import subprocess

    cmd = deepspeed_command(**kwargs)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(jobs_dir().parent), env.get("PYTHONPATH")]))
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        errors = [ln for ln in lines if "error:" in ln] or lines[-5:]
        raise ValueError(f"training failed (exit {proc.returncode}): {errors[-1] if errors else ''}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, tag: str | None = None) -> Path:
    """Export a run's checkpoint (newest complete one by default) to safetensors + config.json.

    ZeRO-0 checkpoints are read with ``torch.load(weights_only=True)``; ZeRO >= 1 through
    DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint``. EMA weights win when present.
    """
    run = Path(run_dir)
    cfg_path = run / "train_config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{run}: no train_config.json; pass the run directory given as --out to train")
    cfg = load_train_config(str(cfg_path), {})
    root = run / "checkpoints"
    tag = tag or find_resume(root)
    if tag is None or not (root / tag / COMPLETE).is_file():
        raise ValueError(f"{root}: no complete checkpoint{f' {tag!r}' if tag else ''} (a checkpoint counts once "
                         f"its {COMPLETE} marker exists); train longer or pick another --tag")
    states = torch.load(root / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    stage = int(states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))
    if "ema" in states:
        state = states["ema"]
    elif stage == 0:
        state = {k: v.float() for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    model = transformer.build(cfg.model_config())
    model.load_state_dict(state)
    extra = {"objective": cfg.objective, "trained_steps": int(tag.removeprefix("step")), "data": cfg.data}
    null_label = cfg.objective_config().resolved_null_label(model.config)
    if null_label is not None:
        extra["null_label"] = null_label
    return transformer.save(model, out, extra=extra)
