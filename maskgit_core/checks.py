"""Checks on user data that several layers make the same way."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError, MaskGITError

__all__ = ["check_labels"]


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
