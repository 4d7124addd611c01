"""Nearest-codebook-entry search backends.

Every backend returns, for each row z of a (N, D) float matrix, the index of the codebook
entry e minimising the official expanded-form squared distance |z|^2 - 2 z.e + |e|^2,
ties going to the first (lowest) index, as ``jnp.argmin`` does in the official quantizer.
"""
from __future__ import annotations

from typing import Protocol

import torch

__all__ = ["CodebookSearch", "TorchSearch", "expanded_sq_distances"]


class CodebookSearch(Protocol):
    """A nearest-code backend: ``search((N, D) latents, (K, D) codebook) -> (N,) int64``."""

    name: str

    def search(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor: ...


def expanded_sq_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, D), (K, D) -> (N, K) squared distances in the official expanded form."""
    z2 = (z * z).sum(dim=1, keepdim=True)  # (N, 1)
    e2 = (codebook * codebook).sum(dim=1)[None, :]  # (1, K)
    return z2 - 2.0 * (z @ codebook.t()) + e2


class TorchSearch:
    """Exact search with a matmul, in chunks of rows so (N, K) never exceeds ``max_elems``."""

    name = "torch"

    def __init__(self, *, max_elems: int = 1 << 26):
        self.max_elems = max_elems

    def search(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        z = z.to(codebook.dtype)
        rows = max(1, self.max_elems // max(1, codebook.shape[0]))
        out = [expanded_sq_distances(c, codebook).argmin(dim=1) for c in z.split(rows)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=z.device)
