"""Editing with a MaskGIT transformer: class-conditional box replacement, inpainting and
outpainting. The geometry (bbox -> latent box, pixel mask -> token mask, composites, canvas
growth, windows) is pure numpy; the decoders work on token grids and never see pixels.

Rules (docs/GENERATE.md):
- Latent box (official ``inference.py``, spec §5, 16 generalised to the tokenizer's patch p):
  t = max(0, top//p - 1), b = min(h, height//p + top//p + 1), l = max(0, left//p - 1),
  r = min(w, left//p + width//p + 1): one token of margin.
- Pixel mask -> token mask: a token is masked iff its p x p patch holds at least one masked
  pixel; ``dilation`` then grows the token mask by that many tokens (8-neighbourhood).
- Official composite: token mask x255 -> PIL "L" -> bicubic resize to the image -> GaussianBlur
  (radius S//16 - 1) -> /255 -> out*m + input*(1-m).
- Feathered blend (inpaint/outpaint): weight 1 on the pixel mask, falling linearly to 0 over
  ``feather`` pixels outside it, and 0 outside the decoded tokens' patches.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .sampling import SeededNoise, TorchGumbelNoise, parallel_decode
from maskgit_core.errors import ConfigError

__all__ = ["parse_bbox", "bbox_to_latent_box", "box_token_mask", "pixel_mask_to_token_mask",
           "official_composite_mask", "feathered_mask", "composite", "parse_extend", "extend_canvas",
           "window_origins", "decode_masked_tokens", "outpaint_tokens", "SIDES"]

SIDES = ("top", "bottom", "left", "right")


def parse_bbox(text: str) -> tuple[int, int, int, int]:
    """"top_left_height_width" (pixels, the official format) -> (top, left, height, width)."""
    parts = text.replace(",", "_").split("_")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"bbox {text!r} is not top_left_height_width in non-negative pixels, e.g. 64_32_128_144")
    top, left, height, width = (int(p) for p in parts)
    if height <= 0 or width <= 0:
        raise ConfigError(f"bbox {text!r} has an empty height or width")
    return top, left, height, width


def bbox_to_latent_box(top: int, left: int, height: int, width: int, *, latent_size: int | tuple[int, int],
                       patch: int = 16) -> tuple[int, int, int, int]:
    """Official pixel bbox -> latent rows t:b, cols l:r (one token of margin). Returns (t, b, l, r)."""
    lh, lw = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    t = max(0, top // patch - 1)
    b = min(lh, height // patch + top // patch + 1)
    l = max(0, left // patch - 1)  # noqa: E741 - the official names
    r = min(lw, left // patch + width // patch + 1)
    if t >= b or l >= r:
        raise ConfigError(f"bbox top={top} left={left} height={height} width={width} lies outside the "
                          f"{lh}x{lw} token grid (patch {patch} px)")
    return t, b, l, r


def box_token_mask(box: tuple[int, int, int, int], latent_size: int | tuple[int, int]) -> np.ndarray:
    """(h, w) bool, True inside rows t:b, cols l:r."""
    lh, lw = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
    t, b, l, r = box  # noqa: E741
    m = np.zeros((lh, lw), dtype=bool)
    m[t:b, l:r] = True
    return m


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        p = np.pad(out, 1)
        out = np.zeros_like(out)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                out |= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def pixel_mask_to_token_mask(mask: np.ndarray, *, patch: int, dilation: int = 0) -> np.ndarray:
    """(H, W) bool pixel mask -> (H/p, W/p) bool: a token is masked iff its patch touches the mask."""
    mask = np.asarray(mask).astype(bool)
    h, w = mask.shape
    if h % patch or w % patch:
        raise ConfigError(f"mask of {h}x{w} px is not a multiple of the {patch}-px patch; resize it with the image")
    if dilation < 0:
        raise ConfigError(f"dilation must be >= 0 tokens, got {dilation}")
    tok = mask.reshape(h // patch, patch, w // patch, patch).any(axis=(1, 3))  # (h, w)
    return _dilate(tok, dilation)


def official_composite_mask(token_mask: np.ndarray, image_hw: tuple[int, int], *,
                            radius: int | None = None) -> np.ndarray:
    """Official blurred composite weight (H, W) float32 in [0, 1] from an (h, w) token mask.

    radius defaults to the official S//16 - 1 with S the image height."""
    from PIL import Image, ImageFilter

    hh, ww = image_hw
    radius = max(0, hh // 16 - 1) if radius is None else radius
    m = Image.fromarray((np.asarray(token_mask, dtype=np.float32) * 255).astype(np.uint8), mode="L")
    m = m.resize((ww, hh))  # PIL's default filter for "L": bicubic
    if radius > 0:
        m = m.filter(ImageFilter.GaussianBlur(radius=radius))
    return np.asarray(m, dtype=np.float32) / 255.0


def feathered_mask(pixel_mask: np.ndarray, token_mask: np.ndarray, *, patch: int, feather: int) -> np.ndarray:
    """Blend weight (H, W) float32: 1 on ``pixel_mask``, linear fall-off to 0 over ``feather`` px,
    and 0 outside the patches of ``token_mask`` (where nothing was generated)."""
    from scipy.ndimage import distance_transform_edt

    pm = np.asarray(pixel_mask).astype(bool)
    region = np.kron(np.asarray(token_mask, dtype=np.uint8), np.ones((patch, patch), np.uint8)).astype(bool)
    if region.shape != pm.shape:
        raise ConfigError(f"token mask covers {region.shape} px but the pixel mask is {pm.shape}")
    if feather <= 0:
        return (pm & region).astype(np.float32)
    dist = distance_transform_edt(~pm) if pm.any() else np.full(pm.shape, np.inf)  # px to the mask
    w = np.clip(1.0 - dist / float(feather), 0.0, 1.0).astype(np.float32)
    return np.where(region, w, np.float32(0.0))


def composite(generated: np.ndarray, original: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """generated * m + original * (1 - m); images (H, W, C) or (C, H, W)-free: weight (H, W) broadcast
    over a trailing channel axis. Where m == 0 the result is exactly ``original``."""
    m = np.asarray(weight, dtype=np.float32)[..., None]
    out = generated * m + original * (1.0 - m)
    return np.where(m == 0, original, out)


def parse_extend(text: str) -> dict[str, int]:
    """"left=128,right=64" -> {"left": 128, "right": 64, "top": 0, "bottom": 0} (pixels)."""
    out = dict.fromkeys(SIDES, 0)
    for item in filter(None, (t.strip() for t in text.split(","))):
        side, _, val = item.partition("=")
        if side not in SIDES or not val.strip().isdigit():
            raise ConfigError(f"--extend item {item!r} must be SIDE=PIXELS with SIDE one of {list(SIDES)}, "
                              f"e.g. left=128,right=128")
        out[side] = int(val)
    if not any(out.values()):
        raise ConfigError(f"--extend {text!r} grows no side; e.g. left=128,right=128")
    return out


def extend_canvas(height: int, width: int, extend: dict[str, int], *, patch: int
                  ) -> tuple[int, int, int, int, dict[str, int]]:
    """Grow an (height, width) image by ``extend`` px per side, each rounded up to whole patches.

    Returns (new_h, new_w, top, left, used) with the original at rows top:top+height,
    cols left:left+width, and ``used`` the per-side growth actually applied."""
    used = {s: int(math.ceil(extend.get(s, 0) / patch) * patch) for s in SIDES}
    new_h = height + used["top"] + used["bottom"]
    new_w = width + used["left"] + used["right"]
    return new_h, new_w, used["top"], used["left"], used


def window_origins(size: int, window: int, stride: int) -> list[int]:
    """Starts of windows of ``window`` covering [0, size), ``stride`` apart, the last flush at the end."""
    if size < window:
        raise ConfigError(f"canvas of {size} tokens is smaller than the model's {window}-token window")
    if stride <= 0:
        raise ConfigError(f"window stride must be positive, got {stride}")
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


@torch.no_grad()
def decode_masked_tokens(model: torch.nn.Module, tokens: torch.Tensor, token_mask: torch.Tensor,
                         labels: torch.Tensor | list[int], *, steps: int = 12, start_iter: int = 0,
                         schedule: str = "cosine", choice_temperature: float = 4.5, seed: int | None = 0,
                         top_k: int | None = None) -> torch.Tensor:
    """Regenerate the masked tokens of (B, h, w) grids (the model's grid), conditioned on the rest
    and the class. token_mask (B, h, w) bool. Tokens outside the mask come back unchanged."""
    cfg = model.config
    b, h, w = tokens.shape
    if (h, w) != (cfg.latent_size, cfg.latent_size):
        raise ConfigError(f"token grid {h}x{w} differs from the model's {cfg.latent_size}x{cfg.latent_size}; "
                          f"use outpaint_tokens for larger canvases")
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    seq = torch.where(token_mask.bool(), torch.full_like(tokens, cfg.mask_token_id), tokens.long())
    inputs = torch.cat([(cfg.codebook_size + labels)[:, None], seq.reshape(b, h * w)], 1).to(device)
    noise = SeededNoise([seed + i for i in range(b)], device=device) if seed is not None \
        else TorchGumbelNoise(device=device)
    out = parallel_decode(lambda cur, step: model(cur), inputs, mask_token_id=cfg.mask_token_id,
                          codebook_size=cfg.codebook_size, num_iter=steps, start_iter=start_iter,
                          schedule=schedule, choice_temperature=choice_temperature, noise=noise, top_k=top_k)
    return out.tokens[:, 1:].reshape(b, h, w).to(tokens.device)


@torch.no_grad()
def outpaint_tokens(model: torch.nn.Module, tokens: torch.Tensor, known: torch.Tensor, label: int, *,
                    steps: int = 12, schedule: str = "cosine", seed: int = 0, stride: int | None = None,
                    choice_temperature: float = 4.5) -> torch.Tensor:
    """Fill the unknown tokens of one (H, W) grid, H, W >= the model's grid, window by window.

    Windows of the model's size, ``stride`` apart (default half a window), in raster order;
    each decodes its still-unknown tokens conditioned on every token already known inside it."""
    n = model.config.latent_size
    stride = stride or max(1, n // 2)
    hh, ww = tokens.shape
    grid = tokens.clone().long()
    done = known.clone().bool()
    k = 0
    for r0 in window_origins(hh, n, stride):
        for c0 in window_origins(ww, n, stride):
            win_known = done[r0:r0 + n, c0:c0 + n]
            if bool(win_known.all()):
                continue
            filled = decode_masked_tokens(model, grid[None, r0:r0 + n, c0:c0 + n], ~win_known[None], [label],
                                          steps=steps, schedule=schedule, seed=seed + 1000 * k,
                                          choice_temperature=choice_temperature)[0]
            grid[r0:r0 + n, c0:c0 + n] = filled
            done[r0:r0 + n, c0:c0 + n] = True
            k += 1
    return grid
