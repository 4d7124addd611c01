"""Small real-JPEG datasets for the tokenize tests (written with Pillow into tmp dirs)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ("n01440764", "n01443537", "n01484850")  # ImageNet-1k indices 0, 1, 2


def photo(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A deterministic smooth colour image (gradients + blobs), size (W, H)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-3, 3, size=3)
        img[:, :, c] = 127 + 100 * np.sin(a * xx / w * np.pi + b * yy / h * np.pi + p)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format="JPEG", quality=90, **kw)
    return b.getvalue()


def make_imagenet_tree(root: Path, *, per_class: int = 4, classes=WNIDS, split: str = "train",
                       seed: int = 0) -> list[str]:
    """ROOT/<split>/<wnid>/<wnid>_<i>.JPEG; returns the keys (relative to ROOT)."""
    keys = []
    for ci, wnid in enumerate(classes):
        d = root / split / wnid
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (40 + 7 * ((i + ci) % 5), 36 + 5 * (i % 3))  # mixed aspect ratios
            (d / f"{wnid}_{i}.JPEG").write_bytes(jpeg_bytes(photo(seed + 100 * ci + i, size)))
            keys.append(f"{split}/{wnid}/{wnid}_{i}.JPEG")
    return keys


BAD_KINDS = ("truncated", "zero_byte", "cmyk", "grayscale", "png_as_jpeg", "directory", "broken_symlink",
             "no_class_folder", "thin_png", "very_thin_png", "fifo", "dev_zero_link")
# kinds that must decode (converted to RGB); the others must land in the error report
CONVERTIBLE = ("cmyk", "grayscale", "png_as_jpeg")


def add_bad_file(root: Path, kind: str, *, split: str = "train", wnid: str = WNIDS[0]) -> str:
    """Write one bad input of ``kind`` into ROOT/<split>/...; returns its key."""
    d = root / split / wnid
    d.mkdir(parents=True, exist_ok=True)
    name = f"{wnid}_bad_{kind}.JPEG"
    p = d / name
    img = photo(999, (44, 38))
    if kind == "truncated":
        data = jpeg_bytes(img)
        p.write_bytes(data[: len(data) // 2])
    elif kind == "zero_byte":
        p.write_bytes(b"")
    elif kind == "cmyk":
        p.write_bytes(jpeg_bytes(img.convert("CMYK")))
    elif kind == "grayscale":
        p.write_bytes(jpeg_bytes(img.convert("L")))
    elif kind == "png_as_jpeg":
        b = io.BytesIO()
        img.convert("RGBA").save(b, format="PNG")
        p.write_bytes(b.getvalue())
    elif kind == "directory":  # 'unreadable': tests run as root, so chmod 000 would still read
        p.mkdir()
    elif kind == "broken_symlink":
        os.symlink(d / "does-not-exist.JPEG", p)
    elif kind in ("thin_png", "very_thin_png"):  # 88 bytes that would need 1.3 GiB after the ADM resize
        b = io.BytesIO()
        Image.new("RGB", (2000 if kind == "thin_png" else 200000, 1), (200, 30, 30)).save(b, format="PNG")
        p.write_bytes(b.getvalue())
    elif kind == "fifo":  # a reader that opened it would block forever
        os.mkfifo(p)
    elif kind == "dev_zero_link":  # a reader that followed it would read without end
        os.symlink("/dev/zero", p)
    elif kind == "no_class_folder":
        p = root / split / name
        p.write_bytes(jpeg_bytes(img))
        return f"{split}/{name}"
    else:
        raise ValueError(kind)
    return f"{split}/{wnid}/{name}"
