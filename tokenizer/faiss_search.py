"""FAISS nearest-code search that returns exactly TorchSearch's ids, ties included.

FAISS (exact flat L2 index; a GPU index when CUDA and faiss GPU are present) and torch compute
the distances with different rounding, so on near-ties they may disagree. This backend:

1. asks FAISS for the two nearest codes of every row, with FAISS's distances d0 <= d1;
2. accepts FAISS's first code where the gap d1 - d0 exceeds a rigorous rounding bound
   ``delta = 4 (D + 2) u (|z| + max|e|)^2`` (u = 2^-24): both methods' float32 errors together
   are smaller than that, so the true nearest code is unique and both methods find it;
3. re-runs TorchSearch's exact expanded-form computation on the remaining rows (ties, e.g.
   duplicated codebook entries, and near-ties), so those get TorchSearch's ids bit for bit.

Step 3 gathers the flagged rows into one matmul of at least ``MIN_ROWS`` rows (padding with
repeats): BLAS libraries compute a row's products identically in any matmul of a few rows or more,
but take other code paths for 1-2 rows (tests check the agreement on real encoder outputs).
"""
from __future__ import annotations

import logging

import torch

from .search import CodebookSearch, TorchSearch, expanded_sq_distances
from maskgit_core.errors import ConfigError

__all__ = ["FaissSearch", "faiss_available", "faiss_gpu_available", "make_search", "SEARCH_BACKENDS"]

log = logging.getLogger(__name__)

SEARCH_BACKENDS = ("auto", "faiss", "torch")
MIN_ROWS = 64
_U = 2.0 ** -24


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_gpu_available() -> bool:
    if not (faiss_available() and torch.cuda.is_available()):
        return False
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissSearch:
    """Exact flat-index search with TorchSearch's results; see the module docstring."""

    name = "faiss"

    def __init__(self, *, use_gpu: bool | None = None, num_threads: int | None = None):
        if not faiss_available():
            raise ConfigError("search backend 'faiss' needs the faiss package: pip install faiss-cpu "
                              "(or faiss-gpu on CUDA machines), or use --search torch")
        import faiss

        self._faiss = faiss
        self.use_gpu = faiss_gpu_available() if use_gpu is None else use_gpu
        if num_threads:
            faiss.omp_set_num_threads(int(num_threads))
        self._index = None
        self._key: tuple | None = None
        self._emax = 0.0
        self._torch = TorchSearch()
        self.flagged_rows = 0
        """Rows re-ranked by the exact torch computation so far (statistics)."""
        self.total_rows = 0

    def _build(self, codebook: torch.Tensor) -> None:
        key = (codebook.data_ptr(), codebook._version, tuple(codebook.shape), str(codebook.device), codebook.dtype)
        if key == self._key:
            return
        faiss = self._faiss
        cb = codebook.detach().float().cpu().contiguous().numpy()  # (K, D)
        index = faiss.IndexFlatL2(cb.shape[1])
        if self.use_gpu:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, torch.cuda.current_device(), index)
        index.add(cb)
        self._index, self._key = index, key
        self._emax = float(codebook.detach().float().norm(dim=1).max())

    def _faiss_top2(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(2, self._index.ntotal)
        if self.use_gpu and z.is_cuda:
            import faiss.contrib.torch_utils  # noqa: F401  (lets the GPU index take torch tensors)

            d, i = self._index.search(z.float().contiguous(), k)
            return d, i.long()
        d, i = self._index.search(z.detach().float().cpu().contiguous().numpy(), k)
        return torch.from_numpy(d).to(z.device), torch.from_numpy(i).long().to(z.device)

    def search(self, z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:  # (N, D), (K, D) -> (N,)
        z = z.to(codebook.dtype)
        n, d = z.shape
        if n == 0:
            return torch.empty(0, dtype=torch.long, device=z.device)
        self._build(codebook)
        dist, idx = self._faiss_top2(z)  # (N, 2), (N, 2)
        ids = idx[:, 0].clone()
        if dist.shape[1] < 2:
            return ids
        znorm = z.detach().float().norm(dim=1)  # (N,)
        delta = 4.0 * (d + 2) * _U * (znorm + self._emax) ** 2
        flagged = ((dist[:, 1] - dist[:, 0]) <= delta) | (idx[:, 0] < 0)
        rows = flagged.nonzero().flatten()
        self.total_rows += n
        if rows.numel():
            self.flagged_rows += rows.numel()
            m = rows.numel()
            take = rows.repeat((MIN_ROWS + m - 1) // m)[:max(MIN_ROWS, m)] if m < MIN_ROWS else rows
            exact = torch.cat([expanded_sq_distances(c, codebook).argmin(dim=1)
                               for c in z[take].split(max(MIN_ROWS, self._torch.max_elems // codebook.shape[0]))])
            ids[rows] = exact[:m]
        return ids


def make_search(kind: str = "auto", *, device: str | torch.device = "cpu", codebook_size: int | None = None,
                num_threads: int | None = None) -> CodebookSearch:
    """A search backend by name: ``torch``, ``faiss``, or ``auto`` (FAISS where it is installed:
    measured ~2x faster than torch on CPU at K = 1024 to 65,536, see docs/BENCHMARKS.md; on a CUDA
    device only with faiss GPU, else torch on the device)."""
    if kind not in SEARCH_BACKENDS:
        raise ConfigError(f"unknown search backend {kind!r}; choose one of {list(SEARCH_BACKENDS)}")
    if kind == "torch":
        return TorchSearch()
    if kind == "faiss":
        return FaissSearch(num_threads=num_threads)
    on_gpu = torch.device(device).type == "cuda"
    if (on_gpu and faiss_gpu_available()) or (not on_gpu and faiss_available()):
        return FaissSearch(num_threads=num_threads)
    return TorchSearch()
