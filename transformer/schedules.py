"""Mask schedules of the MaskGIT paper and the official ``mask_len`` rule, as pure functions.

Computed in float32, as JAX computes them in the official ``libml/mask_schedule.py`` (it
matters: at T=12 the cosine step 7 gives 127, not 128, in float32).
"""
from __future__ import annotations

import math

import numpy as np
from maskgit_core.errors import ConfigError

__all__ = ["SCHEDULES", "SCHEDULE_ALIASES", "mask_ratio", "mask_len", "mask_len_sequence", "mask_len_table", "canonical_schedule"]

# name -> description; aliases map the official spellings ("uniform", "pow2", ...) here.
SCHEDULES = {
    "cosine": "cos(pi/2 r)",
    "linear": "1 - r",
    "square": "1 - r^2",
    "cubic": "1 - r^3",
    "sqrt": "1 - r^0.5",
    "log": "-log2(r) / log2(N)",
    "exp": "1 - 2^(-log2(N) (1 - r))",
}
_ALIASES = {"uniform": "linear", "pow1": "linear", "pow2": "square", "pow3": "cubic", "pow0.5": "sqrt",
            "square-root": "sqrt", "square_root": "sqrt", "exponential": "exp", "logarithmic": "log"}
SCHEDULE_ALIASES = _ALIASES  # public: the command line accepts these spellings too


def canonical_schedule(method: str) -> str:
    """Return the canonical schedule name; unknown names list the valid ones."""
    name = _ALIASES.get(method, method)
    if name not in SCHEDULES:
        raise ConfigError(f"unknown mask schedule {method!r}; choose one of {sorted(SCHEDULES)} "
                          f"(aliases {sorted(_ALIASES)})")
    return name


def mask_ratio(ratio: float, total_unknown: int | np.ndarray, method: str = "cosine") -> np.ndarray:
    """gamma(ratio) clipped to [1e-6, 1], float32. ``total_unknown`` (N) is used by log/exp only."""
    name = canonical_schedule(method)
    r = np.float32(ratio)
    n = np.asarray(total_unknown, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if name == "cosine":
            g = np.cos(np.float32(math.pi / 2.0 * ratio))
        elif name == "linear":
            g = np.float32(1.0) - r
        elif name in ("square", "cubic", "sqrt"):
            p = {"square": 2.0, "cubic": 3.0, "sqrt": 0.5}[name]
            g = np.float32(1.0) - np.power(r, np.float32(p))
        elif name == "log":
            g = -np.log2(r) / np.log2(n)
        else:  # exp
            g = np.float32(1.0) - np.exp2(-np.log2(n) * (np.float32(1.0) - r))
    return np.clip(np.asarray(g, dtype=np.float32) * np.ones_like(n), np.float32(1e-6), np.float32(1.0))


def mask_len(step: int, num_iter: int, total_unknown: np.ndarray, remaining_unknown: np.ndarray,
             method: str = "cosine") -> np.ndarray:
    """Tokens to re-mask after decoding step ``step`` (0-based) of ``num_iter``, per sample.

    floor(N0 * gamma((step+1)/T)), clamped to [1, remaining - 1] (official ``decode``).
    """
    n0 = np.asarray(total_unknown, dtype=np.float32)
    g = mask_ratio((step + 1) / num_iter, n0, method)
    raw = np.floor(n0 * g)
    return np.maximum(1, np.minimum(np.asarray(remaining_unknown) - 1, raw)).astype(np.int64)


def mask_len_sequence(num_tokens: int, num_iter: int, method: str = "cosine") -> list[int]:
    """The unclamped floor(N * gamma) per step, as the fixture's ``cosine_T8`` etc. record it."""
    return [int(np.floor(np.float32(num_tokens) * mask_ratio((t + 1) / num_iter, num_tokens, method)))
            for t in range(num_iter)]


def mask_len_table(total_unknown: np.ndarray, num_iter: int, method: str = "cosine") -> np.ndarray:
    """(B,) unknown counts at the start -> (B, T) unclamped floor(N0 * gamma((t+1)/T)).

    The decoder clamps each entry to [1, remaining - 1] on the device, so no step needs the
    host (no GPU synchronisation inside the loop).
    """
    n0 = np.asarray(total_unknown, dtype=np.float32)
    cols = [np.floor(n0 * mask_ratio((t + 1) / num_iter, n0, method)) for t in range(num_iter)]
    return np.stack(cols, axis=-1).astype(np.int64)
