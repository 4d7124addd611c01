"""Images from a MaskGIT (or AR baseline) checkpoint and a tokenizer: sampling, step progressions,
editing (replace / inpaint / outpaint) and image I/O. The token-level math lives in
``transformer.sampling``, ``transformer.ar_sampling`` and ``transformer.editing``.

API for other parts of the project (docs/GENERATE.md):
  sample_images(model, vq, labels, steps=8, schedule="cosine", seed=0, ...) -> (B, 3, H, W) in [0, 1]
  ar_sample_images(model, vq, labels, seed=0, ...)                         -> (B, 3, H, W) in [0, 1]
  edit_replace / edit_inpaint / edit_outpaint(model, vq, image, ...)        -> EditResult
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transformer import editing
from transformer.ar_sampling import ar_sample_tokens
from transformer.sampling import DecodeResult, sample_tokens

__all__ = ["load_pair", "sample_images", "ar_sample_images", "decode_tokens", "to_uint8", "make_grid",
           "save_png", "step_progression", "fit_image", "load_image", "load_mask", "EditResult",
           "edit_replace", "edit_inpaint", "edit_outpaint"]

log = logging.getLogger(__name__)


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


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float [0, 1] -> (B, H, W, 3) uint8 (round to nearest)."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip(np.rint(np.transpose(x, (0, 2, 3, 1)) * 255.0), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, *, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(B, H, W, 3) uint8 -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) uint8 grid, white padding."""
    b, h, w, c = images.shape
    cols = nrow or int(math.ceil(math.sqrt(b)))
    rows = int(math.ceil(b / cols))
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = images[i]
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    from PIL import Image

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(p)
    return p


@torch.no_grad()
def step_progression(vq: torch.nn.Module, result: DecodeResult, latent_size: int, *, index: int = 0) -> np.ndarray:
    """The paper's Figure 3 for sample ``index``: per step (columns), top row = the tokens kept
    after the step (masked patches grey), bottom row = the step's full prediction. uint8 (H', W', 3)."""
    if result.masked is None:
        raise ValueError("the decode was not recorded; sample with record=True (CLI: --save-steps)")
    t = result.sampled.shape[1]
    pred = result.sampled[index, :, 1:].reshape(t, latent_size, latent_size)  # (T, h, w)
    masked = result.masked[index, :, 1:].reshape(t, latent_size, latent_size)  # (T, h, w)
    imgs = to_uint8(decode_tokens(vq, pred))  # (T, H, W, 3)
    patch = imgs.shape[1] // latent_size
    pix = np.kron(masked.numpy().astype(np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)  # (T, H, W)
    kept = imgs.copy()
    kept[pix] = 128
    return make_grid(np.concatenate([kept, imgs]), nrow=t)


# ----------------------------------------------------------------------------- image I/O

def fit_image(image, size: int, *, resample: str = "bicubic"):
    """Resize so the shorter side is ``size`` (PIL bicubic, nearest for masks), then centre-crop
    to size x size. Returns (PIL image, the rule applied as text)."""
    from PIL import Image

    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    filt = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[resample]
    out = image.resize((nw, nh), filt) if (nw, nh) != (w, h) else image
    left, top = (nw - size) // 2, (nh - size) // 2
    out = out.crop((left, top, left + size, top + size))
    rule = (f"input {w}x{h} -> shorter side to {size} ({resample}) = {nw}x{nh} -> centre crop "
            f"{size}x{size} at x={left}, y={top}") if (w, h) != (size, size) else f"input {w}x{h} used as is"
    return out, rule


def load_image(path: str | os.PathLike, size: int) -> tuple[np.ndarray, str]:
    """An image file -> ((size, size, 3) float32 in [0, 1], rule text)."""
    from PIL import Image

    with Image.open(path) as im:
        img, rule = fit_image(im.convert("RGB"), size)
    return np.asarray(img, dtype=np.float32) / 255.0, rule


def load_mask(path: str | os.PathLike, size: int) -> tuple[np.ndarray, str]:
    """A mask image (white/non-zero = edit) -> ((size, size) bool, rule text), same geometry as load_image."""
    from PIL import Image

    with Image.open(path) as im:
        m, rule = fit_image(im.convert("L"), size, resample="nearest")
    return np.asarray(m) > 127, rule


# ----------------------------------------------------------------------------- editing

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
        raise ValueError(f"image must be {s}x{s}x3 for this tokenizer, got {image.shape}; load it with load_image")


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
        raise ValueError("the mask selects no pixel; white (>127) marks the region to inpaint")
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
