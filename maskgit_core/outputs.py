"""Writing outputs safely: a file is replaced whole or not at all, and a non-empty output
directory is not written into unless the user said ``--overwrite``."""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Callable

from .errors import ConfigError

__all__ = ["atomic_write", "check_output_dir"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temp file in the same directory,
    which is fsynced and renamed over ``path`` (then the directory is fsynced). On any error the
    temp file is removed and an existing ``path`` is left as it was."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def check_output_dir(out: str | os.PathLike, *, overwrite: bool, flag: str = "--out") -> None:
    """Refuse a non-empty output directory (or a file in its place) unless ``overwrite``."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p}: {flag} is a file, not a directory; pick another {flag}")
    if overwrite or not p.is_dir():
        return
    names = sorted(x.name for x in p.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ConfigError(f"{p}: {flag} is not empty (holds {shown}); pick a new {flag}, or pass --overwrite "
                          "to replace the files written there")
