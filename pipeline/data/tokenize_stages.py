"""The Ray Data stages of the tokenize job (``pipeline.data.tokenize_job``): read + decode + crop
a unit's images (CPU tasks), and encode them to token ids (an actor pool, GPU or CPU)."""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from tokenizer.preprocess import DecodeError, preprocess_bytes
from pipeline.data.sources import ItemReader, SourceItem
from maskgit_core.errors import ConfigError

__all__ = ["decode_unit", "build_encoder", "encoder_payload", "EncodeUnits"]


def decode_unit(batch: dict[str, np.ndarray], *, image_size: int, augmentations: tuple[str, ...],
                storage_options: dict | None = None) -> dict[str, np.ndarray]:
    """Ray map_batches fn (batch of one unit row): read + decode + crop every image of the unit."""
    reader = ItemReader(**(storage_options or {}))
    out: dict[str, list] = {"unit": [], "keys": [], "labels": [], "images": [], "n": [], "errors": []}
    try:
        for unit, items_json in zip(batch["unit"], batch["items"]):
            keys, labels, views, errors = [], [], [], []
            for v in json.loads(items_json):
                item = SourceItem.from_list(v)
                try:
                    data = reader.read(item)
                    views.append(preprocess_bytes(data, image_size, augmentations))  # (V, 3, S, S)
                    keys.append(item.key)
                    labels.append(item.label)
                except DecodeError as e:
                    errors.append([item.key, str(e)])
                except OSError as e:
                    errors.append([item.key, f"cannot read file ({type(e).__name__}: {e.strerror or e})"])
                except Exception as e:  # noqa: BLE001 - one bad image must not fail (and retry) the whole unit
                    errors.append([item.key, f"cannot process image ({type(e).__name__}: {e})"])
            images = np.stack(views) if views else np.zeros((0,), np.uint8)  # (N, V, 3, S, S)
            out["unit"].append(int(unit))
            out["keys"].append(json.dumps(keys))
            out["labels"].append(json.dumps(labels))
            out["images"].append(images.tobytes())
            out["n"].append(len(keys))
            out["errors"].append(json.dumps(errors))
    finally:
        reader.close()
    return {"unit": np.asarray(out["unit"], np.int64), "keys": np.asarray(out["keys"], dtype=object),
            "labels": np.asarray(out["labels"], dtype=object), "images": np.asarray(out["images"], dtype=object),
            "n": np.asarray(out["n"], np.int64), "errors": np.asarray(out["errors"], dtype=object)}


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


class EncodeUnits:
    """Ray actor (map_batches callable class): encodes each unit in fixed chunks of ``batch_size``."""

    def __init__(self, payload_ref: list, *, device: str, precision: str, batch_size: int, search: str,
                 torch_threads: int, image_size: int, n_views: int, latent: int, token_dtype: str):
        import ray
        import torch

        from tokenizer.faiss_search import make_search

        torch.set_num_threads(torch_threads)
        payload = ray.get(payload_ref[0])
        self.torch = torch
        self.device = device
        self.model = build_encoder(payload, device=device)
        k = self.model.config.codebook_size
        self.model.set_search(make_search(search, device=device, codebook_size=k, num_threads=torch_threads))
        self.precision, self.batch_size = precision, batch_size
        self.shape = (n_views, 3, image_size, image_size)
        self.latent, self.token_dtype = latent, np.dtype(token_dtype)

    def encode(self, images: np.ndarray) -> np.ndarray:  # (N, V, 3, S, S) uint8 -> (N, V, h, w)
        torch = self.torch
        n = images.shape[0]
        flat = images.reshape(-1, *self.shape[1:])  # (N*V, 3, S, S)
        out = []
        with torch.inference_mode():
            for i in range(0, flat.shape[0], self.batch_size):
                x = torch.from_numpy(flat[i:i + self.batch_size]).to(self.device).float().div_(255.0)
                if self.precision == "bf16":
                    with torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16):
                        z = self.model.encode_latents(x)
                else:
                    z = self.model.encode_latents(x)
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
        return {"unit": batch["unit"], "keys": batch["keys"], "labels": batch["labels"], "n": batch["n"],
                "errors": batch["errors"], "tokens": np.asarray(tokens, dtype=object),
                "encode_s": np.asarray(seconds, np.float64)}
