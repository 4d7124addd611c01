"""The MVTM bidirectional transformer, mask schedules and parallel decoding
(single-device PyTorch; never imports ray or deepspeed)."""
from __future__ import annotations

import os
from pathlib import Path

from maskgit_core.checkpoint_io import load_model_dir, save_checkpoint_dir
from maskgit_core.flax_msgpack import CheckpointError

from .config import PRESETS, TransformerConfig, preset
from .model import MaskGITTransformer

__all__ = ["MaskGITTransformer", "TransformerConfig", "PRESETS", "preset", "build", "load", "save",
           "check_pair", "KIND"]

KIND = "maskgit-transformer"


def build(config: TransformerConfig | str, **overrides) -> MaskGITTransformer:
    """A freshly initialised transformer from a config or a preset name (plus field overrides)."""
    cfg = preset(config) if isinstance(config, str) else config
    return MaskGITTransformer(cfg.replace(**overrides) if overrides else cfg)


def save(model: MaskGITTransformer, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory``."""
    return save_checkpoint_dir(directory, kind=KIND, config=model.config.to_dict(),
                               state_dict=model.state_dict(), extra=extra)


def load(path: str | os.PathLike, *, map_location: str = "cpu") -> MaskGITTransformer:
    """Load a transformer directory (or a parent holding ``transformer/``), ready in eval mode."""
    return load_model_dir(path, kind=KIND, subdir="transformer", config_cls=TransformerConfig,
                          model_cls=MaskGITTransformer, map_location=map_location)


def check_pair(transformer_cfg: TransformerConfig, codebook_size: int, latent_size: int, *, source: str = "") -> None:
    """Raise if a transformer cannot run on a tokenizer's tokens (codebook or grid differ)."""
    where = f"{source}: " if source else ""
    if transformer_cfg.codebook_size != codebook_size:
        raise CheckpointError(f"{where}transformer expects a codebook of {transformer_cfg.codebook_size} codes, "
                              f"the tokenizer has {codebook_size}; use the tokenizer it was trained with")
    if transformer_cfg.latent_size != latent_size:
        raise CheckpointError(f"{where}transformer expects a {transformer_cfg.latent_size}x"
                              f"{transformer_cfg.latent_size} latent grid, the tokenizer gives "
                              f"{latent_size}x{latent_size} at its image size; pick the matching resolution")
