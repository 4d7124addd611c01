"""Image bytes -> the crops the tokenizer encodes. Pure, deterministic, Pillow + numpy only.

Convention (ADM / LlamaGen ``center_crop_arr``): while the shorter side is at least twice the
target, halve the image with a BOX filter; then resize with BICUBIC so the shorter side equals
the target (rounding the other side); then take the centred square, offsets floored.

Stored augmentations (each adds views to every image, in this order):

- ``hflip``: the horizontally flipped centre crop.
- ``tencrop``: the ADM resize to ``round(1.1 * size)``, then the four corner crops and the centre
  crop of ``size`` pixels, then the same five flipped (torchvision's ``TenCrop`` order).

Any Pillow mode becomes RGB: CMYK, grayscale (L, 1, I;16, I, F), palette, and images with alpha
(composited on white). The file's bytes decide the format, not its name (ImageNet holds a PNG
named ``.JPEG``). EXIF orientation is ignored, as in the usual ImageNet pipelines.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from maskgit_core.errors import ConfigError, DecodeError

__all__ = ["MAX_ASPECT", "MAX_PIXELS", "AUGMENTATIONS", "view_names", "decode_rgb", "center_crop_arr", "make_views", "preprocess_bytes",
           "DecodeError"]

AUGMENTATIONS = ("hflip", "tencrop")
MAX_ASPECT = 16.0
"""Longest / shortest side above this is refused: the ADM resize scales the shorter side to the crop
size, so a 2000x1 image would become 512,000 pixels wide (1.3 GiB) to yield a sliver."""
MAX_PIXELS = 100_000_000
"""Pixels of the decoded image above this are refused before decoding (about 300 MB of RGB)."""
_TEN = ("tl", "tr", "bl", "br", "c")


def view_names(augmentations: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The stored views, in order: always ``center`` first, then the augmentations' views."""
    unknown = [a for a in augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown augmentation(s) {unknown}; choose from {list(AUGMENTATIONS)}")
    views = ["center"]
    if "hflip" in augmentations:
        views.append("center_hflip")
    if "tencrop" in augmentations:
        views += [f"crop1.1_{p}" for p in _TEN] + [f"crop1.1_{p}_hflip" for p in _TEN]
    return tuple(views)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high bit depth grayscale -> 8 bit
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK, YCbCr, L, 1, P, LAB, HSV


def decode_rgb(data: bytes) -> Image.Image:
    """Bytes of any image Pillow reads -> a fully loaded RGB image; DecodeError says why not."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            _check_geometry(*img.size, fmt)  # from the header, before a pixel is decoded
            img.load()  # decode now: truncated data fails here, not later
            rgb = _to_rgb(img)
    except DecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            EOFError, MemoryError) as e:
        raise DecodeError(f"cannot decode image ({type(e).__name__}: {e})") from None
    if rgb.width < 1 or rgb.height < 1:
        raise DecodeError(f"image has no pixels ({rgb.width}x{rgb.height}, {fmt})")
    return rgb


def _check_geometry(w: int, h: int, fmt: str | None) -> None:
    if w < 1 or h < 1:
        raise DecodeError(f"image has no pixels ({w}x{h}, {fmt})")
    if w * h > MAX_PIXELS:
        raise DecodeError(f"image is {w}x{h} = {w * h:,} pixels ({fmt}), above the limit of {MAX_PIXELS:,}")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise DecodeError(f"image is {w}x{h} ({fmt}): aspect ratio above {MAX_ASPECT:g}:1, its centre crop would "
                          "be a resized sliver")


def _adm_resize(img: Image.Image, shorter: int) -> Image.Image:
    while min(img.size) >= 2 * shorter:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = shorter / min(img.size)
    return img.resize(tuple(max(shorter, round(x * scale)) for x in img.size), resample=Image.BICUBIC)


def center_crop_arr(img: Image.Image, size: int) -> np.ndarray:
    """ADM centre crop: RGB image -> (size, size, 3) uint8."""
    arr = np.asarray(_adm_resize(img, size))
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y:y + size, x:x + size]


def _ten_crop(img: Image.Image, size: int) -> list[np.ndarray]:
    big = np.asarray(_adm_resize(img, round(1.1 * size)))  # (H', W', 3)
    hh, ww = big.shape[:2]
    y0, x0 = (hh - size) // 2, (ww - size) // 2
    corners = {"tl": (0, 0), "tr": (0, ww - size), "bl": (hh - size, 0), "br": (hh - size, ww - size),
               "c": (y0, x0)}
    crops = [big[y:y + size, x:x + size] for y, x in (corners[p] for p in _TEN)]
    return crops + [c[:, ::-1] for c in crops]


def make_views(img: Image.Image, size: int, augmentations: tuple[str, ...] = ()) -> np.ndarray:
    """RGB image -> (n_views, 3, size, size) uint8 in ``view_names(augmentations)`` order."""
    view_names(augmentations)  # validates
    center = center_crop_arr(img, size)
    views = [center]
    if "hflip" in augmentations:
        views.append(center[:, ::-1])
    if "tencrop" in augmentations:
        views += _ten_crop(img, size)
    return np.ascontiguousarray(np.stack(views).transpose(0, 3, 1, 2))  # (V, 3, S, S)


def preprocess_bytes(data: bytes, size: int, augmentations: tuple[str, ...] = ()) -> np.ndarray:
    """Image bytes -> (n_views, 3, size, size) uint8; raises DecodeError with the reason."""
    return make_views(decode_rgb(data), size, augmentations)
