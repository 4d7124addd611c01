"""The built-in demo dataset: labelled crops of the photographs scikit-image ships offline.

Each class is one source photograph (``class = source photo``); every image is a seeded
random-position, random-scale square crop of it, resized to ``image_size`` and written as a
JPEG in the ImageNet folder layout, so the demo exercises the same path a real ImageNet does::

    OUT/train/c00_astronaut/c00_astronaut_0.JPEG ... (train_per_class per class)
    OUT/val/c00_astronaut/c00_astronaut_val_0.JPEG ...  (val_per_class per class)
    OUT/classes.json   [{"index": 0, "id": "c00_astronaut", "name": "astronaut", "source": ...}, ...]
    OUT/classes.txt    one "<id> <name>" line per class in index order (as LOC_synset_mapping.txt)

Class folder names sort in index order (as ImageNet synset ids do). The output is a pure
function of the config: the same seed gives the same bytes.

``with_bad_files=True`` also writes the kinds of file a real ImageNet holds (see
``BAD_FILES``) into ``train/c00_astronaut/`` and lists them in ``OUT/bad_files.json``.
"""
from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from maskgit_core.errors import ConfigError

__all__ = ["DemoDataConfig", "PHOTOS", "BAD_FILES", "make_demo_dataset", "load_photo", "DemoDataset"]

log = logging.getLogger(__name__)


def _rgb(a: np.ndarray) -> np.ndarray:
    """Any scikit-image photo (gray, bool, RGB, RGBA) -> (H, W, 3) uint8."""
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:  # composite RGBA on white
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        a = (a[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(a[:, :, :3].astype(np.uint8))


def _photo(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]
        return getattr(skimage.data, name)()
    return load


# The 16 classes, in index order: 10 colour photos, then 6 grayscale ones (replicated to RGB).
# skimage.data.cat() is the same photo as chelsea(), so it is not a class of its own.
PHOTOS: dict[str, str] = {
    "astronaut": "skimage.data.astronaut",
    "coffee": "skimage.data.coffee",
    "chelsea": "skimage.data.chelsea",
    "rocket": "skimage.data.rocket",
    "hubble_deep_field": "skimage.data.hubble_deep_field",
    "immunohistochemistry": "skimage.data.immunohistochemistry",
    "colorwheel": "skimage.data.colorwheel",
    "retina": "skimage.data.retina",
    "logo": "skimage.data.logo (RGBA composited on white)",
    "motorcycle": "skimage.data.stereo_motorcycle()[0]",
    "camera": "skimage.data.camera (grayscale)",
    "moon": "skimage.data.moon (grayscale)",
    "coins": "skimage.data.coins (grayscale)",
    "clock": "skimage.data.clock (grayscale)",
    "brick": "skimage.data.brick (grayscale)",
    "gravel": "skimage.data.gravel (grayscale)",
}

# Deliberately bad or unusual files written with --with-bad-files, all in train/c00_astronaut/.
# "decodes": a reader must convert it to RGB and keep it; "error": it must land in the error report.
BAD_FILES: dict[str, dict[str, str]] = {
    "c00_astronaut_bad_truncated.JPEG": {"expect": "error", "what": "a valid JPEG cut to half its bytes"},
    "c00_astronaut_bad_empty.JPEG": {"expect": "error", "what": "zero bytes"},
    "c00_astronaut_bad_cmyk.JPEG": {"expect": "decodes", "what": "a CMYK JPEG (ImageNet train has 22)"},
    "c00_astronaut_bad_gray.JPEG": {"expect": "decodes", "what": "a single-channel grayscale JPEG"},
    "c00_astronaut_bad_png.JPEG": {"expect": "decodes", "what": "PNG bytes under a .JPEG name "
                                                               "(as n02105855_2933.JPEG)"},
}


@dataclass(kw_only=True, frozen=True)
class DemoDataConfig:
    """What the built-in dataset looks like."""

    image_size: int = 32
    """Side of the square output images in pixels (32-64)."""
    num_classes: int = 16
    """Number of classes, taken in order from ``PHOTOS`` (10-16)."""
    train_per_class: int = 200
    """Training images per class."""
    val_per_class: int = 25
    """Held-out images per class (different crops of the same photo)."""
    min_scale: float = 0.12
    """Smallest crop side as a fraction of the photo's shorter side."""
    max_scale: float = 0.5
    """Largest crop side as a fraction of the photo's shorter side."""
    jpeg_quality: int = 95
    """JPEG quality of the written files."""
    seed: int = 0
    """Seed of the crop positions, scales and flips."""
    with_bad_files: bool = False
    """Also write the files listed in ``BAD_FILES`` (for the tokenize job's error handling)."""

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 64:
            raise ConfigError(f"image_size must be in [32, 64] pixels, got {self.image_size}")
        if not 10 <= self.num_classes <= len(PHOTOS):
            raise ConfigError(f"num_classes must be in [10, {len(PHOTOS)}] (one per built-in photo), "
                              f"got {self.num_classes}")
        if self.train_per_class < 1 or self.val_per_class < 0:
            raise ConfigError(f"train_per_class must be >= 1 and val_per_class >= 0, got "
                              f"{self.train_per_class} and {self.val_per_class}")
        if not 0.0 < self.min_scale <= self.max_scale <= 1.0:
            raise ConfigError(f"need 0 < min_scale <= max_scale <= 1, got {self.min_scale}, {self.max_scale}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


@dataclass(kw_only=True, frozen=True)
class DemoDataset:
    """Where ``make_demo_dataset`` wrote things and how many."""

    root: Path
    train_dir: Path
    val_dir: Path
    classes: list[dict]
    num_train: int
    num_val: int
    bad_files: list[str]


def load_photo(name: str) -> np.ndarray:
    """The named built-in photo as (H, W, 3) uint8 RGB."""
    if name not in PHOTOS:
        raise ConfigError(f"unknown demo photo {name!r}; choose one of {list(PHOTOS)}")
    return _rgb(np.asarray(_photo(name)()))


def _crop(photo: Image.Image, rng: np.random.Generator, cfg: DemoDataConfig) -> Image.Image:
    """One random-position, random-scale square crop, resized to image_size, maybe flipped."""
    w, h = photo.size
    short = min(w, h)
    side = max(cfg.image_size // 2, int(round(short * rng.uniform(cfg.min_scale, cfg.max_scale))))
    side = min(side, short)
    x = int(rng.integers(0, w - side + 1))
    y = int(rng.integers(0, h - side + 1))
    img = photo.resize((cfg.image_size, cfg.image_size), Image.Resampling.BICUBIC,
                       box=(x, y, x + side, y + side))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_bad_files(class_dir: Path, photo: Image.Image, cfg: DemoDataConfig) -> list[str]:
    small = photo.resize((cfg.image_size * 2, cfg.image_size * 2), Image.Resampling.BICUBIC)
    good = _jpeg_bytes(small, cfg.jpeg_quality)
    png = io.BytesIO()
    small.save(png, format="PNG")
    cmyk = io.BytesIO()
    small.convert("CMYK").save(cmyk, format="JPEG", quality=cfg.jpeg_quality)
    gray = io.BytesIO()
    small.convert("L").save(gray, format="JPEG", quality=cfg.jpeg_quality)
    contents = {
        "c00_astronaut_bad_truncated.JPEG": good[: len(good) // 2],
        "c00_astronaut_bad_empty.JPEG": b"",
        "c00_astronaut_bad_cmyk.JPEG": cmyk.getvalue(),
        "c00_astronaut_bad_gray.JPEG": gray.getvalue(),
        "c00_astronaut_bad_png.JPEG": png.getvalue(),
    }
    assert set(contents) == set(BAD_FILES)
    for name, data in contents.items():
        _write(class_dir / name, data)
    return [f"train/{class_dir.name}/{name}" for name in contents]


def make_demo_dataset(out: str | os.PathLike, config: DemoDataConfig | None = None) -> DemoDataset:
    """Write the demo dataset under ``out`` (see the module docstring); return what was written.

    Existing files of the same names are overwritten, so a rerun gives the same tree.
    """
    cfg = config or DemoDataConfig()
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{root} exists and is not a directory; pass a directory for the demo dataset")
    names = list(PHOTOS)[: cfg.num_classes]
    classes = [{"index": i, "id": f"c{i:02d}_{n}", "name": n, "source": PHOTOS[n]} for i, n in enumerate(names)]
    bad: list[str] = []
    for c in classes:
        photo = Image.fromarray(load_photo(c["name"]))
        for split, count, stem in (("train", cfg.train_per_class, c["id"]),
                                   ("val", cfg.val_per_class, f"{c['id']}_val")):
            d = root / split / c["id"]
            d.mkdir(parents=True, exist_ok=True)
            # One independent stream per (seed, class, split): adding classes changes nothing else.
            rng = np.random.default_rng([cfg.seed, c["index"], 0 if split == "train" else 1])
            for n in range(count):
                _write(d / f"{stem}_{n}.JPEG", _jpeg_bytes(_crop(photo, rng, cfg), cfg.jpeg_quality))
        if cfg.with_bad_files and c["index"] == 0:
            bad = _write_bad_files(root / "train" / c["id"], photo, cfg)
        log.info("demo data: class %s written", c["id"])
    _write(root / "classes.json", (json.dumps(classes, indent=1) + "\n").encode())
    _write(root / "classes.txt", "".join(f"{c['id']} {c['name']}\n" for c in classes).encode())
    if bad:
        listing = {p: BAD_FILES[Path(p).name] for p in bad}
        _write(root / "bad_files.json", (json.dumps(listing, indent=1) + "\n").encode())
    _write(root / "demo_data_config.json", (json.dumps(asdict(cfg), indent=1) + "\n").encode())
    return DemoDataset(root=root, train_dir=root / "train", val_dir=root / "val", classes=classes,
                       num_train=cfg.train_per_class * len(classes), num_val=cfg.val_per_class * len(classes),
                       bad_files=bad)
