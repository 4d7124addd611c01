"""Feature extractors for the metrics. The project's own: a small CNN classifier trained on the
project's real images ("proxy" features, never comparable with published InceptionV3 FIDs).
Saved as safetensors + config.json like every checkpoint of the project."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maskgit_core.checkpoint_io import check_state_dict, read_checkpoint_dir, save_checkpoint_dir
from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError

__all__ = ["ClassifierConfig", "ProxyClassifier", "train_feature_classifier", "save_classifier",
           "load_classifier", "as_float_images", "extract"]

log = logging.getLogger(__name__)
KIND = "proxy-feature-classifier"


@dataclass(kw_only=True, frozen=True)
class ClassifierConfig:
    """A small all-conv classifier whose penultimate layer gives the proxy features."""

    num_classes: int
    """Classes of the real data it is trained on."""
    image_size: int = 32
    """Input side; other sizes are resized (bilinear, antialiased) before the network."""
    width: int = 32
    """Channels of the first stage (doubled at each of the 3 stages)."""
    feature_dim: int = 128
    """Size of the feature vector used for FID and precision/recall."""

    def __post_init__(self) -> None:
        for name in ("num_classes", "image_size", "width", "feature_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


class ProxyClassifier(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> (features (B, F), logits (B, C))."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.config = cfg
        w = cfg.width
        layers: list[nn.Module] = []
        c_in = 3
        for c in (w, 2 * w, 4 * w):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(), nn.AvgPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.config.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        h = self.body(images * 2.0 - 1.0).mean((2, 3))  # (B, C)
        feats = F.silu(self.proj(h))  # (B, F)
        return feats, self.head(feats)

    @property
    def name(self) -> str:
        """"proxy:<sha256 of the weights, 12 hex>" - printed next to every metric."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        return f"proxy:{h.hexdigest()[:12]}"


def as_float_images(images) -> torch.Tensor:
    """(N, 3, H, W) float [0, 1] (tensor/array) or (N, H, W, 3) uint8 -> (N, 3, H, W) float32 tensor."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype == torch.uint8:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ConfigError(f"uint8 images must be (N, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float() / 255.0
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"float images must be (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
    return x.float()


def train_feature_classifier(images, labels, *, num_classes: int | None = None, epochs: int = 10,
                             batch_size: int = 128, lr: float = 2e-3, seed: int = 0, image_size: int | None = None,
                             width: int = 32, feature_dim: int = 128, augment: bool = True) -> ProxyClassifier:
    """Train the proxy classifier on real images (N, ...) and labels (N,). AdamW, cosine lr,
    random horizontal flips. Returns the model in eval mode; its accuracy is logged."""
    x = as_float_images(images)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"{x.shape[0]} images but {y.shape[0]} labels")
    nc = int(num_classes or int(y.max()) + 1)
    check_labels(y, nc, what="classifier training labels", fix="pass num_classes covering every label")
    cfg = ClassifierConfig(num_classes=nc, image_size=image_size or x.shape[-1], width=width,
                           feature_dim=feature_dim)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ProxyClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * max(1, (x.shape[0] + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        correct = 0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            if augment:
                flip = torch.rand(xb.shape[0], generator=g) < 0.5
                xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            _, logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == yb).sum())
        log.info("proxy classifier epoch %d: train accuracy %.3f", epoch, correct / x.shape[0])
    return model.eval()


@torch.no_grad()
def extract(model: ProxyClassifier, images, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """images -> (features (N, F), logits (N, C)) as float64 numpy."""
    x = as_float_images(images)
    feats, logits = [], []
    for i in range(0, x.shape[0], batch_size):
        f, lg = model(x[i:i + batch_size])
        feats.append(f.double().numpy())
        logits.append(lg.double().numpy())
    return np.concatenate(feats), np.concatenate(logits)


def save_classifier(model: ProxyClassifier, directory: str | os.PathLike) -> Path:
    return save_checkpoint_dir(directory, kind=KIND, config=dataclasses.asdict(model.config),
                               state_dict=model.state_dict(), extra={"feature_name": model.name})


def load_classifier(path: str | os.PathLike) -> ProxyClassifier:
    meta, state, d = read_checkpoint_dir(path, kind=KIND, subdir="classifier")
    model = ProxyClassifier(ClassifierConfig(**meta["config"]))
    check_state_dict(model, state, source=str(d))
    model.load_state_dict(state)
    return model.eval()
