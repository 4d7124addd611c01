"""Generation metrics as pure functions of features / class probabilities (numpy in, floats out).

- FID: Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017).
- IS: exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), optionally over splits.
- Precision / recall: k-NN manifold estimate (Kynkäänniemi et al. 2019): a sample is "inside"
  the other set's manifold if it lies within the k-th-nearest-neighbour radius of one of its points.
- Classifier accuracy on generated images (the issue's CAS): top-1 / top-5 of a classifier
  trained on real data, against the labels the images were generated for.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from maskgit_core.errors import ConfigError

__all__ = ["feature_stats", "frechet_distance", "fid_from_features", "softmax", "inception_score", "knn_radii",
           "precision_recall", "topk_accuracy"]


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) -> (mu (D,), sigma (D, D)), float64, unbiased covariance (as the reference FID code)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ConfigError(f"features must be (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     *, eps: float = 1e-6) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); sqrtm via scipy, eps*I added if it is singular."""
    from scipy import linalg  # here: feature extraction alone runs where scipy is not installed (the GPU image)

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ConfigError(f"feature statistics differ in shape: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs "
                          f"{s2.shape}; both sides must come from the same feature extractor")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below (and logged by the caller)
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean, _ = linalg.sqrtm(s1.dot(s2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    return frechet_distance(*feature_stats(real), *feature_stats(fake))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the class probabilities IS is computed from)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def inception_score(probs: np.ndarray, *, splits: int = 1, shuffle_seed: int | None = None) -> tuple[float, float]:
    """probs (N, C) rows summing to 1 -> (mean, std) of exp(E KL(p(y|x) || p(y))) over ``splits``
    parts ``[i N // splits, (i + 1) N // splits)``. ``shuffle_seed``: permute the rows first with
    ``np.random.RandomState(seed)`` (torch-fidelity's convention, seed 2020) - needed when the set is
    ordered by class (a sample set is), or each split would see a tenth of the classes."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ConfigError(f"probs must be (N, C) with rows summing to 1, got shape {p.shape}")
    if splits < 1 or p.shape[0] < splits:
        raise ConfigError(f"the Inception Score needs at least one image per split: {p.shape[0]} images, {splits} splits")
    if shuffle_seed is not None:
        p = p[np.random.RandomState(shuffle_seed).permutation(p.shape[0])]
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        py = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0).sum(1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores)), float(np.std(scores))


CHUNK = 2048
"""Rows per block of the k-NN distance computations: memory is CHUNK x N distances, never N x N."""


def _as_tensor(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).to(device)


def _kth_radii(f: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    out = []
    for i in range(0, f.shape[0], chunk):
        d = torch.cdist(f[i:i + chunk], f)  # (c, N); each point is its own 0-th neighbour
        out.append(d.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(out)


def knn_radii(features: np.ndarray, k: int, *, device: str = "cpu", chunk: int = CHUNK) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set. (N,) float32;
    computed in blocks of ``chunk`` rows (memory chunk x N)."""
    f = _as_tensor(features, device)
    if f.shape[0] <= k:
        raise ConfigError(f"need more than k={k} points for k-NN radii, got {f.shape[0]}")
    return _kth_radii(f, k, chunk).cpu().numpy()


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3, device: str = "cpu",
                     chunk: int = CHUNK) -> tuple[float, float]:
    """k-NN manifold precision (fake inside the real manifold) and recall (real inside the fake one),
    Kynkaanniemi et al. 2019, on all rows of both sets; float32 distances in blocks of ``chunk`` rows,
    so 50k x 50k needs ~chunk x 50k x 4 B at a time (and three N^2 x D passes of compute)."""
    r, g = _as_tensor(real, device), _as_tensor(fake, device)
    for name, x in (("real", r), ("generated", g)):
        if x.shape[0] <= k:
            raise ConfigError(f"need more than k={k} {name} points for precision/recall, got {x.shape[0]}")
    rr, rg = _kth_radii(r, k, chunk), _kth_radii(g, k, chunk)
    inside_real = torch.zeros(g.shape[0], dtype=torch.bool, device=r.device)
    real_covered = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
    for i in range(0, g.shape[0], chunk):
        d = torch.cdist(g[i:i + chunk], r)  # (c, Nr)
        inside_real[i:i + chunk] = (d <= rr[None, :]).any(1)
        real_covered |= (d <= rg[i:i + chunk, None]).any(0)
    return float(inside_real.float().mean()), float(real_covered.float().mean())


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    lg = np.asarray(logits)
    k = min(k, lg.shape[1])
    top = np.argpartition(-lg, k - 1, axis=1)[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(1).mean())
