"""A small-scale VQGAN trainer for new domains and the demo (single-device PyTorch).

Loss: ``l1_weight * |x - x'| + l2_weight * (x - x')^2 + codebook + commitment`` with the
straight-through estimator of ``VQGAN.forward``. Codebook utilisation is kept high by
**dead-code restarts**: every ``restart_every`` steps, each code that no latent chose during
the window is moved onto a randomly picked encoder output of the current batch (its Adam
moments reset). The very first restart happens after step 1, which is a data-dependent
initialisation of the codebook. No EMA codebook: the codebook is a plain parameter trained
by the codebook loss, so the checkpoint is the same format as converted official weights.

Perceptual (LPIPS) and adversarial terms are not used: LPIPS needs pretrained VGG weights
that are not available offline, and a discriminator does not help runs of a few minutes on
CPU. Both are recorded as ``"not used"`` in the metrics.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tokenizer.preprocess import DecodeError, center_crop_arr, decode_rgb

from .config import VQGANConfig, preset as tokenizer_preset
from .model import VQGAN
from maskgit_core.errors import ConfigError

__all__ = ["TrainConfig", "TrainResult", "ImageSet", "load_image_folder", "read_images", "restart_dead_codes",
           "psnr", "codebook_stats", "codebook_usage", "code_histogram", "evaluate", "train_tokenizer",
           "TRAIN_PRESETS", "train_preset", "IMAGE_EXTENSIONS", "holdout_count"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".webp", ".bmp")


@dataclass(kw_only=True, frozen=True)
class TrainConfig:
    """How to train a tokenizer (the architecture is the VQGANConfig)."""

    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 32
    """Images per step."""
    lr: float = 2e-3
    """Peak Adam learning rate (linear warm-up, then cosine decay to 10 %)."""
    warmup_steps: int = 20
    """Steps of linear learning-rate warm-up."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss."""
    l2_weight: float = 1.0
    """Weight of the L2 (mean squared error) reconstruction loss."""
    codebook_weight: float = 1.0
    """Weight of the codebook loss |sg(z) - e|^2 (the commitment weight is in VQGANConfig)."""
    restart_every: int = 20
    """Steps per dead-code window: codes unused during a window are restarted (0 = never)."""
    flip: bool = True
    """Random horizontal flips of the training images."""
    max_images: int = 20000
    """Read at most this many training images (a seeded sample of the folder)."""
    val_images: int = 256
    """Held-out images for PSNR and codebook usage."""
    log_every: int = 10
    """Record the losses every this many steps."""
    max_seconds: float | None = None
    """Stop early (after the current step) once training has taken this long."""
    seed: int = 0
    """Seed of initialisation, sampling and restarts."""
    threads: int | None = None
    """Torch intra-op threads while training (None: leave torch's setting). 1 is the robust choice
    for these small models when other jobs share the cores: on an oversubscribed 2-core machine,
    2 threads took 4.6x the wall time of 1 thread (docs/BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "max_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "restart_every", "val_images"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"TrainConfig.lr must be positive, got {self.lr}")
        if min(self.l1_weight, self.l2_weight, self.codebook_weight) < 0 or self.l1_weight + self.l2_weight == 0:
            raise ConfigError("loss weights must be >= 0 and l1_weight + l2_weight > 0, got "
                              f"l1={self.l1_weight}, l2={self.l2_weight}, codebook={self.codebook_weight}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"TrainConfig.threads must be >= 1 or None, got {self.threads}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"TrainConfig.max_seconds must be positive or None, got {self.max_seconds}")


# Training recipes per tokenizer preset (the architecture preset of the same name).
TRAIN_PRESETS: dict[str, TrainConfig] = {
    # 1200 steps of 16 beat 600 of 32 in about the same CPU time (24.4 vs 22.7 dB, BENCHMARKS.md).
    "demo": TrainConfig(steps=1200, batch_size=16),
    "debug": TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, restart_every=10,
                         val_images=64, log_every=5),
}


def train_preset(name: str) -> TrainConfig:
    """The training recipe for a tokenizer preset; unknown names list the valid ones."""
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise ConfigError(f"no training recipe for preset {name!r}; choose one of {sorted(TRAIN_PRESETS)}") from None


# ----------------------------------------------------------------------------- data

@dataclass
class ImageSet:
    """Decoded, resized images held in memory."""

    train: torch.Tensor  # (N, 3, S, S) uint8
    val: torch.Tensor  # (M, 3, S, S) uint8
    skipped: list[str] = field(default_factory=list)
    """Files that could not be decoded (path: reason)."""


def _list_images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_images(paths: list[Path], size: int, skipped: list[str]) -> torch.Tensor:
    """Decode and ADM-center-crop each file exactly as the tokenize job does: (N, 3, S, S) uint8.
    Unreadable files are logged and appended to ``skipped`` as "path: reason"."""
    out = []
    for p in paths:
        try:
            out.append(center_crop_arr(decode_rgb(p.read_bytes()), size).transpose(2, 0, 1))
        except (OSError, DecodeError) as e:
            skipped.append(f"{p}: {e}")
            log.warning("skipping unreadable image %s (%s)", p, e)
    if not out:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(out))


def holdout_count(n: int, val_images: int) -> int:
    """How many of ``n`` images to hold out when the folder has no val/ split: ``val_images``, but
    at most 10 % of a small folder (at least 1) and never all of them (>= 1 image is left to train on)."""
    if val_images <= 0 or n <= 1:
        return 0
    return min(val_images, max(1, n // 10), n - 1)


def load_image_folder(root: str | os.PathLike, *, image_size: int, max_images: int = 20000,
                      val_images: int = 256, seed: int = 0) -> ImageSet:
    """Read a folder of images into memory, center-cropped and resized to ``image_size`` with
    the tokenize job's preprocessing (``tokenizer.preprocess``), so tokens match training.

    With the ImageNet layout (``root/train/<class>/*`` and optionally ``root/val/...``) the
    held-out images come from ``val/``; otherwise every image under ``root`` is used and a
    seeded ``holdout_count(n, val_images)`` of them are held out (at most 10 %, at least one).
    Unreadable files are skipped and listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory; pass a folder of images (e.g. the demo's data/ "
                          "made by `maskgit-pipeline make-demo-data`)")
    rng = np.random.default_rng(seed)
    if (root / "train").is_dir():
        train_paths = _list_images(root / "train")
        val_paths = _list_images(root / "val") if (root / "val").is_dir() else []
        if not val_paths and val_images:
            n_val = holdout_count(len(train_paths), val_images)
            perm = rng.permutation(len(train_paths))
            val_paths = [train_paths[i] for i in perm[:n_val]]
            train_paths = [train_paths[i] for i in sorted(perm[n_val:])]
    else:
        paths = _list_images(root)
        n_val = holdout_count(len(paths), val_images)
        perm = rng.permutation(len(paths))
        val_paths = [paths[i] for i in sorted(perm[:n_val])]
        train_paths = [paths[i] for i in sorted(perm[n_val:])]
    if not train_paths:
        raise ConfigError(f"{root}: no images found (extensions {IMAGE_EXTENSIONS}); expected "
                          "root/train/<class>/*.JPEG or a folder of image files")
    if len(train_paths) > max_images:
        keep = sorted(rng.choice(len(train_paths), size=max_images, replace=False))
        train_paths = [train_paths[i] for i in keep]
    if len(val_paths) > val_images:
        keep = sorted(rng.choice(len(val_paths), size=val_images, replace=False))
        val_paths = [val_paths[i] for i in keep]
    skipped: list[str] = []
    train = read_images(train_paths, image_size, skipped)
    val = read_images(val_paths, image_size, skipped)
    if len(train) == 0:
        raise ConfigError(f"{root}: none of the {len(train_paths)} training images could be decoded")
    return ImageSet(train=train, val=val, skipped=skipped)


# ----------------------------------------------------------------------------- math

def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1]: (B, 3, H, W), (B, 3, H, W) -> (B,)."""
    mse = ((x.clamp(0, 1) - y.clamp(0, 1)) ** 2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def code_histogram(ids: torch.Tensor | np.ndarray, codebook_size: int) -> np.ndarray:
    """Token ids of any shape -> how often each code occurs, (K,) int64."""
    flat = ids.reshape(-1).cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids).reshape(-1)
    return np.bincount(flat.astype(np.int64), minlength=codebook_size)[:codebook_size]


def codebook_stats(ids: torch.Tensor | np.ndarray, codebook_size: int) -> dict[str, Any]:
    """Usage of a codebook by token ids of any shape; see ``codebook_usage`` for the keys."""
    return codebook_usage(code_histogram(ids, codebook_size))


def codebook_usage(counts: np.ndarray) -> dict[str, Any]:
    """Usage of a codebook from its code histogram ``counts`` (K,) (e.g. summed over shards).

    Scalars only (JSON-ready): ``tokens`` (total), ``usage`` (fraction of codes used),
    ``codes_used``, ``dead_codes``, ``entropy_nats`` (H of the histogram) and ``perplexity`` =
    exp(H): K for uniform use of K codes, 1 for one code everywhere, 0 for no tokens.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    p = counts[counts > 0] / max(total, 1)
    entropy = float(-(p * np.log(p)).sum()) if total else 0.0
    used = int((counts > 0).sum())
    return {"tokens": total, "usage": used / len(counts) if len(counts) else 0.0, "codes_used": used,
            "dead_codes": int(len(counts) - used), "entropy_nats": entropy,
            "perplexity": float(np.exp(entropy)) if total else 0.0}


def restart_dead_codes(codebook: torch.Tensor, hits: torch.Tensor, z: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Move every dead code onto a random encoder output; return the restarted code indices.

    codebook (K, D) is modified in place; hits (K,) counts how often each code was chosen
    in the window (0 = dead); z (N, D) are encoder outputs of the current batch. Dead codes
    take distinct rows of z where N allows.
    """
    dead = (hits == 0).nonzero().flatten()  # (n_dead,)
    if dead.numel() == 0 or z.shape[0] == 0:
        return dead[:0]
    n = dead.numel()
    if z.shape[0] >= n:
        rows = torch.randperm(z.shape[0], generator=generator)[:n]
    else:
        rows = torch.randint(0, z.shape[0], (n,), generator=generator)
    with torch.no_grad():
        codebook[dead] = z[rows].to(codebook.dtype)
    return dead


# ----------------------------------------------------------------------------- training

@dataclass
class TrainResult:
    """What ``train_tokenizer`` returns."""

    model: VQGAN
    metrics: dict
    """init_psnr, psnr, usage, perplexity, steps, seconds, ... (also saved in config.json)."""
    history: list[dict]
    """One record per ``log_every`` steps: step, loss, recon, l1, l2, codebook, commitment, lr."""
    out: Path | None = None


def _lr(step: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _to_float(x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) uint8 -> float [0, 1]
    return x.float().div_(255.0)


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, *, batch_size: int = 128) -> dict[str, float]:
    """Held-out reconstruction PSNR (dB, mean over images) and codebook usage of uint8 images."""
    was_training = model.training
    model.eval()
    psnrs, ids = [], []
    for chunk in images.split(batch_size):
        x = _to_float(chunk)
        i = model.encode(x)  # (B, h, w)
        psnrs.append(psnr(model.decode_ids(i), x))
        ids.append(i)
    model.train(was_training)
    if not psnrs:
        return {"psnr": float("nan"), "usage": float("nan"), "perplexity": float("nan"), "codes_used": 0}
    stats = codebook_stats(torch.cat(ids), model.config.codebook_size)
    return {"psnr": float(torch.cat(psnrs).mean()), "usage": stats["usage"], "perplexity": stats["perplexity"],
            "codes_used": stats["codes_used"]}


def _reset_adam_rows(opt: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor) -> None:
    state = opt.state.get(param)
    if state:
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0.0


def train_tokenizer(data: str | os.PathLike | ImageSet, *, model_config: VQGANConfig | str = "demo",
                    config: TrainConfig | None = None, out: str | os.PathLike | None = None,
                    on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a VQGAN on a folder of images (or an already loaded ImageSet).

    ``model_config`` is a VQGANConfig or a preset name; ``config`` defaults to that preset's
    recipe (``TRAIN_PRESETS``). Writes ``tokenizer.save(...)`` output to ``out`` when given,
    with the metrics and loss history under ``extra["training"]``. ``on_log`` gets each
    history record as it is made (for progress display).
    """
    mcfg = tokenizer_preset(model_config) if isinstance(model_config, str) else model_config
    cfg = config or (train_preset(model_config) if isinstance(model_config, str) else TrainConfig())
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(data, mcfg, cfg, out, on_log)
    finally:
        torch.set_num_threads(threads_before)


def _final_metrics(model: VQGAN, val: np.ndarray, images: ImageSet, init: dict, mcfg: VQGANConfig,
                   cfg: TrainConfig, *, steps_done: int, train_s: float, load_s: float,
                   restarted_total: int) -> dict:
    final = evaluate(model, val)
    log.info("tokenizer training done: %d steps in %.1f s, held-out PSNR %.2f dB (init %.2f), usage %.2f, "
             "perplexity %.1f", steps_done, train_s, final["psnr"], init["psnr"], final["usage"],
             final["perplexity"])
    return {
        "steps": steps_done, "seconds": round(train_s, 2), "load_seconds": round(load_s, 2),
        "images_per_second": round(steps_done * cfg.batch_size / max(train_s, 1e-9), 1),
        "train_images": len(images.train), "val_images": len(val), "skipped_files": len(images.skipped),
        "init_psnr": init["psnr"], "psnr": final["psnr"], "usage": final["usage"],
        "perplexity": final["perplexity"], "codes_used": final["codes_used"],
        "codebook_size": mcfg.codebook_size, "dead_codes_restarted": restarted_total,
        "torch_threads": torch.get_num_threads(),
        "perceptual_loss": "not used (no pretrained LPIPS/VGG weights offline)",
        "adversarial_loss": "not used (short CPU runs)",
    }


def _load_train_images(data: str | os.PathLike | ImageSet, mcfg: VQGANConfig, cfg: TrainConfig
                       ) -> tuple[ImageSet, np.ndarray, float]:
    """(images, held-out images, load seconds); a folder is read with the config's hold-out rule."""
    t_load = time.perf_counter()
    images = data if isinstance(data, ImageSet) else load_image_folder(
        data, image_size=mcfg.image_size, max_images=cfg.max_images, val_images=cfg.val_images, seed=cfg.seed)
    if images.train.shape[-1] != mcfg.image_size:
        raise ConfigError(f"images are {images.train.shape[-1]} px but the tokenizer expects "
                          f"{mcfg.image_size} px; reload them with image_size={mcfg.image_size}")
    load_s = time.perf_counter() - t_load
    val = images.val if len(images.val) else images.train[: cfg.val_images]
    log.info("tokenizer training: %d train / %d held-out images (%d skipped), loaded in %.1f s",
             len(images.train), len(val), len(images.skipped), load_s)
    return images, val, load_s


def _sample_batch(train: np.ndarray, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """A random batch (B, 3, S, S) float, flipped at random when ``cfg.flip``, channels-last."""
    idx = torch.randint(0, len(train), (cfg.batch_size,), generator=gen)
    x = _to_float(train[idx])  # (B, 3, S, S)
    if cfg.flip:
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x.contiguous(memory_format=torch.channels_last)


def _loss(model: VQGAN, x: torch.Tensor, mcfg: VQGANConfig, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The VQ-VAE objective with a straight-through estimator: L1 + L2 reconstruction, codebook and
    commitment terms; also the latents, ids and reconstruction the caller needs."""
    z = model.encode_latents(x)  # (B, D, h, w)
    ids = model.quantizer.ids(z)  # (B, h, w)
    e = model.quantizer.embed(ids)
    codebook_loss = F.mse_loss(e, z.detach())
    commitment_loss = mcfg.commitment_cost * F.mse_loss(z, e.detach())
    recon = model.decoder(z + (e - z).detach())  # straight-through
    l1 = (recon - x).abs().mean()
    l2 = F.mse_loss(recon, x)
    loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.codebook_weight * codebook_loss + commitment_loss
    return {"loss": loss, "l1": l1, "l2": l2, "codebook": codebook_loss, "commitment": commitment_loss,
            "z": z, "ids": ids, "recon": recon}


def _train(data: str | os.PathLike | ImageSet, mcfg: VQGANConfig, cfg: TrainConfig,
           out: str | os.PathLike | None, on_log: Callable[[dict], None] | None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    images, val, load_s = _load_train_images(data, mcfg, cfg)

    model = VQGAN(mcfg).to(memory_format=torch.channels_last)  # ~10 % faster convs on CPU
    init = evaluate(model, val)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    codebook = model.quantizer.codebook
    hits = torch.zeros(mcfg.codebook_size, dtype=torch.long)
    next_restart = 1  # the first window is one step: a data-dependent codebook initialisation
    restarted_total, restarts = 0, []
    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    step = 0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        x = _sample_batch(images.train, cfg, gen)
        out_ = _loss(model, x, mcfg, cfg)
        opt.zero_grad(set_to_none=True)
        out_["loss"].backward()
        opt.step()

        hits += torch.bincount(out_["ids"].flatten(), minlength=mcfg.codebook_size)
        done = step + 1
        if cfg.restart_every and done == next_restart:
            flat = out_["z"].detach().permute(0, 2, 3, 1).reshape(-1, mcfg.embedding_dim)  # (B*h*w, D)
            dead = restart_dead_codes(codebook.data, hits, flat, gen)
            _reset_adam_rows(opt, codebook, dead)
            restarted_total += int(dead.numel())
            restarts.append({"step": done, "restarted": int(dead.numel())})
            hits.zero_()
            next_restart = done + cfg.restart_every

        if done % cfg.log_every == 0 or done == cfg.steps:
            rec = {"step": done, **{k: out_[k].item() for k in ("loss", "l1", "l2", "codebook", "commitment")},
                   "train_psnr": float(psnr(out_["recon"].detach(), x).mean()), "lr": opt.param_groups[0]["lr"],
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            log.info("step %d/%d loss %.4f psnr %.2f dB", done, cfg.steps, rec["loss"], rec["train_psnr"])
            if on_log is not None:
                on_log(rec)
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            log.info("tokenizer training: stopping after %d steps (max_seconds=%s)", done, cfg.max_seconds)
            break
    train_s = time.perf_counter() - t0
    metrics = _final_metrics(model, val, images, init, mcfg, cfg, steps_done=step + 1, train_s=train_s,
                             load_s=load_s, restarted_total=restarted_total)
    model = model.to(memory_format=torch.contiguous_format).eval()
    result = TrainResult(model=model, metrics=metrics, history=history)
    if out is not None:
        from . import save

        result.out = save(model, out, extra={"training": {"metrics": metrics, "config": asdict(cfg),
                                                          "history": history, "restarts": restarts}})
    return result
