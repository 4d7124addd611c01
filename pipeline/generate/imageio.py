"""Image arrays and files: float <-> uint8, grids, PNG writing, and the resize/crop rule that turns
an input image (or mask) into the tokenizer's square."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["to_uint8", "make_grid", "save_png", "fit_image", "load_image", "load_mask"]


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
