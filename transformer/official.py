"""Official MaskGIT transformer checkpoints (Flax msgpack) <-> this project's transformer.

Mapping (spec §6): dense (in, out) -> Linear weight (out, in); q/k/v kernels (D, H, Dh)
-> (D, D) with column h*Dh + d, transposed; out kernel (H, Dh, D) -> (D, D), transposed;
LayerNorm ``scale`` -> ``weight``.
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Callable

import numpy as np
import torch

from maskgit_core.flax_msgpack import (CheckpointError, build_official_tree, flatten_tree, map_official_params,
                                    read_flax_msgpack)

from .config import TransformerConfig
from .model import MaskGITTransformer

__all__ = ["infer_config", "official_to_state_dict", "state_dict_to_official", "load_official_transformer"]


def _params(tree: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    params = tree.get("params", tree)
    if not isinstance(params, dict) or "Embed_0" not in params or "MlmLayer_0" not in params:
        have = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise CheckpointError(f"{source}: not a MaskGIT transformer checkpoint: expected params/"
                              f"{{Embed_0, TransformerLayer_*, MlmLayer_0}}, found {have}")
    return flatten_tree(params)


def infer_config(flat: dict[str, np.ndarray], *, codebook_size: int | None = None, num_classes: int = 1000,
                 source: str = "checkpoint") -> TransformerConfig:
    """Infer sizes from shapes. The vocabulary is K + classes + 1: give ``codebook_size`` (from the
    tokenizer) to split it; without it ``num_classes`` (1000 for ImageNet) decides."""
    def need(k: str) -> np.ndarray:
        if k not in flat:
            raise CheckpointError(f"{source}: missing parameter {k!r}")
        return flat[k]

    vocab, hidden = need("Embed_0/word_embeddings/embedding").shape
    seq_len = need("Embed_0/position_embeddings/embedding").shape[0]
    side = math.isqrt(seq_len - 1)
    if side * side != seq_len - 1:
        raise CheckpointError(f"{source}: {seq_len} positions is not 1 + a square latent grid")
    layers = {int(m.group(1)) for k in flat if (m := re.match(r"^TransformerLayer_(\d+)/", k))}
    if not layers:
        raise CheckpointError(f"{source}: no TransformerLayer_* parameters")
    heads = need("TransformerLayer_0/Attention_0/self_attention/query/kernel").shape[1]
    inter = need("TransformerLayer_0/Mlp_0/intermediate_output/kernel").shape[1]
    if codebook_size is not None:
        num_classes = vocab - codebook_size - 1
        if num_classes <= 0:
            raise CheckpointError(f"{source}: the transformer's vocabulary ({vocab}) does not fit the tokenizer's "
                                  f"codebook ({codebook_size} codes + classes + 1 mask token); "
                                  "the two checkpoints are not a pair")
    else:
        codebook_size = vocab - num_classes - 1
        if codebook_size <= 0:
            raise CheckpointError(f"{source}: vocabulary {vocab} too small for {num_classes} classes")
    return TransformerConfig(codebook_size=int(codebook_size), num_classes=int(num_classes), latent_size=side,
                             hidden_size=int(hidden), num_layers=max(layers) + 1, num_heads=int(heads),
                             intermediate_size=int(inter))


def _dense(k: np.ndarray) -> np.ndarray:
    return k.T  # (in, out) -> (out, in)


def _qkv(k: np.ndarray) -> np.ndarray:
    return k.reshape(k.shape[0], -1).T  # (D, H, Dh) -> (D, H*Dh) -> (H*Dh, D)


def _out(k: np.ndarray) -> np.ndarray:
    return k.reshape(-1, k.shape[-1]).T  # (H, Dh, D) -> (H*Dh, D) -> (D, H*Dh)


def _flat_bias(b: np.ndarray) -> np.ndarray:
    return b.reshape(-1)


def _mapping(cfg: TransformerConfig) -> dict[str, tuple[str, Callable, Callable]]:
    h, dh, d = cfg.num_heads, cfg.head_dim, cfg.hidden_size
    ident = (lambda x: x, lambda x: x)
    dense = (_dense, _dense)
    qkv = (_qkv, lambda w: w.T.reshape(d, h, dh))
    out = (_out, lambda w: w.T.reshape(h, dh, d))
    bias_hd = (_flat_bias, lambda b: b.reshape(h, dh))
    m: dict[str, tuple[str, Callable, Callable]] = {}

    def add(t: str, f: str, tf: tuple[Callable, Callable]) -> None:
        m[t] = (f, *tf)

    def ln(t: str, f: str) -> None:
        add(f"{t}.weight", f"{f}/scale", ident)
        add(f"{t}.bias", f"{f}/bias", ident)

    def linear(t: str, f: str) -> None:
        add(f"{t}.weight", f"{f}/kernel", dense)
        add(f"{t}.bias", f"{f}/bias", ident)

    add("word_embeddings.weight", "Embed_0/word_embeddings/embedding", ident)
    add("position_embeddings.weight", "Embed_0/position_embeddings/embedding", ident)
    ln("embeddings_ln", "Embed_0/embeddings_ln")
    for i in range(cfg.num_layers):
        t, f = f"layers.{i}", f"TransformerLayer_{i}"
        att = f"{f}/Attention_0/self_attention"
        for name in ("query", "key", "value"):
            add(f"{t}.attention.{name}.weight", f"{att}/{name}/kernel", qkv)
            add(f"{t}.attention.{name}.bias", f"{att}/{name}/bias", bias_hd)
        add(f"{t}.attention.out.weight", f"{att}/out/kernel", out)
        add(f"{t}.attention.out.bias", f"{att}/out/bias", ident)
        ln(f"{t}.attention_ln", f"{f}/Attention_0/attention_output_ln")
        linear(f"{t}.intermediate", f"{f}/Mlp_0/intermediate_output")
        linear(f"{t}.output", f"{f}/Mlp_0/layer_output")
        ln(f"{t}.output_ln", f"{f}/Mlp_0/layer_output_ln")
    linear("mlm_dense", "MlmLayer_0/mlm_dense")
    ln("mlm_ln", "MlmLayer_0/mlm_ln")
    add("mlm_bias", "MlmLayer_0/mlm_bias/bias", ident)
    return m


def official_to_state_dict(flat: dict[str, np.ndarray], cfg: TransformerConfig, *, source: str = "checkpoint"
                           ) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in MaskGITTransformer(cfg).state_dict().items()}
    return map_official_params(flat, _mapping(cfg), shapes, source=source)


def state_dict_to_official(model: MaskGITTransformer) -> dict[str, Any]:
    """The official nested tree ``{'params': {...}}`` of a project transformer."""
    return build_official_tree(_mapping(model.config), model.state_dict())


def load_official_transformer(path: str | os.PathLike, *, codebook_size: int | None = None,
                              num_classes: int = 1000) -> MaskGITTransformer:
    """Read an official ``maskgit_imagenet*_checkpoint`` file into a ready transformer (eval mode)."""
    source = os.fspath(path)
    flat = _params(read_flax_msgpack(path), source)
    cfg = infer_config(flat, codebook_size=codebook_size, num_classes=num_classes, source=source)
    model = MaskGITTransformer(cfg)
    model.load_state_dict(official_to_state_dict(flat, cfg, source=source))
    return model.eval()
