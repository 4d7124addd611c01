"""Iterative parallel decoding, exactly as the official ``libml/parallel_decode.py`` (spec §4),
plus the project's extensions.

``decode`` is the official algorithm, checked token for token against the official code
(the two random draws are injectable, ``DecodeNoise``). ``parallel_decode`` is the same loop
with options beyond the official ones: classifier-free guidance with a guidance schedule,
the Halton ordering sampler (valeoai/Halton-MaskGIT), top-k (off by default) and a per-step
trace for progression figures. With the options off it is token-for-token ``decode``
(tests/test_sampling.py). ``sample_tokens`` is the class-label -> token-grid entry point.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from .schedules import canonical_schedule, mask_len_table
from maskgit_core.checks import check_labels
from maskgit_core.errors import ConfigError

__all__ = ["DecodeNoise", "TorchGumbelNoise", "ArrayNoise", "SeededNoise", "decode", "mask_by_random_topk",
           "gumbel", "parallel_decode", "DecodeResult", "sample_tokens", "halton_order", "guidance_weight",
           "top_k_filter", "GUIDANCE_SCHEDULES", "ORDERS", "resolve_null_label"]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # (B, L) int64 -> (B, L, >=K) float


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str = "cpu"
           ) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ U(0, 1) kept away from 0 and 1."""
    u = torch.rand(shape, generator=generator, device=device, dtype=torch.float32)
    u = u.clamp_(torch.finfo(torch.float32).tiny, 1.0 - torch.finfo(torch.float32).eps)
    return -torch.log(-torch.log(u))


class DecodeNoise(Protocol):
    """The decoder's two random draws at step ``step``."""

    def token_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, L, K) Gumbel noise: sampled = argmax(logits[..., :K] + noise) (categorical, temperature 1)."""

    def choice_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, L) Gumbel noise for the annealed re-masking choice."""


@dataclass
class TorchGumbelNoise:
    """Noise from a torch Generator (reproducible given the seed)."""

    generator: torch.Generator | None = None
    device: torch.device | str = "cpu"

    def token_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return gumbel(shape, self.generator, self.device)

    def choice_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return gumbel(shape, self.generator, self.device)


@dataclass
class ArrayNoise:
    """Pre-drawn noise (e.g. the official reference's g1 (T, B, L, K) and g2 (T, B, L))."""

    g1: np.ndarray
    g2: np.ndarray

    def token_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.g1[step], dtype=np.float32)).reshape(shape)

    def choice_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.g2[step], dtype=np.float32)).reshape(shape)


def mask_by_random_topk(mask_len: torch.Tensor, probs: torch.Tensor, temperature: float,
                        noise: torch.Tensor) -> torch.Tensor:
    """Official re-masking: confidence = log p + temperature * gumbel; mask positions whose
    confidence is below the ``mask_len``-th smallest. mask_len (B, 1), probs (B, L) -> (B, L) bool."""
    confidence = torch.log(probs) + temperature * noise  # (B, L)
    sorted_conf, _ = torch.sort(confidence, dim=-1)
    cut_off = torch.gather(sorted_conf, -1, mask_len.long())  # (B, 1)
    return confidence < cut_off


@torch.no_grad()
def decode(logits_fn: LogitsFn, inputs: torch.Tensor, *, mask_token_id: int, codebook_size: int,
           num_iter: int = 8, start_iter: int = 0, choice_temperature: float = 4.5,
           schedule: str = "cosine", noise: DecodeNoise | None = None) -> torch.Tensor:
    """Decode masked sequences in ``num_iter`` parallel steps.

    inputs (B, L) int64 with ``mask_token_id`` at unknown positions (class token first).
    Returns final_seqs (B, T, L): each step's sampled tokens; steps before ``start_iter``
    hold the input. The generated sequence is ``final_seqs[:, -1]``.
    """
    return parallel_decode(lambda cur, step: logits_fn(cur), inputs, mask_token_id=mask_token_id,
                           codebook_size=codebook_size, num_iter=num_iter, start_iter=start_iter,
                           choice_temperature=choice_temperature, schedule=schedule, noise=noise).sampled


# --------------------------------------------------------------------------------------------
# Beyond the official decoder: seeded per-sample noise, CFG, Halton order, top-k, step traces.
# --------------------------------------------------------------------------------------------

GUIDANCE_SCHEDULES = {
    "constant": "w_t = w",
    "linear": "w_t = w * (t+1)/T (weak guidance early, full at the last step)",
    "cosine": "w_t = w * (1 - cos(pi/2 (t+1)/T))",
}
ORDERS = {
    "confidence": "official: re-mask the lowest log p + annealed Gumbel (choice temperature)",
    "halton": "Halton-MaskGIT: reveal positions in a fixed 2-D Halton (bases 2, 3) order; no confidence",
}


@dataclass
class SeededNoise:
    """One torch Generator per sample, seeded ``seeds[i]``: sample i's draws do not depend on
    which other samples share its batch (so a 50k run split into any shards gives the same images)."""

    seeds: list[int]
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self._gens = []
        for s in self.seeds:
            g = torch.Generator(device="cpu")
            g.manual_seed(int(s))
            self._gens.append(g)

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        if shape[0] != len(self._gens):
            raise ConfigError(f"noise for a batch of {shape[0]} asked from {len(self._gens)} seeds")
        per = [gumbel(tuple(shape[1:]), g) for g in self._gens]
        return torch.stack(per).to(self.device)

    def token_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._draw(shape)

    def choice_gumbel(self, step: int, shape: tuple[int, ...]) -> torch.Tensor:
        return self._draw(shape)


def guidance_weight(scale: float, schedule: str, step: int, num_iter: int) -> float:
    """Classifier-free guidance weight at ``step`` (0-based): logits = c + w_t (c - u)."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise ConfigError(f"unknown guidance schedule {schedule!r}; choose one of {sorted(GUIDANCE_SCHEDULES)}")
    r = (step + 1) / num_iter
    if schedule == "constant":
        return float(scale)
    if schedule == "linear":
        return float(scale) * r
    return float(scale) * (1.0 - math.cos(math.pi / 2.0 * r))


def _radical_inverse(i: int, base: int) -> float:
    f, out = 1.0, 0.0
    while i > 0:
        f /= base
        out += f * (i % base)
        i //= base
    return out


def halton_order(height: int, width: int) -> np.ndarray:
    """Raster indices of an ``height x width`` grid in 2-D Halton order (bases 2 and 3): point i
    maps to cell (floor(h * x_i), floor(w * y_i)); repeats are skipped until every cell is seen.
    Returns (height*width,) int64, a permutation."""
    seen = np.zeros(height * width, dtype=bool)
    order: list[int] = []
    i = 1
    while len(order) < height * width:
        r = min(int(_radical_inverse(i, 2) * height), height - 1)
        c = min(int(_radical_inverse(i, 3) * width), width - 1)
        idx = r * width + c
        if not seen[idx]:
            seen[idx] = True
            order.append(idx)
        i += 1
        if i > 10_000 * height * width:  # pragma: no cover - the sequence covers any grid long before this
            raise RuntimeError("Halton sequence failed to cover the grid")
    return np.asarray(order, dtype=np.int64)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits per position (others -inf); ``None`` or 0 keeps all. (..., K)."""
    if not k or k >= logits.shape[-1]:
        return logits
    if k < 0:
        raise ConfigError(f"top_k must be positive or None, got {k}")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


@dataclass
class DecodeResult:
    """What ``parallel_decode`` returns. B batch, T steps, L sequence length."""

    tokens: torch.Tensor
    """(B, L) the generated sequence (the last step's sampled tokens, as the official decoder)."""
    sampled: torch.Tensor
    """(B, T, L) each step's sampled tokens (the official ``final_seqs``)."""
    masked: torch.Tensor | None = None
    """(B, T, L) bool, positions still masked *after* each step (only with ``record=True``)."""


StepLogitsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (cur (B, L), step) -> (B, L, >=K)


@torch.no_grad()
def parallel_decode(logits_fn: StepLogitsFn, inputs: torch.Tensor, *, mask_token_id: int, codebook_size: int,
                    num_iter: int = 8, start_iter: int = 0, choice_temperature: float = 4.5,
                    schedule: str = "cosine", noise: DecodeNoise | None = None, top_k: int | None = None,
                    order: str = "confidence", grid: tuple[int, int] | None = None,
                    record: bool = False) -> DecodeResult:
    """The official loop (``decode``) with the project's options.

    logits_fn(cur (B, L), step) -> (B, L, >=K). inputs (B, L) with ``mask_token_id`` at unknown
    positions, class token first. ``order="halton"`` needs ``grid`` = (h, w) with h*w = L-1.
    With top_k None and order "confidence" this is token-for-token ``decode``.
    """
    schedule = canonical_schedule(schedule)
    if order not in ORDERS:
        raise ConfigError(f"unknown decoding order {order!r}; choose one of {sorted(ORDERS)}")
    if not 0 <= start_iter < num_iter:
        raise ConfigError(f"start_iter must lie in [0, num_iter={num_iter}), got {start_iter}")
    noise = noise or TorchGumbelNoise(device=inputs.device)
    cur = inputs.long().clone()  # (B, L)
    b, n = cur.shape
    rank = None
    if order == "halton":
        if grid is None or grid[0] * grid[1] != n - 1:
            raise ConfigError(f"order='halton' needs grid=(h, w) with h*w = {n - 1} image tokens, got {grid}")
        rank = torch.zeros(n, dtype=torch.float32)
        rank[1 + torch.from_numpy(halton_order(*grid))] = torch.arange(n - 1, dtype=torch.float32)
        rank = rank.to(cur.device)[None].expand(b, n)  # (B, L): position's place in the Halton order
    n0 = (cur == mask_token_id).sum(-1).cpu().numpy()  # (B,) unknown at the start: the one host sync
    raw_len = torch.from_numpy(mask_len_table(n0, num_iter, schedule)).to(cur.device)  # (B, T) floor(N0 gamma)
    final = cur[:, None, :].repeat(1, num_iter, 1)  # (B, T, L)
    masked = (cur == mask_token_id)[:, None, :].repeat(1, num_iter, 1) if record else None  # (B, T, L)
    for step in range(start_iter, num_iter):
        logits = logits_fn(cur, step)[..., :codebook_size].float()  # (B, L, K)
        logits = top_k_filter(logits, top_k)
        sampled = torch.argmax(logits + noise.token_gumbel(step, tuple(logits.shape)).to(logits.device), dim=-1)
        unknown = cur == mask_token_id  # (B, L)
        sampled = torch.where(unknown, sampled, cur)
        final[:, step] = sampled
        ratio = (step + 1) / num_iter
        remaining = unknown.sum(-1, keepdim=True)  # (B, 1)
        m_len = torch.clamp(torch.minimum(remaining - 1, raw_len[:, step:step + 1]), min=1)  # official clamp
        if rank is None:
            probs = torch.softmax(logits, dim=-1)
            selected = torch.gather(probs, -1, sampled.clamp(max=codebook_size - 1)[..., None])[..., 0]  # (B, L)
            selected = torch.where(unknown, selected, torch.full_like(selected, float("inf")))
            temp = choice_temperature * (1.0 - ratio)
            masking = mask_by_random_topk(m_len, selected, temp, noise.choice_gumbel(step, (b, n)).to(cur.device))
        else:
            # Keep masked the m_len unknown positions that come last in the Halton order.
            score = torch.where(unknown, -rank, torch.full_like(rank, float("inf")))  # (B, L)
            cut_off = torch.gather(torch.sort(score, dim=-1).values, -1, m_len.long())  # (B, 1)
            masking = score < cut_off
        if step == num_iter - 1:
            masking = torch.zeros_like(masking)  # the last step's output is the sample (official)
        cur = torch.where(masking, torch.full_like(sampled, mask_token_id), sampled)
        if masked is not None:
            masked[:, step] = masking
    return DecodeResult(tokens=final[:, -1], sampled=final, masked=masked)


def resolve_null_label(model: torch.nn.Module, null_label: int | None) -> int:
    """The class label used as "no class" for CFG: the argument, else the checkpoint's
    ``null_label`` (written by the trainer when it trains with class dropout)."""
    if null_label is None:
        meta = getattr(model, "checkpoint_meta", None) or {}
        null_label = meta.get("null_label")
    if null_label is None:
        raise ConfigError("classifier-free guidance needs the model's null class: pass null_label=<label the "
                          "trainer used for class dropout, conventionally num_classes-1>, or train with class "
                          "dropout so the checkpoint records 'null_label'")
    nc = model.config.num_classes
    if not 0 <= int(null_label) < nc:
        raise ConfigError(f"null_label {null_label} outside [0, {nc}) of this model")
    return int(null_label)


@torch.no_grad()
def sample_tokens(model: torch.nn.Module, labels: torch.Tensor | list[int], *, steps: int = 8,
                  schedule: str = "cosine", choice_temperature: float = 4.5, seed: int | None = 0,
                  noise: DecodeNoise | None = None, guidance_scale: float = 0.0,
                  guidance_schedule: str = "constant", null_label: int | None = None,
                  order: str = "confidence", top_k: int | None = None, record: bool = False
                  ) -> DecodeResult:
    """Class labels (B,) -> DecodeResult whose ``tokens`` are (B, h, w) image token grids.

    Sample i draws its noise from a generator seeded ``seed + i`` (``SeededNoise``), so a
    seed reproduces a batch exactly and sample i does not depend on its batch neighbours.
    ``guidance_scale`` w > 0 turns on classifier-free guidance: logits = c + w_t (c - u), u the
    logits with the class token replaced by ``null_label``'s.
    """
    cfg = model.config
    if cfg.causal:
        raise ConfigError("this model is causal (AR baseline); use transformer.ar_sampling.ar_sample_tokens")
    device = next(model.parameters()).device
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    check_labels(labels, cfg.num_classes, fix="pass labels of the model's classes")
    b = labels.numel()
    inputs = torch.full((b, cfg.seq_len), cfg.mask_token_id, dtype=torch.long)
    inputs[:, 0] = cfg.codebook_size + labels
    inputs = inputs.to(device)
    if noise is None:  # seed None: fresh randomness from torch's global generator
        noise = SeededNoise([seed + i for i in range(b)], device=device) if seed is not None \
            else TorchGumbelNoise(device=device)
    guided = guidance_scale != 0.0
    null_tok = cfg.codebook_size + resolve_null_label(model, null_label) if guided else None

    def logits_fn(cur: torch.Tensor, step: int) -> torch.Tensor:
        w = guidance_weight(guidance_scale, guidance_schedule, step, steps) if guided else 0.0
        if w == 0.0:
            return model(cur)
        uncond = cur.clone()
        uncond[:, 0] = null_tok
        c, u = model(torch.cat([cur, uncond])).chunk(2)  # (B, L, V) each
        return c + w * (c - u)

    out = parallel_decode(logits_fn, inputs, mask_token_id=cfg.mask_token_id, codebook_size=cfg.codebook_size,
                          num_iter=steps, choice_temperature=choice_temperature, schedule=schedule, noise=noise,
                          top_k=top_k, order=order, grid=(cfg.latent_size, cfg.latent_size), record=record)
    out.tokens = out.tokens[:, 1:].reshape(b, cfg.latent_size, cfg.latent_size)
    return out
