"""Environment fixes for the DeepSpeed launch on GPU machines: ``TORCH_CUDA_ARCH_LIST`` with arch
suffixes (``9.0a``, ``10.0f``, set by recent CUDA images) makes DeepSpeed 0.19's op builder fail
(it sorts the archs with ``int()`` on ``"0a"``); the suffix only selects arch-specific
instructions, so the plain arch is kept for DeepSpeed's JIT builds."""
from __future__ import annotations

import logging
import os
import re
from typing import MutableMapping

__all__ = ["sanitize_cuda_arch_list", "sanitize_environ"]

log = logging.getLogger(__name__)

_ARCH = re.compile(r"^(\d+)\.(\d+)[A-Za-z]*(\+PTX)?$")


def sanitize_cuda_arch_list(value: str) -> str:
    """``"8.0;9.0a 10.0f+PTX"`` -> ``"8.0;9.0;10.0+PTX"``: arch suffixes dropped, ``;``-separated,
    duplicates removed in order. Entries that are not ``major.minor[suffix][+PTX]`` are kept as given
    (DeepSpeed reports them itself)."""
    out: list[str] = []
    for entry in value.replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        m = _ARCH.match(entry)
        clean = f"{m.group(1)}.{m.group(2)}{m.group(3) or ''}" if m else entry
        if clean not in out:
            out.append(clean)
    return ";".join(out)


def sanitize_environ(env: MutableMapping[str, str] | None = None) -> None:
    """Rewrite ``TORCH_CUDA_ARCH_LIST`` in ``env`` (default: this process's) for DeepSpeed's parser."""
    env = os.environ if env is None else env
    value = env.get("TORCH_CUDA_ARCH_LIST")
    if value:
        clean = sanitize_cuda_arch_list(value)
        if clean != value:
            log.info("TORCH_CUDA_ARCH_LIST %r -> %r (DeepSpeed's op builder cannot parse arch suffixes)", value, clean)
            env["TORCH_CUDA_ARCH_LIST"] = clean
