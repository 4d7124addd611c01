"""Sampling the autoregressive baseline (``TransformerConfig(causal=True)``) in raster order.

Sequence [class, t_1 .. t_N]; the logits at position i predict token i+1. ``ar_decode`` runs
the strong baseline: a KV cache, so each of the N steps feeds one token. ``use_cache=False``
recomputes the whole prefix each step (the reference the cache is tested against).
Token sampling draws argmax(logits / temperature + Gumbel), the noise injectable as in
``transformer.sampling``.
"""
from __future__ import annotations

from typing import Protocol

import torch

from .sampling import SeededNoise, TorchGumbelNoise, top_k_filter
from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError

__all__ = ["ar_decode", "ar_sample_tokens", "ARNoise", "StaticKVCache"]


class StaticKVCache:
    """A KV cache preallocated to the full sequence: each step writes one slice instead of
    concatenating (O(L) copies per step with ``torch.cat``). Same interface as the model's KVCache."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.pos = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, n, d = k.shape  # (B, H, n, Dh)
        if self.k is None:
            self.k = k.new_empty(b, h, self.max_len, d)
            self.v = v.new_empty(b, h, self.max_len, d)
        if self.pos + n > self.max_len:
            raise ConfigError(f"KV cache of {self.max_len} positions cannot take {self.pos + n}")
        self.k[:, :, self.pos:self.pos + n] = k
        self.v[:, :, self.pos:self.pos + n] = v
        self.pos += n
        return self.k[:, :, :self.pos], self.v[:, :, :self.pos]


class ARNoise(Protocol):
    def token_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, K) Gumbel noise for image token ``step`` (0-based)."""


@torch.no_grad()
def ar_decode(model: torch.nn.Module, prefix: torch.Tensor, *, num_tokens: int, temperature: float = 1.0,
              top_k: int | None = None, noise: ARNoise | None = None, use_cache: bool = True) -> torch.Tensor:
    """Extend ``prefix`` (B, P) (at least the class token) by ``num_tokens`` image tokens.

    Returns (B, P + num_tokens). Only image codes 0..K-1 are sampled.
    """
    cfg = model.config
    if not cfg.causal:
        raise ConfigError("ar_decode needs a causal model (TransformerConfig(causal=True)); "
                          "for MaskGIT models use transformer.sampling.sample_tokens")
    if temperature <= 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    b, p = prefix.shape
    if p + num_tokens > cfg.seq_len:
        raise ConfigError(f"prefix {p} + {num_tokens} tokens exceeds the model's sequence of {cfg.seq_len}")
    noise = noise or TorchGumbelNoise(device=prefix.device)
    k = cfg.codebook_size
    seq = prefix.long()
    caches = [StaticKVCache(p + num_tokens) for _ in model.layers] if use_cache else None
    if use_cache:
        logits = model(seq, kv_caches=caches, start_pos=0)[:, -1]  # (B, V)
    for i in range(num_tokens):
        if not use_cache:
            logits = model(seq)[:, -1]  # (B, V), full recompute of the prefix
        lg = top_k_filter(logits[:, :k].float() / temperature, top_k)  # (B, K)
        nxt = torch.argmax(lg + noise.token_gumbel(i, (b, k)).to(lg.device), dim=-1)  # (B,)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if use_cache and i < num_tokens - 1:
            logits = model(nxt[:, None], kv_caches=caches, start_pos=seq.shape[1] - 1)[:, -1]
    return seq


@torch.no_grad()
def ar_sample_tokens(model: torch.nn.Module, labels: torch.Tensor | list[int], *, seed: int | None = 0,
                     temperature: float = 1.0, top_k: int | None = None, noise: ARNoise | None = None,
                     use_cache: bool = True) -> torch.Tensor:
    """Class labels (B,) -> (B, h, w) token grids from the causal baseline, raster order.

    Sample i draws from a generator seeded ``seed + i`` (as ``sample_tokens``)."""
    cfg = model.config
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(labels, cfg.num_classes, fix="pass labels of the model's classes")
    b = labels.numel()
    if noise is None:
        noise = SeededNoise([seed + i for i in range(b)], device=device) if seed is not None \
            else TorchGumbelNoise(device=device)
    prefix = (cfg.codebook_size + labels)[:, None].to(device)  # (B, 1)
    seq = ar_decode(model, prefix, num_tokens=cfg.num_image_tokens, temperature=temperature, top_k=top_k,
                    noise=noise, use_cache=use_cache)
    return seq[:, 1:].reshape(b, cfg.latent_size, cfg.latent_size)
