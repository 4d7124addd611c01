"""Training objectives: MVTM (masked visual token modeling) and the autoregressive baseline.

MVTM (paper §3.2, spec §3): per sample draw r ~ U[0, 1), mask ``ceil(gamma(r) * N)`` of the
N image tokens chosen uniformly at random (gamma = cosine by default), predict them from the
rest; cross-entropy on masked positions only, label smoothing 0.1 over the K image codes,
normalised per sample (sum over its masked tokens / its mask count), then averaged over the batch.

AR (``causal=True`` models): [class, t_1..t_N] in raster order; position i predicts token i+1,
cross-entropy on all N image tokens (same smoothing and per-sample normalisation).

Classifier-free guidance: with ``class_dropout > 0`` each sample's class token is replaced, with
that probability, by the class token of ``null_label`` (default: the last class,
``num_classes - 1``, which the dataset must then not use). The trainer writes ``null_label`` into
the exported checkpoint's config.json, where ``transformer.sampling.resolve_null_label`` finds it.

Logits are restricted to the K image codes before the loss (the model can never be asked to
predict a class or mask token, and sampling reads ``logits[..., :K]`` too).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TransformerConfig
from maskgit_core.errors import ConfigError

__all__ = ["ObjectiveConfig", "OBJECTIVES", "TRAIN_GAMMAS", "train_gamma", "num_masked", "random_mask",
           "apply_class_dropout", "mvtm_batch", "ar_batch", "masked_token_loss", "ObjectiveOutput",
           "compute_objective"]

OBJECTIVES = ("mvtm", "ar")

# gamma(r) for training, in torch (vectorised per sample); r in [0, 1), gamma in (0, 1].
TRAIN_GAMMAS = {
    "cosine": lambda r: torch.cos(r * (math.pi / 2)),
    "linear": lambda r: 1.0 - r,
    "square": lambda r: 1.0 - r ** 2,
    "cubic": lambda r: 1.0 - r ** 3,
    "sqrt": lambda r: 1.0 - r.sqrt(),
}


@dataclass(kw_only=True, frozen=True)
class ObjectiveConfig:
    """What the trainer optimises."""

    objective: str = "mvtm"
    """'mvtm' (bidirectional, masked tokens) or 'ar' (causal next-token; needs a causal=True model)."""
    schedule: str = "cosine"
    """Mask-ratio function gamma of r ~ U[0,1) for MVTM; one of TRAIN_GAMMAS."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy over the K image codes."""
    class_dropout: float = 0.0
    """Probability of replacing the class by ``null_label`` (classifier-free guidance); 0 = off."""
    null_label: int | None = None
    """Class used as "no class" when class_dropout > 0; None = num_classes - 1."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; choose one of {list(OBJECTIVES)}")
        if self.schedule not in TRAIN_GAMMAS:
            raise ConfigError(f"unknown training mask schedule {self.schedule!r}; choose one of {sorted(TRAIN_GAMMAS)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ConfigError(f"class_dropout must lie in [0, 1), got {self.class_dropout}")

    def resolved_null_label(self, model_cfg: TransformerConfig) -> int | None:
        """The null class (None without class dropout), checked against the model."""
        if self.class_dropout == 0.0:
            return None
        label = model_cfg.num_classes - 1 if self.null_label is None else self.null_label
        if not 0 <= label < model_cfg.num_classes:
            raise ConfigError(f"null_label {label} outside the model's classes [0, {model_cfg.num_classes}); "
                             f"use num_classes-1 ({model_cfg.num_classes - 1}) and keep that class out of the data")
        return label

    def check_model(self, model_cfg: TransformerConfig) -> None:
        """Refuse a model whose attention does not match the objective."""
        if self.objective == "ar" and not model_cfg.causal:
            raise ConfigError("objective 'ar' needs a causal model: set model override causal=true")
        if self.objective == "mvtm" and model_cfg.causal:
            raise ConfigError("objective 'mvtm' needs a bidirectional model: set model override causal=false "
                              "or objective=ar")
        self.resolved_null_label(model_cfg)


def train_gamma(r: torch.Tensor, schedule: str = "cosine") -> torch.Tensor:
    """gamma(r) per sample, r (B,) in [0, 1) -> (B,) in (0, 1]."""
    if schedule not in TRAIN_GAMMAS:
        raise ConfigError(f"unknown training mask schedule {schedule!r}; choose one of {sorted(TRAIN_GAMMAS)}")
    return TRAIN_GAMMAS[schedule](r)


def num_masked(r: torch.Tensor, n: int, schedule: str = "cosine") -> torch.Tensor:
    """ceil(gamma(r) * N) clamped to [1, N]: how many of N tokens each sample masks. (B,) int64."""
    g = train_gamma(r.to(torch.float64), schedule)
    return torch.ceil(g * n).clamp_(1, n).to(torch.int64)


def random_mask(counts: torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B,) counts -> (B, N) bool with exactly counts[b] True per row, positions uniform.

    Rank of uniform noise: the ``counts[b]`` positions with the smallest noise are masked,
    which is a uniform choice of a subset of that size.
    """
    noise = torch.rand((counts.shape[0], n), generator=generator, device=counts.device)  # (B, N)
    ranks = noise.argsort(dim=1).argsort(dim=1)  # (B, N) rank of each position
    return ranks < counts[:, None]


def apply_class_dropout(labels: torch.Tensor, p: float, null_label: int | None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_label`` with probability p. (B,) -> (B,)."""
    if p == 0.0 or null_label is None:
        return labels
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def mvtm_batch(images: torch.Tensor, labels: torch.Tensor, cfg: TransformerConfig, *,
               schedule: str = "cosine", generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """images (B, N) int64 codes, labels (B,) -> inputs (B, 1+N), targets (B, N), mask (B, N) bool.

    inputs = [K + label, tokens with masked positions set to the mask token].
    """
    b, n = images.shape
    r = torch.rand((b,), generator=generator, device=images.device)  # (B,) in [0, 1)
    mask = random_mask(num_masked(r, n, schedule), n, generator)  # (B, N)
    masked = torch.where(mask, torch.full_like(images, cfg.mask_token_id), images)
    inputs = torch.cat([(labels + cfg.codebook_size)[:, None], masked], dim=1)  # (B, 1+N)
    return inputs, images, mask


def ar_batch(images: torch.Tensor, labels: torch.Tensor, cfg: TransformerConfig
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AR: inputs [class, t_1..t_{N-1}] (B, N), targets t_1..t_N (B, N), all positions scored."""
    inputs = torch.cat([(labels + cfg.codebook_size)[:, None], images[:, :-1]], dim=1)  # (B, N)
    return inputs, images, torch.ones_like(images, dtype=torch.bool)


def masked_token_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, *,
                      label_smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, N, K), targets (B, N), mask (B, N) -> (loss, correct (B,) float counts).

    Per-sample mean of the smoothed CE over that sample's masked positions, then the batch mean.
    Unmasked positions do not enter the loss (nor its gradient).
    """
    b, n, k = logits.shape
    ce = F.cross_entropy(logits.reshape(b * n, k).float(), targets.reshape(b * n),
                         label_smoothing=label_smoothing, reduction="none").view(b, n)  # (B, N)
    m = mask.to(ce.dtype)
    per_sample = (ce * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B,)
    correct = ((logits.argmax(-1) == targets) & mask).sum(1).to(torch.float32)  # (B,)
    return per_sample.mean(), correct


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    """Scalar training loss."""
    correct: torch.Tensor
    """Correct argmax predictions on scored positions (scalar, summed over the batch)."""
    scored: torch.Tensor
    """Number of scored (masked / predicted) positions (scalar)."""


def compute_objective(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      cfg: ObjectiveConfig, *, generator: torch.Generator | None = None) -> ObjectiveOutput:
    """One forward pass of ``model`` on a batch: images (B, N) int64 codes, labels (B,) int64."""
    mcfg: TransformerConfig = model.config
    labels = apply_class_dropout(labels, cfg.class_dropout, cfg.resolved_null_label(mcfg), generator)
    k = mcfg.codebook_size
    if cfg.objective == "mvtm":
        inputs, targets, mask = mvtm_batch(images, labels, mcfg, schedule=cfg.schedule, generator=generator)
        logits = model(inputs)[:, 1:, :k]  # (B, N, K): drop the class position
    else:
        inputs, targets, mask = ar_batch(images, labels, mcfg)
        logits = model(inputs)[:, :, :k]  # (B, N, K): position i predicts token i+1
    loss, correct = masked_token_loss(logits, targets, mask, label_smoothing=cfg.label_smoothing)
    return ObjectiveOutput(loss=loss, correct=correct.sum(), scored=mask.sum().to(torch.float32))
