"""Official MaskGIT tokenizer checkpoints (Flax msgpack) <-> this project's VQGAN.

Sizes are inferred from the tree's shapes, so small models with the same tree load too.
Mapping (spec §6): conv kernels HWIO -> OIHW; GroupNorm ``scale`` -> ``weight``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable

import numpy as np
import torch

from .config import VQGANConfig
from maskgit_core.flax_msgpack import (CheckpointError, build_official_tree, flatten_tree, map_official_params,
                           read_flax_msgpack)
from .model import VQGAN
from maskgit_core.errors import ConfigError

__all__ = ["infer_config", "official_to_state_dict", "state_dict_to_official", "load_official_tokenizer"]

_EXPECTED_TOP = ("encoder", "decoder", "quantizer")


def _params(tree: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    params = tree.get("params", tree)
    if not isinstance(params, dict) or not all(k in params for k in _EXPECTED_TOP):
        have = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise CheckpointError(f"{source}: not a MaskGIT tokenizer checkpoint: expected params/"
                              f"{{encoder,decoder,quantizer}}, found {have}")
    return flatten_tree(params)


def _need(flat: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in flat:
        raise CheckpointError(f"{source}: missing parameter {key!r}")
    return flat[key]


def _count(flat: dict[str, np.ndarray], prefix: str, module: str) -> int:
    pat = re.compile(rf"^{re.escape(prefix)}/{module}_(\d+)/")
    idx = {int(m.group(1)) for k in flat if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def infer_config(flat: dict[str, np.ndarray], *, image_size: int = 256, num_groups: int = 32,
                 source: str = "checkpoint") -> VQGANConfig:
    """Infer a VQGANConfig from a flattened official tree (without the ``params/`` prefix)."""
    filters = int(_need(flat, "encoder/Conv_0/kernel", source).shape[-1])
    embedding_dim = int(_need(flat, "encoder/Conv_1/kernel", source).shape[-1])
    codebook = _need(flat, "quantizer/codebook", source)
    n_enc_blocks = _count(flat, "encoder", "ResBlock")
    n_levels = _count(flat, "decoder", "Conv") - 1  # Conv_0 in, Conv_1..L-1 upsample, Conv_L out
    if n_levels < 1 or n_enc_blocks % (n_levels + 1):
        raise CheckpointError(f"{source}: cannot infer the level structure ({n_enc_blocks} encoder "
                              f"ResBlocks, {n_levels + 1} decoder convs)")
    nrb = n_enc_blocks // (n_levels + 1)
    mults = []
    for level in range(n_levels):
        out_c = int(_need(flat, f"encoder/ResBlock_{level * nrb}/Conv_0/kernel", source).shape[-1])
        if out_c % filters:
            raise CheckpointError(f"{source}: encoder level {level} has {out_c} channels, not a multiple of {filters}")
        mults.append(out_c // filters)
    return VQGANConfig(image_size=image_size, filters=filters, channel_multipliers=tuple(mults),
                       num_res_blocks=nrb, embedding_dim=embedding_dim, codebook_size=int(codebook.shape[0]),
                       num_groups=num_groups, official_shortcut=True)


def _conv(k: np.ndarray) -> np.ndarray:
    return np.transpose(k, (3, 2, 0, 1))  # HWIO -> OIHW


def _conv_inv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _ident(x: np.ndarray) -> np.ndarray:
    return x


def _mapping(cfg: VQGANConfig) -> dict[str, tuple[str, Callable, Callable]]:
    """torch name -> (flax name, flax->torch transform, torch->flax transform)."""
    model = VQGAN(cfg)
    conv, ident = (_conv, _conv_inv), (_ident, _ident)
    m: dict[str, tuple[str, Callable, Callable]] = {}

    def add(t: str, f: str, tf: tuple[Callable, Callable]) -> None:
        m[t] = (f, *tf)

    def block(t: str, f: str, has_shortcut: bool) -> None:
        add(f"{t}.norm1.weight", f"{f}/GroupNorm_0/scale", ident)
        add(f"{t}.norm1.bias", f"{f}/GroupNorm_0/bias", ident)
        add(f"{t}.conv1.weight", f"{f}/Conv_0/kernel", conv)
        add(f"{t}.norm2.weight", f"{f}/GroupNorm_1/scale", ident)
        add(f"{t}.norm2.bias", f"{f}/GroupNorm_1/bias", ident)
        add(f"{t}.conv2.weight", f"{f}/Conv_1/kernel", conv)
        if has_shortcut:
            add(f"{t}.shortcut.weight", f"{f}/Conv_2/kernel", conv)

    # Entries in the official creation order, so an exported file is byte-identical.
    enc = model.encoder
    add("encoder.conv_in.weight", "encoder/Conv_0/kernel", conv)
    for i, b in enumerate(enc.blocks):
        block(f"encoder.blocks.{i}", f"encoder/ResBlock_{i}", b.shortcut is not None)
    add("encoder.norm_out.weight", "encoder/GroupNorm_0/scale", ident)
    add("encoder.norm_out.bias", "encoder/GroupNorm_0/bias", ident)
    add("encoder.conv_out.weight", "encoder/Conv_1/kernel", conv)
    add("encoder.conv_out.bias", "encoder/Conv_1/bias", ident)
    add("quantizer.codebook", "quantizer/codebook", ident)
    dec = model.decoder
    add("decoder.conv_in.weight", "decoder/Conv_0/kernel", conv)
    add("decoder.conv_in.bias", "decoder/Conv_0/bias", ident)
    j = 0
    for i, (b, up) in enumerate(zip(dec.blocks, dec.up_after)):
        block(f"decoder.blocks.{i}", f"decoder/ResBlock_{i}", b.shortcut is not None)
        if up:
            add(f"decoder.up_convs.{j}.weight", f"decoder/Conv_{j + 1}/kernel", conv)
            add(f"decoder.up_convs.{j}.bias", f"decoder/Conv_{j + 1}/bias", ident)
            j += 1
    add("decoder.norm_out.weight", "decoder/GroupNorm_0/scale", ident)
    add("decoder.norm_out.bias", "decoder/GroupNorm_0/bias", ident)
    add("decoder.conv_out.weight", f"decoder/Conv_{j + 1}/kernel", conv)
    add("decoder.conv_out.bias", f"decoder/Conv_{j + 1}/bias", ident)
    assert set(m) == set(model.state_dict()), "mapping must cover the model exactly"
    return m


def official_to_state_dict(flat: dict[str, np.ndarray], cfg: VQGANConfig, *, source: str = "checkpoint"
                           ) -> dict[str, torch.Tensor]:
    """Map a flattened official tree to a state dict for ``VQGAN(cfg)``, checking every name and shape."""
    if not cfg.official_shortcut:
        raise ConfigError("official checkpoints need official_shortcut=True")
    shapes = {k: tuple(v.shape) for k, v in VQGAN(cfg).state_dict().items()}
    return map_official_params(flat, _mapping(cfg), shapes, source=source)


def state_dict_to_official(model: VQGAN) -> dict[str, Any]:
    """The official nested tree ``{'params': {...}}`` of a project VQGAN (official_shortcut=True)."""
    if not model.config.official_shortcut:
        raise ConfigError("only models with official_shortcut=True have an official-layout tree")
    return build_official_tree(_mapping(model.config), model.state_dict())


def load_official_tokenizer(path: str | os.PathLike, *, image_size: int = 256, num_groups: int = 32) -> VQGAN:
    """Read an official ``tokenizer_imagenet*_checkpoint`` file into a ready VQGAN (eval mode).

    GroupNorm's group count is not stored in the file: the official models use 32.
    """
    source = os.fspath(path)
    flat = _params(read_flax_msgpack(path), source)
    try:
        cfg = infer_config(flat, image_size=image_size, num_groups=num_groups, source=source)
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{source}: the inferred tokenizer config is invalid ({e}); "
                              "pass the right --image-size / --num-groups") from e
    model = VQGAN(cfg)
    model.load_state_dict(official_to_state_dict(flat, cfg, source=source))
    return model.eval()
