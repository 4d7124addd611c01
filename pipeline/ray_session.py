"""One way to get a Ray cluster for a job: join the one given (or the one ``ray job submit`` set in
``RAY_ADDRESS``), or start a local one for the run and shut it down afterwards. Used by the
tokenize job, sample sets and the demo."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

__all__ = ["ray_session"]


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[bool]:
    """Connect to (or start) Ray for the ``with`` block; yields True when this call started Ray
    (and so shuts it down at the end). ``address='local'`` always starts a local cluster; a
    local cluster is quiet (no dashboard, worker logs not forwarded)."""
    import ray

    if ray.is_initialized():
        yield False
        return
    kw = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        address = None
    elif address is None:
        address = os.environ.get("RAY_ADDRESS")  # set by `ray job submit`
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(include_dashboard=False, num_cpus=num_cpus, **kw)
    try:
        yield True
    finally:
        ray.shutdown()
