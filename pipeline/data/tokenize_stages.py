"""The Ray Data stages of the tokenize job (``pipeline.data.tokenize_job``): read + decode + crop
a task's images (CPU tasks), and encode them to token ids (an actor pool, GPU or CPU).

A row is one *task*: ``task_size`` consecutive images of a unit. Rows are columnar and compact
(``pack_items``): the keys and locations of a task's images as one NUL-joined string each (NUL is in
no file or tar member name), labels, offsets and sizes as int64 bytes; no per-image JSON."""
from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

import numpy as np

from tokenizer.preprocess import DecodeError, preprocess_bytes
from pipeline.data.sources import ItemReader, SourceItem
from maskgit_core.errors import ConfigError

__all__ = ["pack_items", "unpack_items", "join_keys", "split_keys", "decode_task", "build_encoder",
           "encoder_payload", "encoder_device", "EncodeTasks"]

log = logging.getLogger(__name__)

_SEP = "\0"
_PASS = ("unit", "task", "tasks")  # the task's place in the plan, passed through both stages


def join_keys(keys: list[str]) -> str:
    return _SEP.join(keys)


def split_keys(s: str, n: int) -> list[str]:
    """The ``n`` keys of ``join_keys`` (``n`` tells an empty list from one empty key)."""
    return s.split(_SEP) if n else []


def pack_items(items: list[SourceItem]) -> dict[str, Any]:
    """A task's items as the compact columns of its row."""
    return {"n_items": len(items), "keys": join_keys([it.key for it in items]),
            "locs": join_keys([it.loc for it in items]),
            "ints": np.asarray([(it.label, it.offset, it.size) for it in items], np.int64).tobytes()}


def unpack_items(row: dict[str, Any]) -> list[SourceItem]:
    n = int(row["n_items"])
    ints = np.frombuffer(row["ints"], np.int64).reshape(n, 3).tolist()
    return [SourceItem(k, lab, loc, off, size) for k, loc, (lab, off, size)
            in zip(split_keys(str(row["keys"]), n), split_keys(str(row["locs"]), n), ints)]


def _decode_items(reader: ItemReader, items: list[SourceItem], *, image_size: int,
                  augmentations: tuple[str, ...]) -> tuple[list[str], list[int], list[np.ndarray], list]:
    """(keys, labels, views (V, 3, S, S) each, [key, reason] errors) of the items, in order."""
    keys, labels, views, errors = [], [], [], []
    for item in items:
        try:
            data = reader.read(item)
            views.append(preprocess_bytes(data, image_size, augmentations))  # (V, 3, S, S)
            keys.append(item.key)
            labels.append(item.label)
        except DecodeError as e:
            errors.append([item.key, str(e)])
        except OSError as e:
            errors.append([item.key, f"cannot read file ({type(e).__name__}: {e.strerror or e})"])
        except Exception as e:  # noqa: BLE001 - one bad image must not fail (and retry) the whole task
            errors.append([item.key, f"cannot process image ({type(e).__name__}: {e})"])
    return keys, labels, views, errors


def decode_task(batch: dict[str, np.ndarray], *, image_size: int, augmentations: tuple[str, ...],
                storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Ray map_batches fn (batch of task rows): read + decode + crop every image of each task."""
    reader = ItemReader(**(storage_options or {}))
    out: dict[str, list] = {k: [] for k in (*_PASS, "keys", "labels", "images", "n", "errors", "decode_s")}
    try:
        for i in range(len(batch["unit"])):
            t = time.perf_counter()
            row = {k: batch[k][i] for k in ("n_items", "keys", "locs", "ints")}
            keys, labels, views, errors = _decode_items(reader, unpack_items(row), image_size=image_size,
                                                        augmentations=augmentations)
            images = np.stack(views) if views else np.zeros((0,), np.uint8)  # (N, V, 3, S, S)
            for k in _PASS:
                out[k].append(int(batch[k][i]))
            out["keys"].append(join_keys(keys))
            out["labels"].append(np.asarray(labels, np.int64).tobytes())
            out["images"].append(images.tobytes())
            out["n"].append(len(keys))
            out["errors"].append(json.dumps(errors))
            out["decode_s"].append(time.perf_counter() - t)
    finally:
        reader.close()
    return {**{k: np.asarray(out[k], np.int64) for k in (*_PASS, "n")},
            **{k: np.asarray(out[k], dtype=object) for k in ("keys", "labels", "images", "errors")},
            "decode_s": np.asarray(out["decode_s"], np.float64)}


def build_encoder(payload: dict[str, Any], *, device: str):
    """The tokenizer (encoder + codebook) from a payload made by ``encoder_payload``."""
    import tokenizer
    from tokenizer.config import config_from_dict

    model = tokenizer.VQGAN(config_from_dict(payload["config"]))
    model.decoder = None  # the job only encodes
    missing, unexpected = model.load_state_dict(payload["state"], strict=False)
    if unexpected or any(not k.startswith("decoder.") for k in missing):
        raise ConfigError(f"tokenizer weights do not match its config (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]})")
    return model.to(device).eval()


def encoder_payload(model) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("decoder.")}
    return {"config": model.config.to_dict(), "state": state}


def encoder_device(device: str, *, cuda_available: bool, simulated_gpus: bool = False, where: str = "") -> str:
    """The torch device of an encoder actor that the job planned on ``device``. An actor planned on
    ``cuda`` holds a Ray GPU; if its torch sees no CUDA device that is a broken GPU node (a CPU build of
    torch, no driver) and the job fails here, unless ``simulated_gpus`` (Ray's fake autoscaling
    cluster in tests: its GPU nodes declare GPUs that do not exist), where it computes on the CPU."""
    if device != "cuda" or cuda_available:
        return device
    if simulated_gpus:
        return "cpu"
    raise ConfigError(f"an encoder actor holds a Ray GPU but its torch sees no CUDA device ({where}): install a "
                      "CUDA build of torch and the NVIDIA driver on the GPU nodes, or run with --device cpu")


class EncodeTasks:
    """Ray actor (map_batches callable class): encodes each task in fixed chunks of ``batch_size``
    from its first image, so that its tokens do not depend on which run or actor encoded it.

    Precision: ``fp32`` (on CUDA with TF32 off for matmuls and convolutions: PyTorch allows TF32 in
    cuDNN convolutions by default), ``tf32`` (TF32 allowed; the same as fp32 on a CPU), ``bf16``
    (autocast); the nearest-code search always runs in float32. ``compile``: ``torch.compile`` the
    encoder with fixed shapes (a short last chunk is padded to ``batch_size``); where compiling or the
    compiled call fails the actor logs a warning and encodes eagerly. On CUDA a chunk goes to the
    device from pinned memory with a non-blocking copy, as uint8, and becomes float there."""

    def __init__(self, payload_ref: list, *, device: str, precision: str, batch_size: int, search: str,
                 torch_threads: int, image_size: int, n_views: int, latent: int, token_dtype: str,
                 compile: bool = False, simulated_gpus: bool = False):
        import ray
        import torch

        from tokenizer.faiss_search import make_search

        device = encoder_device(device, cuda_available=torch.cuda.is_available(), simulated_gpus=simulated_gpus,
                                where=f"node {ray.util.get_node_ip_address()}, torch {torch.__version__}")
        torch.set_num_threads(torch_threads)
        payload = payload_ref[0]  # an object ref in the job; the payload itself in tests
        if isinstance(payload, ray.ObjectRef):
            payload = ray.get(payload)
        self.torch = torch
        self.device = device
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.benchmark = True  # one chunk shape per run: pick the fastest kernels once
        self.model = build_encoder(payload, device=device)
        k = self.model.config.codebook_size
        self.model.set_search(make_search(search, device=device, codebook_size=k, num_threads=torch_threads))
        self.precision, self.batch_size = precision, batch_size
        self.shape = (n_views, 3, image_size, image_size)
        self.latent, self.token_dtype = latent, np.dtype(token_dtype)
        self.compiled = bool(compile)
        self._encode_latents = (torch.compile(self.model.encode_latents, dynamic=False) if compile
                                else self.model.encode_latents)

    def _latents(self, x):
        torch = self.torch
        ctx = (torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)
               if self.precision == "bf16" else contextlib.nullcontext())
        try:
            with ctx:
                return self._encode_latents(x)
        except Exception as e:  # noqa: BLE001 - a compiler failure must not fail the job: encode eagerly
            if not self.compiled:
                raise
            log.warning("torch.compile of the encoder failed (%s: %s); encoding without it", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            self.compiled = False
            self._encode_latents = self.model.encode_latents
            with ctx:
                return self._encode_latents(x)

    def encode(self, images: np.ndarray) -> np.ndarray:  # (N, V, 3, S, S) uint8 -> (N, V, h, w)
        torch = self.torch
        n = images.shape[0]
        flat = images.reshape(-1, *self.shape[1:])  # (N*V, 3, S, S)
        out = []
        with torch.inference_mode():
            for i in range(0, flat.shape[0], self.batch_size):
                u8 = torch.from_numpy(np.ascontiguousarray(flat[i:i + self.batch_size]))
                b = u8.shape[0]
                if self.compiled and b < self.batch_size:  # one shape for the compiled graph
                    u8 = torch.cat([u8, u8.new_zeros((self.batch_size - b, *u8.shape[1:]))])
                if self.cuda:
                    u8 = u8.pin_memory().to(self.device, non_blocking=True)
                x = u8.float().div_(255.0)
                z = self._latents(x)[:b]
                out.append(self.model.quantizer.ids(z.float()).cpu().numpy())  # (b, h, w)
        ids = np.concatenate(out) if out else np.zeros((0, self.latent, self.latent), np.int64)
        return ids.reshape(n, self.shape[0], self.latent, self.latent).astype(self.token_dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tokens, seconds = [], []
        for images, n in zip(batch["images"], batch["n"]):
            arr = np.frombuffer(images, np.uint8).reshape(int(n), *self.shape) if n else \
                np.zeros((0, *self.shape), np.uint8)
            t = time.perf_counter()
            tokens.append(self.encode(arr).tobytes())
            seconds.append(time.perf_counter() - t)
        return {**{k: batch[k] for k in (*_PASS, "keys", "labels", "n", "errors", "decode_s")},
                "tokens": np.asarray(tokens, dtype=object), "encode_s": np.asarray(seconds, np.float64)}
