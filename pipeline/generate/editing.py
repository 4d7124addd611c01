"""Editing an image with a MaskGIT model: class-conditional box replacement, inpainting and
outpainting, each composited back onto the input. The token-level rules live in
``transformer.editing``; this module adds the tokenizer and the pixels."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from transformer import editing

from pipeline.generate.sampling import decode_tokens
from maskgit_core.errors import ConfigError

__all__ = ["EditResult", "edit_replace", "edit_inpaint", "edit_outpaint"]

log = logging.getLogger(__name__)


@dataclass
class EditResult:
    image: np.ndarray
    """(H, W, 3) float32 in [0, 1], the composite (what the user gets)."""
    decoded: np.ndarray
    """(H, W, 3) the tokenizer's decoding of the edited tokens, before compositing."""
    weight: np.ndarray
    """(H, W) the composite weight: 1 = generated, 0 = input pixel kept exactly."""
    tokens: torch.Tensor
    """(h, w) the edited token grid."""
    token_mask: np.ndarray
    """(h, w) bool, the tokens that were regenerated."""


def _encode(vq, image: np.ndarray) -> torch.Tensor:  # (H, W, 3) -> (h, w)
    dev = next(vq.parameters()).device
    return vq.encode(torch.from_numpy(image).permute(2, 0, 1)[None].float().to(dev))[0].cpu()


def _decode_one(vq, tokens: torch.Tensor) -> np.ndarray:  # (h, w) -> (H, W, 3)
    return decode_tokens(vq, tokens[None])[0].permute(1, 2, 0).numpy()


def _check_image(vq, image: np.ndarray) -> None:
    s = vq.config.image_size
    if image.shape != (s, s, 3):
        raise ConfigError(f"image must be {s}x{s}x3 for this tokenizer, got {image.shape}; load it with load_image")


@torch.no_grad()
def edit_replace(model, vq, image: np.ndarray, bbox: tuple[int, int, int, int], label: int, *,
                 steps: int = 12, start_iter: int = 2, schedule: str = "cosine", seed: int = 0) -> EditResult:
    """Official class-conditional box replacement: latent box with one token of margin, decode
    from ``start_iter`` of ``steps`` (2 of 12), blurred composite."""
    _check_image(vq, image)
    n, patch = vq.config.latent_size, vq.config.downsample_factor
    box = editing.bbox_to_latent_box(*bbox, latent_size=n, patch=patch)
    tmask = editing.box_token_mask(box, n)
    tokens = _encode(vq, image)
    new = editing.decode_masked_tokens(model, tokens[None], torch.from_numpy(tmask)[None], [label], steps=steps,
                                       start_iter=start_iter, schedule=schedule, seed=seed)[0]
    dec = _decode_one(vq, new)
    w = editing.official_composite_mask(tmask, image.shape[:2])
    return EditResult(editing.composite(dec, image, w), dec, w, new, tmask)


@torch.no_grad()
def edit_inpaint(model, vq, image: np.ndarray, mask: np.ndarray, label: int, *, steps: int = 12,
                 start_iter: int = 0, schedule: str = "cosine", seed: int = 0, dilation: int = 0,
                 feather: int | None = None) -> EditResult:
    """Regenerate the tokens whose patches touch ``mask`` (H, W) bool, then a feathered blend
    (default feather: one patch)."""
    _check_image(vq, image)
    patch = vq.config.downsample_factor
    feather = patch if feather is None else feather
    tmask = editing.pixel_mask_to_token_mask(mask, patch=patch, dilation=dilation)
    if not tmask.any():
        raise ConfigError("the mask selects no pixel; white (>127) marks the region to inpaint")
    tokens = _encode(vq, image)
    new = editing.decode_masked_tokens(model, tokens[None], torch.from_numpy(tmask)[None], [label], steps=steps,
                                       start_iter=start_iter, schedule=schedule, seed=seed)[0]
    dec = _decode_one(vq, new)
    region = editing.pixel_mask_to_token_mask(mask, patch=patch, dilation=dilation + math.ceil(feather / patch))
    w = editing.feathered_mask(mask, region, patch=patch, feather=feather)
    return EditResult(editing.composite(dec, image, w), dec, w, new, tmask)


@torch.no_grad()
def edit_outpaint(model, vq, image: np.ndarray, extend: dict[str, int], label: int, *, steps: int = 12,
                  schedule: str = "cosine", seed: int = 0, stride: int | None = None,
                  feather: int | None = None) -> EditResult:
    """Grow the canvas by ``extend`` px per side (rounded up to whole patches) and generate the new
    tokens conditioned on the existing ones, in overlapping model-size windows."""
    _check_image(vq, image)
    patch = vq.config.downsample_factor
    feather = patch if feather is None else feather
    s = image.shape[0]
    new_h, new_w, top, left, used = editing.extend_canvas(s, s, extend, patch=patch)
    if used != extend:
        log.info("outpaint: extension rounded up to whole %d-px patches: %s", patch, used)
    gh, gw, t0, l0 = new_h // patch, new_w // patch, top // patch, left // patch
    n = s // patch
    grid = torch.zeros(gh, gw, dtype=torch.long)
    known = torch.zeros(gh, gw, dtype=torch.bool)
    grid[t0:t0 + n, l0:l0 + n] = _encode(vq, image)
    known[t0:t0 + n, l0:l0 + n] = True
    new = editing.outpaint_tokens(model, grid, known, label, steps=steps, schedule=schedule, seed=seed, stride=stride)
    dec = _decode_one(vq, new)
    canvas = np.zeros((new_h, new_w, 3), np.float32)
    canvas[top:top + s, left:left + s] = image
    newpix = np.ones((new_h, new_w), bool)
    newpix[top:top + s, left:left + s] = False
    tmask = (~known).numpy()
    region = editing.pixel_mask_to_token_mask(newpix, patch=patch, dilation=math.ceil(feather / patch))
    w = editing.feathered_mask(newpix, region, patch=patch, feather=feather)
    return EditResult(editing.composite(dec, canvas, w), dec, w, new, tmask)
