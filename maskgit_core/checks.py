"""Checks on user data that several layers make the same way."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError, MaskGITError

__all__ = ["check_labels", "resolve_device"]


def check_labels(labels: Any, num_classes: int, *, what: str = "class labels", fix: str = "",
                 error: type[MaskGITError] = ConfigError) -> None:
    """Raise ``error`` unless every class label lies in ``[0, num_classes)``.

    ``labels``: an int, a sequence, an array or a tensor (any shape). The message names ``what``
    (e.g. the file), the first offending labels and the range, then ``fix`` (what to do).
    """
    if hasattr(labels, "detach"):  # a torch tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    flat = np.asarray(labels).reshape(-1)
    bad = flat[(flat < 0) | (flat >= num_classes)]
    if len(bad):
        shown = str(int(bad[0])) if flat.size == 1 else f"{sorted({int(v) for v in bad})[:8]}"
        raise error(f"{what} {shown} outside [0, {num_classes}){f'; {fix}' if fix else ''}")


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a CUDA device is a
    ConfigError (raised before any model loads). Shared by sampling and evaluation."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device cuda, but this torch build ({torch.__version__}) sees no CUDA device; "
                          "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    return name
