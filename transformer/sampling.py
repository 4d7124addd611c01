"""Iterative parallel decoding, exactly as the official ``libml/parallel_decode.py`` (spec §4).

The two random draws are injectable (``DecodeNoise``) so the sampler can be checked token
for token against the official code; by default they come from a seeded torch Generator.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch

from .schedules import canonical_schedule, mask_len

__all__ = ["DecodeNoise", "TorchGumbelNoise", "ArrayNoise", "decode", "mask_by_random_topk", "gumbel"]

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
    schedule = canonical_schedule(schedule)
    if not 0 <= start_iter < num_iter:
        raise ValueError(f"start_iter must lie in [0, num_iter={num_iter}), got {start_iter}")
    noise = noise or TorchGumbelNoise(device=inputs.device)
    cur = inputs.long().clone()  # (B, L)
    b, n = cur.shape
    n0 = (cur == mask_token_id).sum(-1).cpu().numpy()  # (B,) unknown at the start
    final = cur[:, None, :].repeat(1, num_iter, 1)  # (B, T, L)
    for step in range(start_iter, num_iter):
        logits = logits_fn(cur)[..., :codebook_size].float()  # (B, L, K)
        sampled = torch.argmax(logits + noise.token_gumbel(step, tuple(logits.shape)).to(logits.device), dim=-1)
        unknown = cur == mask_token_id  # (B, L)
        sampled = torch.where(unknown, sampled, cur)
        final[:, step] = sampled
        ratio = (step + 1) / num_iter
        probs = torch.softmax(logits, dim=-1)
        selected = torch.gather(probs, -1, sampled.clamp(max=codebook_size - 1)[..., None])[..., 0]  # (B, L)
        selected = torch.where(unknown, selected, torch.full_like(selected, float("inf")))
        remaining = unknown.sum(-1).cpu().numpy()
        m_len = torch.from_numpy(mask_len(step, num_iter, n0, remaining, schedule))[:, None].to(cur.device)
        temp = choice_temperature * (1.0 - ratio)
        masking = mask_by_random_topk(m_len, selected, temp, noise.choice_gumbel(step, (b, n)).to(cur.device))
        cur = torch.where(masking, torch.full_like(sampled, mask_token_id), sampled)
    return final
