"""Export a training checkpoint to ``model.safetensors`` + ``config.json`` (what ``sample`` loads)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

import transformer
from maskgit_core.errors import CheckpointError

from pipeline.train.checkpoint import COMPLETE, check_loadable_safely, find_resume
from pipeline.train.config import TrainConfig, load_train_config

__all__ = ["export_checkpoint", "export_run", "save_export"]


def save_export(cfg: TrainConfig, state: dict[str, torch.Tensor], tag: str, out: str | os.PathLike, *,
                provenance: bool | None = None) -> Path:
    """Build the run's model, load ``state`` and write it with its provenance (objective, steps,
    null label, and the data location unless ``provenance`` is false; default
    ``cfg.export_provenance``). The one place an export is written."""
    model = transformer.build(cfg.model_config())
    model.load_state_dict(state)
    extra = {"objective": cfg.objective, "trained_steps": int(tag.removeprefix("step"))}
    if cfg.export_provenance if provenance is None else provenance:
        extra["data"] = cfg.data
    null_label = cfg.objective_config().resolved_null_label(model.config)
    if null_label is not None:
        extra["null_label"] = null_label
    return transformer.save(model, out, extra=extra)


def export_checkpoint(cfg: TrainConfig, ckpt_root: str, tag: str, out: str | os.PathLike, *, engine=None,
                      ema=None, zero_stage: int = 0) -> Path | None:
    """From inside a run: export the live weights (EMA when on) on rank 0; ZeRO >= 1 without EMA
    reads the checkpoint just saved under ``ckpt_root/tag``."""
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
    return save_export(cfg, state, tag, out)


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, *, tag: str | None = None,
               provenance: bool = True) -> Path:
    """Export a run's checkpoint (newest complete one by default) to safetensors + config.json.

    Every file of the tag must pass a weights-only load first (a crafted run directory cannot run
    code); ZeRO-0 weights are read that way, ZeRO >= 1 through DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint``. EMA weights win when present. ``provenance=False``
    keeps the run's paths out of the exported config.json.
    """
    run = Path(run_dir)
    cfg_path = run / "train_config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{run}: no train_config.json; pass the run directory given as --out to train")
    cfg = load_train_config(str(cfg_path), {})
    root = run / "checkpoints"
    tag = tag or find_resume(root)
    if tag is None or not (root / tag / COMPLETE).is_file():
        raise CheckpointError(f"{root}: no complete checkpoint{f' {tag!r}' if tag else ''} (a checkpoint counts "
                              f"once its {COMPLETE} marker exists); train longer or pick another --tag")
    check_loadable_safely(root / tag)  # before DeepSpeed's zero-to-fp32 helper unpickles anything
    states = torch.load(root / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    stage = int(states.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))
    if "ema" in states:
        state = states["ema"]
    elif stage == 0:
        state = {k: v.float() for k, v in states["module"].items()}
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag=tag)
    return save_export(cfg, state, tag, out, provenance=provenance)
