"""The training config (``TrainConfig``): a JSON file plus ``key=value`` overrides, and the LR schedule.

The DeepSpeed JSON holds the optimizer (AdamW, betas (0.9, 0.96), weight decay 0.045), precision,
ZeRO stage, gradient clipping and accumulation; this config holds the data, model, objective and
LR schedule.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import transformer
from transformer.objectives import ObjectiveConfig
from maskgit_core.errors import ConfigError

__all__ = ["TrainConfig", "load_train_config", "parse_overrides", "lr_factor", "LR_SCHEDULES", "ds_batch_sizes"]

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
    shuffle_buffer: int = 65536
    """Stream shuffle window (samples held in the windows of all parts together)."""
    partitions: int = 64
    """Stream parts interleaved sample by sample; a world size dividing it reads 1/W of the data per rank."""
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
    activation_checkpointing: bool = False
    """Recompute each transformer layer's activations in backward (less memory, ~1/3 more compute)."""
    compile: bool = False
    """``torch.compile`` the model through DeepSpeed's ``engine.compile()`` (where it helps: measure)."""
    export_provenance: bool = True
    """Record the token dataset's location (``data``) in exported config.json; false keeps paths out."""

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {list(LR_SCHEDULES)}")
        for name in ("steps", "save_every", "log_every", "keep_last"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.warmup_steps < 0 or not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("warmup_steps must be >= 0 and ema_decay in [0, 1)")
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
            raise ConfigError(f"override {item!r} is not key=value (e.g. steps=100)")
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
        raise ConfigError(f"unknown training config keys {unknown}; valid keys are {sorted(names)}")
    missing = [k for k in ("data", "out") if not d.get(k)]
    if missing:
        raise ConfigError(f"training config lacks {missing}: pass --data DATASET and --out RUN_DIR "
                          "(or set them in the --config file)")
    try:
        return TrainConfig(**d)
    except TypeError as e:  # e.g. steps="ten": the comparison in __post_init__ fails
        raise ConfigError(f"training config has a value of the wrong type ({e}); see docs/TRAIN.md for each key's "
                          "type") from None


def ds_batch_sizes(ds_config: dict[str, Any], world: int) -> tuple[int, int, int]:
    """(micro-batch per rank, gradient accumulation, global batch) of a DeepSpeed config on ``world`` ranks.

    A config that states ``train_batch_size`` (the recipes in jobs/imagenet256/ do) is written for one
    world size: it must equal micro x accumulation x world, else this raises before DeepSpeed starts,
    naming the world size the config is for. Without it the global batch is micro x accumulation x world.
    """
    micro = int(ds_config.get("train_micro_batch_size_per_gpu", 8))
    accum = int(ds_config.get("gradient_accumulation_steps", 1))
    if micro <= 0 or accum <= 0:
        raise ConfigError(f"the DeepSpeed config's train_micro_batch_size_per_gpu ({micro}) and "
                          f"gradient_accumulation_steps ({accum}) must be positive")
    batch = micro * accum * world
    declared = ds_config.get("train_batch_size")
    if declared is not None and int(declared) != batch:
        per = micro * accum
        meant = (f"the config is written for {int(declared) // per} ranks: run it on {int(declared) // per}, or "
                 if int(declared) % per == 0 else "")
        raise ConfigError(
            f"the DeepSpeed config's train_batch_size {declared} is not train_micro_batch_size_per_gpu {micro} x "
            f"gradient_accumulation_steps {accum} x {world} ranks = {batch}; {meant}choose the micro-batch and "
            f"the accumulation so that micro x accumulation x {world} = {declared} (the ImageNet recipe ships "
            "configs for 1, 8 and 16 GPUs: docs/TRAIN.md)")
    return micro, accum, batch


def lr_factor(step: int, *, warmup: int, total: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup, then schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
