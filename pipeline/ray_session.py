"""One way to get a Ray cluster for a job: join the one given (or the one ``ray job submit`` set in
``RAY_ADDRESS``), or start a local one for the run and shut it down afterwards. Used by the
tokenize job, sample sets and the demo."""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

__all__ = ["ray_session", "loopback_only"]

# Ray picks the machine's routable address for a local cluster and listens on all interfaces; with
# this variable off (the setting Ray uses on macOS and Windows) it advertises and binds 127.0.0.1.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within the block, a locally started Ray cluster listens on 127.0.0.1 only (this process and
    the Ray processes it starts): a throwaway single-machine cluster needs no open ports. The
    setting is restored afterwards, so a later connection to a real cluster is unaffected."""
    from ray._private import ray_constants

    old_env, old_flag = os.environ.get(_LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"  # for the raylet's workers, read when they import ray
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by Ray's node-address lookup
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = old_env


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[bool]:
    """Connect to (or start) Ray for the ``with`` block; yields True when this call started Ray
    (and so shuts it down at the end). ``address='local'`` always starts a local cluster; a
    local cluster is quiet (no dashboard, worker logs not forwarded) and listens on 127.0.0.1 only."""
    import ray

    if ray.is_initialized():
        yield False
        return
    kw = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address == "local":
        address = None
    elif address is None:
        address = os.environ.get("RAY_ADDRESS")  # set by `ray job submit`
    with contextlib.nullcontext() if address else loopback_only():
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(include_dashboard=False, num_cpus=num_cpus, **kw)
        try:
            yield True
        finally:
            ray.shutdown()
