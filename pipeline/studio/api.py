"""The studio's API handlers: JSON in, JSON out, no HTTP. Every handler calls the same public
functions as ``maskgit-pipeline sample`` and ``edit`` (``pipeline.generate``, ``transformer.editing``),
so an image the studio shows for a seed is the image the CLI writes for that seed.

Requests a user can get wrong (a class out of range, an unreadable image, an unknown schedule)
raise ``RequestError``, which the server answers with HTTP 400 and ``{"error": message}``.
"""
from __future__ import annotations

import base64
import binascii
import io
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from maskgit_core.errors import MaskGITError
from transformer.editing import parse_bbox, parse_extend
from transformer.sampling import GUIDANCE_SCHEDULES, ORDERS
from transformer.schedules import SCHEDULES

from pipeline.generate import (edit_inpaint, edit_outpaint, edit_replace, fit_image, load_image,
                               load_mask, load_pair, make_grid, sample_images, step_progression, to_uint8)
from pipeline.generate.sampling import sample_batches
from pipeline.studio.models import StudioPaths, class_table, held_out_samples

__all__ = ["RequestError", "Studio", "BATCH_SIZE", "MAX_IMAGE_BYTES", "MAX_IMAGE_SIDE"]

log = logging.getLogger(__name__)

BATCH_SIZE = 32
"""Images per sampling batch: the CLI's ``--batch-size`` default, so seeds and pixels match it."""
MAX_IMAGE_BYTES = 10 * 1024 * 1024
"""Largest accepted encoded image."""
MAX_IMAGE_SIDE = 4096
"""Largest accepted image side in pixels."""
MAX_IMAGES = 64
"""Most images one generate request may ask for (classes x per class)."""
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class RequestError(MaskGITError):
    """A request the user can fix; answered with HTTP 400 and the message."""


# ------------------------------------------------------------------ request parsing

def _int(req: dict, key: str, default: int | None, lo: int, hi: int) -> int | None:
    v = req.get(key, default)
    if v is None or v == "":
        return default
    if isinstance(v, bool) or not isinstance(v, (int, str, float)):
        raise RequestError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")
    try:
        f = float(v)
        i = int(f)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}") from None
    if i != f or not lo <= i <= hi:
        raise RequestError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return i


def _float(req: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = req.get(key, default)
    if v is None or v == "":
        return default
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise RequestError(f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}") from None
    if isinstance(v, bool) or not lo <= f <= hi:
        raise RequestError(f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return f


def _choice(req: dict, key: str, default: str, options) -> str:
    v = req.get(key, default)
    if v not in options:
        raise RequestError(f"unknown {key} {v!r}; choose one of {sorted(options)}")
    return v


def decode_data_url(data, *, what: str = "image") -> bytes:
    """A ``data:image/...;base64,...`` URL (or bare base64) -> bytes, size-checked."""
    if not isinstance(data, str) or not data:
        raise RequestError(f"{what} is missing: " + ("paint the region to edit" if what == "mask" else
                                                     "upload a PNG or JPEG file or pick a sample"))
    b64 = data.split(",", 1)[1] if data.startswith("data:") else data
    if len(b64) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise RequestError(f"{what} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        return base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{what} is not valid base64 image data") from None


def _check_image_bytes(raw: bytes, what: str) -> tuple[int, int]:
    """Open the bytes with PIL and check the format and size; returns (width, height)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            fmt, size = im.format, im.size
            im.verify()
    except Image.DecompressionBombError:
        raise RequestError(f"{what} has too many pixels to decode safely; sides must be 1..{MAX_IMAGE_SIDE} px") \
            from None
    except UnidentifiedImageError:
        raise RequestError(f"{what}: not an image file PIL can read; use PNG, JPEG, WebP, BMP or GIF") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(f"{what}: a damaged image file ({e}); use PNG, JPEG, WebP, BMP or GIF") from None
    if fmt not in IMAGE_FORMATS:
        raise RequestError(f"{what}: format {fmt} is not supported; use one of {', '.join(IMAGE_FORMATS)}")
    if min(size) < 1 or max(size) > MAX_IMAGE_SIDE:
        raise RequestError(f"{what} is {size[0]}x{size[1]} px; sides must be 1..{MAX_IMAGE_SIDE} px")
    return size


def png_data_url(array: np.ndarray) -> str:
    """(H, W, 3) or (H, W) uint8 -> ``data:image/png;base64,...``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _u8(image: np.ndarray) -> np.ndarray:  # (H, W, 3) float [0, 1] -> uint8, the CLI's rounding
    return to_uint8(image.transpose(2, 0, 1)[None])[0]


@dataclass
class _Loaded:
    model: torch.nn.Module
    vq: torch.nn.Module
    ar: torch.nn.Module | None


class Studio:
    """Loaded models plus the handlers. One model call runs at a time (a lock): on a small CPU
    machine parallel requests only slow each other down."""

    def __init__(self, paths: StudioPaths, *, device: str = "cpu") -> None:
        self.paths = paths
        self.device = device
        model, vq = load_pair(paths.model, paths.tokenizer, device=device)
        if model.config.causal:
            raise RequestError(f"{paths.model} is the causal AR baseline; pass it as --ar-model and a MaskGIT "
                               "model as --model")
        ar = None
        if paths.ar_model is not None:
            ar, _ = load_pair(paths.ar_model, paths.tokenizer, device=device)
            if not ar.config.causal:
                raise RequestError(f"--ar-model {paths.ar_model} is not a causal AR checkpoint")
        self.m = _Loaded(model.eval(), vq, ar.eval() if ar is not None else None)
        self.lock = threading.Lock()
        self.num_classes = model.config.num_classes
        self.null_label = (getattr(model, "checkpoint_meta", None) or {}).get("null_label")
        self.classes = class_table(paths.model, self.num_classes)
        if self.null_label is not None and 0 <= self.null_label < self.num_classes:
            self.classes[self.null_label]["name"] += " (null class of guidance)"
        self.samples = held_out_samples(paths.data_root)
        with torch.no_grad():  # the first call pays one-off set-up costs; pay them before the first user
            sample_images(model, vq, [0], steps=2, seed=0)
        log.info("studio: %s + %s (%d classes)%s", paths.model, paths.tokenizer, self.num_classes,
                 f", AR {paths.ar_model}" if ar is not None else "")

    # ------------------------------------------------------------------ info
    def info(self) -> dict:
        vq, cfg = self.m.vq, self.m.model.config
        return {
            "model": str(self.paths.model), "tokenizer": str(self.paths.tokenizer),
            "ar_model": str(self.paths.ar_model) if self.m.ar is not None else None,
            "image_size": vq.config.image_size, "latent_size": vq.config.latent_size,
            "patch": vq.config.downsample_factor, "num_classes": self.num_classes, "null_label": self.null_label,
            "classes": self.classes, "samples": [{"id": s["id"], "name": s["name"]} for s in self.samples],
            "schedules": list(SCHEDULES), "orders": list(ORDERS), "guidance_schedules": list(GUIDANCE_SCHEDULES),
            "limits": {"max_images": MAX_IMAGES, "max_image_bytes": MAX_IMAGE_BYTES, "max_image_side": MAX_IMAGE_SIDE},
            "seq_len": cfg.seq_len,
        }

    def _label(self, v, key: str = "class") -> int:
        return _int({key: v}, key, None, 0, self.num_classes - 1) if v is not None else self._missing(key)

    @staticmethod
    def _missing(key: str):
        raise RequestError(f"{key} is missing")

    # ------------------------------------------------------------------ generate
    def generate(self, req: dict) -> dict:
        """Class-conditional samples exactly as ``maskgit-pipeline sample`` draws them: labels are the
        classes each repeated ``n`` times, batches of ``BATCH_SIZE`` starting at image ``start`` use
        seed ``seed + start``. Also the step-by-step strip of image ``strip_index`` and, when asked
        and an AR model is loaded, the AR baseline on the same labels and seeds."""
        classes = req.get("classes")
        if isinstance(classes, (int, str)):
            classes = [c for c in str(classes).split(",") if c.strip()]
        if not isinstance(classes, list) or not classes:
            raise RequestError("classes must be a non-empty list of class labels")
        cls = [self._label(c) for c in classes]
        n = _int(req, "n", 8, 1, MAX_IMAGES)
        labels = [c for c in cls for _ in range(n)]
        if len(labels) > MAX_IMAGES:
            raise RequestError(f"{len(cls)} classes x {n} per class = {len(labels)} images; at most {MAX_IMAGES}")
        seed = _int(req, "seed", 0, 0, 2**31 - 1 - len(labels))
        kw = dict(steps=_int(req, "steps", 8, 1, self.m.model.config.seq_len - 1),
                  schedule=_choice(req, "schedule", "cosine", SCHEDULES),
                  choice_temperature=_float(req, "choice_temperature", 4.5, 0.0, 100.0),
                  guidance_scale=_float(req, "guidance_scale", 0.0, 0.0, 50.0),
                  guidance_schedule=_choice(req, "guidance_schedule", "constant", GUIDANCE_SCHEDULES),
                  order=_choice(req, "order", "confidence", ORDERS))
        strip_index = _int(req, "strip_index", 0, 0, len(labels) - 1)
        compare_ar = bool(req.get("compare_ar", False))
        if compare_ar and self.m.ar is None:
            raise RequestError("no AR baseline loaded: start the studio with --ar-model DIR")
        with self.lock, torch.no_grad():
            t0 = time.perf_counter()
            imgs, strip = [], None
            for start, u8, _, res in sample_batches(self.m.model, self.m.vq, labels, batch_size=BATCH_SIZE, seed=seed,
                                                    ar=False, record=True, **kw):
                imgs.append(u8)
                if start <= strip_index < start + len(u8):
                    strip = step_progression(self.m.vq, res, self.m.model.config.latent_size,
                                             index=strip_index - start)
            seconds = time.perf_counter() - t0
            u8 = np.concatenate(imgs)  # (N, H, W, 3)
            out = {"labels": labels, "seed": seed, "n": n, "seconds": round(seconds, 4),
                   "grid": png_data_url(make_grid(u8, nrow=n)), "images": [png_data_url(im) for im in u8],
                   "strip": png_data_url(strip), "strip_index": strip_index, "steps": kw["steps"], "ar": None,
                   "cli": self._sample_cli(cls, n, seed, kw)}
            if compare_ar:
                t0 = time.perf_counter()
                ar = [u8 for _, u8, _, _ in sample_batches(self.m.ar, self.m.vq, labels, batch_size=BATCH_SIZE,
                                                            seed=seed, ar=True)]
                out["ar"] = {"grid": png_data_url(make_grid(np.concatenate(ar), nrow=n)),
                             "seconds": round(time.perf_counter() - t0, 4)}
        log.info("generate: %d images in %.3f s", len(labels), seconds)
        return out

    def _sample_cli(self, cls, n, seed, kw) -> str:
        return (f"maskgit-pipeline sample --checkpoint {self.paths.model} --tokenizer {self.paths.tokenizer} "
                f"--classes {','.join(map(str, cls))} --per-class {n} --seed {seed} --decode-steps {kw['steps']} "
                f"--schedule {kw['schedule']} --choice-temperature {kw['choice_temperature']:g} "
                f"--guidance-scale {kw['guidance_scale']:g} --guidance-schedule {kw['guidance_schedule']} "
                f"--order {kw['order']} --out grid.png")

    # ------------------------------------------------------------------ images in
    def sample_image(self, sample_id: str) -> dict:
        """A held-out (or built-in) image, fitted to the tokenizer's square like any input."""
        s = next((s for s in self.samples if s["id"] == sample_id), None)
        if s is None:
            raise RequestError(f"unknown sample {sample_id!r}; choose one of {[x['id'] for x in self.samples]}")
        from PIL import Image

        if "path" in s:
            with Image.open(s["path"]) as im:
                img, rule = fit_image(im.convert("RGB"), self.m.vq.config.image_size)
        else:
            from pipeline.demo.data import load_photo

            img, rule = fit_image(Image.fromarray(load_photo(s["photo"])), self.m.vq.config.image_size)
        return {"id": s["id"], "name": s["name"], "image": png_data_url(np.asarray(img)), "rule": rule}

    def fit(self, req: dict) -> dict:
        """An uploaded image -> the tokenizer's square (the CLI's resize/crop rule) as PNG."""
        img, rule, _ = self._load_image(req.get("image"))
        return {"image": png_data_url(_u8(img)), "rule": rule, "size": img.shape[0]}

    def _load_image(self, data, what: str = "image") -> tuple[np.ndarray, str, tuple[int, int]]:
        raw = decode_data_url(data, what=what)
        size = _check_image_bytes(raw, what)
        img, rule = load_image(io.BytesIO(raw), self.m.vq.config.image_size)
        return img, rule, size

    # ------------------------------------------------------------------ edit
    def edit(self, req: dict) -> dict:
        """``op`` inpaint | replace | outpaint on ``image`` (a data URL), with the CLI's defaults.
        inpaint and replace take ``mask`` (a data URL the size of the image, white = region);
        replace uses the mask's bounding box as the official recipe's box unless ``bbox`` is given;
        outpaint takes ``extend`` ({"left": px, ...} or "left=16,right=16")."""
        op = _choice(req, "op", None, ("inpaint", "replace", "outpaint"))
        img, rule, size = self._load_image(req.get("image"))
        label = self._label(req.get("class"))
        seed = _int(req, "seed", 0, 0, 2**31 - 1)
        schedule = _choice(req, "schedule", "cosine", SCHEDULES)
        steps = _int(req, "steps", 12, 1, self.m.model.config.seq_len - 1)
        s = self.m.vq.config.image_size
        extra: dict = {}
        mask = None
        if op in ("inpaint", "replace") and (op == "inpaint" or req.get("bbox") in (None, "")):
            mraw = decode_data_url(req.get("mask"), what="mask")
            msize = _check_image_bytes(mraw, "mask")
            if msize != size:
                raise RequestError(f"mask is {msize[0]}x{msize[1]} but image is {size[0]}x{size[1]}; "
                                   "draw the mask at the image's size (both get the same resize/crop)")
            mask, _ = load_mask(io.BytesIO(mraw), s)
            if not mask.any():
                raise RequestError("the mask is empty: paint the region to edit (white) first")
        with self.lock:
            t0 = time.perf_counter()
            if op == "inpaint":
                dilation = _int(req, "dilation", 0, 0, s)
                feather = _int(req, "feather", None, 0, s)
                res = edit_inpaint(self.m.model, self.m.vq, img, mask, label, steps=steps, schedule=schedule,
                                   seed=seed, dilation=dilation, feather=feather)
                cli = f"edit inpaint --mask mask.png --dilation {dilation}" + \
                      (f" --feather {feather}" if feather is not None else "")
            elif op == "replace":
                bbox = self._bbox(req.get("bbox"), mask, s)
                start_iter = _int(req, "start_iter", 2, 0, steps - 1)
                res = edit_replace(self.m.model, self.m.vq, img, bbox, label, steps=steps, start_iter=start_iter,
                                   schedule=schedule, seed=seed)
                extra["bbox"] = "_".join(map(str, bbox))
                cli = f"edit replace --bbox {extra['bbox']} --start-iter {start_iter}"
            else:
                ext = self._extend(req.get("extend"), s)
                stride = _int(req, "stride", None, 1, self.m.model.config.latent_size)
                res = edit_outpaint(self.m.model, self.m.vq, img, ext, label, steps=steps, schedule=schedule,
                                    seed=seed, stride=stride)
                extra["extend"] = ",".join(f"{k}={v}" for k, v in ext.items() if v)
                cli = f"edit outpaint --extend {extra['extend']}" + (f" --stride {stride}" if stride else "")
            seconds = time.perf_counter() - t0
        out = _u8(res.image)
        log.info("edit %s: %d tokens in %.3f s", op, int(res.token_mask.sum()), seconds)
        return {"op": op, "image": png_data_url(out), "input": png_data_url(_u8(img)), "rule": rule,
                "width": out.shape[1], "height": out.shape[0], "tokens_regenerated": int(res.token_mask.sum()),
                "seconds": round(seconds, 4), **extra,
                "cli": (f"maskgit-pipeline {cli} --checkpoint {self.paths.model} --tokenizer {self.paths.tokenizer} "
                        f"--image input.png --class {label} --seed {seed} --schedule {schedule} --decode-steps {steps} "
                        f"--out {op}.png")}

    @staticmethod
    def _bbox(value, mask: np.ndarray | None, s: int) -> tuple[int, int, int, int]:
        if value not in (None, ""):
            bbox = parse_bbox(value) if isinstance(value, str) else tuple(int(v) for v in value)
            if len(bbox) != 4:
                raise RequestError(f"bbox must be top_left_height_width, got {value!r}")
        else:
            ys, xs = np.nonzero(mask)
            bbox = (int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1))
        t, l, h, w = bbox
        if t < 0 or l < 0 or h < 1 or w < 1 or t + h > s or l + w > s:
            raise RequestError(f"bbox {t}_{l}_{h}_{w} is not inside the {s}x{s} image")
        return bbox

    @staticmethod
    def _extend(value, s: int) -> dict[str, int]:
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items() if v not in (None, "", 0, "0"))
        if not isinstance(value, str) or not value:
            raise RequestError("extend is missing: give pixels for at least one side, e.g. left=16")
        ext = parse_extend(value)
        if any(v > 4 * s for v in ext.values()):
            raise RequestError(f"extend at most {4 * s} px per side (4 x the image), got {value!r}")
        return ext
