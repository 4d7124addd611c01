"""The VQGAN tokenizer (single-device PyTorch; never imports ray or deepspeed)."""
from __future__ import annotations

import os
from pathlib import Path

from maskgit_core.checkpoint_io import load_model_dir, save_checkpoint_dir
from .config import PRESETS, VQGANConfig, preset
from maskgit_core.flax_msgpack import CheckpointError
from .model import VQGAN
from .search import CodebookSearch, TorchSearch

__all__ = ["VQGAN", "VQGANConfig", "PRESETS", "preset", "build", "load", "save", "CheckpointError",
           "CodebookSearch", "TorchSearch", "KIND"]

KIND = "maskgit-vqgan"


def build(config: VQGANConfig | str) -> VQGAN:
    """A freshly initialised VQGAN from a config or a preset name."""
    return VQGAN(preset(config) if isinstance(config, str) else config)


def save(model: VQGAN, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``directory``."""
    return save_checkpoint_dir(directory, kind=KIND, config=model.config.to_dict(),
                               state_dict=model.state_dict(), extra=extra)


def load(path: str | os.PathLike, *, map_location: str = "cpu") -> VQGAN:
    """Load a tokenizer directory (or a parent holding ``tokenizer/``), ready in eval mode."""
    return load_model_dir(path, kind=KIND, subdir="tokenizer", config_cls=VQGANConfig, model_cls=VQGAN,
                          map_location=map_location)
