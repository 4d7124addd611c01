"""DeepSpeed's CPU all-reduce workspace in ``/dev/shm``: unlinked as soon as every rank has mapped it.

On CPU ranks DeepSpeed's shm comm op creates one POSIX shared-memory file per rank,
``/dev/shm/deepspeed_allreduce_buffer_<uid>_<master addr>_<master port>_<rank>`` (~69 MB each),
maps the files of all ranks, and never unlinks them: every CPU run, finished or killed, left its
files behind (measured: 147 files, 9.5 GiB of RAM-backed /dev/shm after one test-suite run). Once
every rank has mapped every workspace (``deepspeed.init_distributed`` returns after the op's
``initialize``, and a barrier after it proves all ranks got there), the names are no longer needed:
unlinking them keeps the mappings alive for the run and lets the kernel free the memory when the
last rank exits, however it exits.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["SHM_DIR", "workspace_path", "release_shm_workspace"]

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
_PREFIX = "deepspeed_allreduce_buffer"


def workspace_path(rank: int, *, addr: str | None = None, port: str | None = None, uid: int | None = None) -> Path:
    """The shared-memory file DeepSpeed's CPU all-reduce creates for global ``rank``."""
    addr = addr if addr is not None else os.environ.get("MASTER_ADDR", "")
    port = port if port is not None else os.environ.get("MASTER_PORT", "")
    uid = uid if uid is not None else os.getuid()
    return SHM_DIR / f"{_PREFIX}_{uid}_{addr}_{port}_{rank}"


def release_shm_workspace(rank: int) -> bool:
    """Unlink this rank's workspace name. Call after a barrier that follows
    ``deepspeed.init_distributed`` (every rank has then mapped every workspace). True if a file was
    removed; False where there is none (GPU runs, or DeepSpeed built without the shm op)."""
    path = workspace_path(rank)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.debug("unlinked %s (mapped by every rank)", path)
    return True
