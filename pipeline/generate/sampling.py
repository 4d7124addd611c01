"""Images from a MaskGIT (or AR baseline) checkpoint and a tokenizer: loading the pair, sampling
class-conditional images, and the step-by-step progression of a decode (the paper's Figure 3).
The token-level math lives in ``transformer.sampling`` and ``transformer.ar_sampling``."""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from transformer.ar_sampling import ar_sample_tokens
from transformer.sampling import DecodeResult, sample_tokens

from pipeline.generate.imageio import make_grid, to_uint8
from maskgit_core.checks import resolve_device
from maskgit_core.errors import ConfigError

__all__ = ["load_pair", "decode_tokens", "sample_images", "ar_sample_images", "step_progression", "resolve_device",
           "sample_batches"]


def load_pair(checkpoint: str | os.PathLike, tokenizer_dir: str | os.PathLike, *, device: str = "cpu"):
    """(transformer, tokenizer) from project checkpoint directories, checked to fit each other."""
    import tokenizer as tok
    import transformer

    model = transformer.load(checkpoint, map_location=device)
    vq = tok.load(tokenizer_dir, map_location=device).eval()
    transformer.check_pair(model.config, vq.config.codebook_size, vq.config.latent_size,
                           source=f"{checkpoint} + {tokenizer_dir}")
    return model, vq


@torch.no_grad()
def decode_tokens(vq: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(B, h, w) ids -> (B, 3, H, W) float images clipped to [0, 1]."""
    dev = next(vq.parameters()).device
    return vq.decode_ids(tokens.to(dev)).clamp(0.0, 1.0).cpu()


@torch.no_grad()
def sample_images(model: torch.nn.Module, vq: torch.nn.Module, labels, *, steps: int = 8,
                  schedule: str = "cosine", seed: int | None = 0, choice_temperature: float = 4.5,
                  guidance_scale: float = 0.0, guidance_schedule: str = "constant", null_label: int | None = None,
                  order: str = "confidence", top_k: int | None = None, record: bool = False,
                  return_result: bool = False):
    """Class labels -> images (B, 3, H, W) float in [0, 1] (MaskGIT parallel decoding).

    With ``return_result=True`` returns (images, DecodeResult) for tokens and step traces."""
    res = sample_tokens(model, labels, steps=steps, schedule=schedule, seed=seed,
                        choice_temperature=choice_temperature, guidance_scale=guidance_scale,
                        guidance_schedule=guidance_schedule, null_label=null_label, order=order, top_k=top_k,
                        record=record)
    images = decode_tokens(vq, res.tokens)
    return (images, res) if return_result else images


@torch.no_grad()
def ar_sample_images(model: torch.nn.Module, vq: torch.nn.Module, labels, *, seed: int | None = 0,
                     temperature: float = 1.0, top_k: int | None = None, use_cache: bool = True) -> torch.Tensor:
    """Class labels -> images (B, 3, H, W) in [0, 1] from the causal AR baseline (KV cache)."""
    tokens = ar_sample_tokens(model, labels, seed=seed, temperature=temperature, top_k=top_k, use_cache=use_cache)
    return decode_tokens(vq, tokens)


@torch.no_grad()
def sample_batches(model: torch.nn.Module, vq: torch.nn.Module, labels: list[int], *, batch_size: int, seed: int,
                   ar: bool | None = None, temperature: float = 1.0, top_k: int | None = None, record: bool = False,
                   **decode_kw) -> Iterator[tuple[int, np.ndarray, np.ndarray, DecodeResult | None]]:
    """The one batch loop of ``sample`` and sample sets: yields, per batch of ``batch_size`` labels,
    (start, images (b, H, W, 3) uint8, tokens (b, h, w) int64, DecodeResult or None).

    The batch starting at image ``start`` is drawn with seed ``seed + start``, and image i inside
    it with ``seed + start + i``, so image ``k`` of ``labels`` always uses seed ``seed + k``.
    ``ar`` (default: ``model.config.causal``) samples the causal baseline with ``temperature`` and
    ``top_k`` (``decode_kw`` does not apply to it and ``result`` is None); otherwise MaskGIT decodes
    with ``top_k``, ``record`` and ``decode_kw`` (steps, schedule, guidance_scale, ...)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ar = model.config.causal if ar is None else ar
    for start in range(0, len(labels), batch_size):
        lb = labels[start:start + batch_size]
        if ar:
            tokens, res = ar_sample_tokens(model, lb, seed=seed + start, temperature=temperature, top_k=top_k), None
        else:
            res = sample_tokens(model, lb, seed=seed + start, top_k=top_k, record=record, **decode_kw)
            tokens = res.tokens
        yield start, to_uint8(decode_tokens(vq, tokens)), tokens.cpu().numpy(), res


@torch.no_grad()
def step_progression(vq: torch.nn.Module, result: DecodeResult, latent_size: int, *, index: int = 0) -> np.ndarray:
    """The paper's Figure 3 for sample ``index``: per step (columns), top row = the tokens kept
    after the step (masked patches grey), bottom row = the step's full prediction. uint8 (H', W', 3)."""
    if result.masked is None:
        raise ConfigError("the decode was not recorded; sample with record=True (CLI: --save-steps)")
    t = result.sampled.shape[1]
    pred = result.sampled[index, :, 1:].reshape(t, latent_size, latent_size)  # (T, h, w)
    masked = result.masked[index, :, 1:].reshape(t, latent_size, latent_size)  # (T, h, w)
    imgs = to_uint8(decode_tokens(vq, pred))  # (T, H, W, 3)
    patch = imgs.shape[1] // latent_size
    pix = np.kron(masked.numpy().astype(np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)  # (T, H, W)
    kept = imgs.copy()
    kept[pix] = 128
    return make_grid(np.concatenate([kept, imgs]), nrow=t)
