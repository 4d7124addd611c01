"""GPU nodes that an autoscaling Ray cluster has not started yet: how many GPUs it can reach, asking
its autoscaler for them, and waiting for the first one with a line on the terminal and a timeout.

``ray.cluster_resources()`` counts the nodes that are up. On a cluster whose GPU workers start on
demand (``ray_cluster.yaml``: ``min_workers: 0``, a head without GPU) that is the CPU head alone, so
a job that sizes itself from it sees no GPU. Here:

* ``gpu_capacity()``: the GPUs the cluster can reach, from its autoscaler's node types, read from
  the cluster config an autoscaler reports to the GCS (Ray's own
  ``get_max_resources_from_cluster_config``, which Ray Data and Ray Train read too; not every
  autoscaler reports one), else from the cluster launcher's ``~/ray_bootstrap_config.yaml`` on
  the head node, where ``ray up`` writes the whole config (node types with their resources, filled
  in from the cloud's instance types) and where ``ray job submit`` runs the job's driver. None when
  neither is there (a plain ``ray start`` cluster, a driver on another machine): then only the
  nodes that are up count.
* ``GpuRequest``: asks the autoscaler for resource bundles (``ray.autoscaler.sdk.request_resources``,
  a standing request that the autoscaler meets by starting nodes), waits until the first bundle
  fits, and withdraws the request at the end. The request is repeated every few seconds while the
  cluster is short of it, because the cluster has one such request and others replace it: Ray
  Data's autoscaling coordinator (a detached actor that any Ray Data job leaves on the cluster)
  sends its own every 20 s and when a pipeline starts.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable

from maskgit_core.errors import PipelineError

__all__ = ["BOOTSTRAP_CONFIG", "capacity_from_node_types", "gpu_capacity", "GpuRequest", "bundle_text"]

log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"
"""Where the Ray cluster launcher puts the cluster config on the head node (``ray up``)."""
DEFAULT_MAX_WORKERS = 2
"""Ray's default for a cluster config's ``max_workers`` (ray/autoscaler/ray-schema.json)."""


def capacity_from_node_types(config: dict[str, Any]) -> int:
    """GPUs that a cluster-launcher config can reach: the head node type's GPUs plus, over the worker
    node types with most GPUs per node first, ``GPU x max_workers`` within the config's overall
    ``max_workers`` (a node type without its own ``max_workers`` may use the overall one)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    total = float((types.get(head) or {}).get("resources", {}).get("GPU", 0)) if head in types else 0.0
    nodes_left = int(config.get("max_workers", DEFAULT_MAX_WORKERS))
    workers = sorted((float((t or {}).get("resources", {}).get("GPU", 0)),
                      int((t or {}).get("max_workers", nodes_left))) for name, t in types.items() if name != head)
    for gpus, max_workers in reversed(workers):  # most GPUs per node first
        if gpus <= 0 or nodes_left <= 0:
            continue
        n = min(max_workers, nodes_left)
        total += gpus * n
        nodes_left -= n
    return int(total)


def gpu_capacity(bootstrap_config: str = BOOTSTRAP_CONFIG) -> tuple[int | None, str]:
    """(GPUs the connected cluster's autoscaler can reach, where that was read), or (None, why not)
    when no autoscaler config is visible from here. Needs ``ray.init`` first."""
    try:
        from ray._private import state

        max_resources = state.state.get_max_resources_from_cluster_config()
    except Exception as e:  # noqa: BLE001 - a private Ray API: its absence only means "not known here"
        log.debug("no cluster config from the GCS: %s", e)
        max_resources = None
    if max_resources:
        return int(min(max_resources.get("GPU", 0), 2**20)), "the cluster config in Ray's GCS"
    path = os.path.expanduser(bootstrap_config)
    if os.path.isfile(path):
        import yaml

        try:
            with open(path) as f:
                config = yaml.safe_load(f)
            return capacity_from_node_types(config or {}), path
        except (OSError, yaml.YAMLError, TypeError, ValueError, AttributeError) as e:
            log.warning("cannot read the autoscaler's node types from %s (%s)", path, e)
            return None, f"{path} unreadable"
    return None, f"neither a cluster config in Ray's GCS nor {bootstrap_config}"


def bundle_text(bundle: dict[str, float]) -> str:
    """``{GPU: 1, CPU: 0.5}``."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in bundle.items()) + "}"


class GpuRequest:
    """Ask the autoscaler for ``count`` bundles of ``bundle`` (which holds ``GPU``) for the ``with``
    block, and ``wait()`` until at least one fits the cluster. ``what`` names one bundle in the lines
    (an ``s`` is added for several).

    While the cluster has fewer GPUs than the bundles need, a thread repeats the request every
    ``refresh_s`` (see the module docstring); at the end the request is withdrawn (an empty
    request), so that idle GPU nodes can go. ``wait()`` calls ``notice`` with a waiting line at
    once and every ``every_s`` seconds, and raises ``PipelineError`` after ``timeout_s`` seconds
    without a GPU that fits (saying what to check, then ``advice``). ``cluster_resources``,
    ``request``, ``clock`` and ``sleep`` are Ray's and time's unless given (tests)."""

    def __init__(self, bundle: dict[str, float], count: int, *, timeout_s: float, notice: Callable[[str], None],
                 what: str = "GPU encoder", advice: str = "then run again", every_s: float = 30.0,
                 refresh_s: float = 5.0, poll_s: float = 1.0,
                 cluster_resources: Callable[[], dict[str, float]] | None = None,
                 request: Callable[[list[dict[str, float]]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if bundle.get("GPU", 0) <= 0 or count < 1:
            raise ValueError(f"a GPU request needs a bundle with GPU > 0 and count >= 1, got {bundle} x {count}")
        self.bundle, self.count, self.advice = dict(bundle), count, advice
        self.what = what if count == 1 else what + "s"
        self.timeout_s, self.every_s, self.refresh_s, self.poll_s = timeout_s, every_s, refresh_s, poll_s
        self.notice, self.clock, self.sleep = notice, clock, sleep
        self._resources = cluster_resources or _ray_cluster_resources
        self._request = request or _ray_request_resources
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.requests_sent = 0

    def placed(self, resources: dict[str, float] | None = None) -> int:
        """Bundles the cluster's GPUs hold now (at most ``count``)."""
        gpus = float((resources if resources is not None else self._resources()).get("GPU", 0.0))
        return min(self.count, int(math.floor(gpus / self.bundle["GPU"] + 1e-9)))

    def _send(self, bundles: list[dict[str, float]]) -> None:
        try:
            self._request(bundles)
            self.requests_sent += 1
        except Exception as e:  # noqa: BLE001 - a failed request is retried; wait() still times out
            log.warning("request_resources failed: %s", e)

    def _keep_asking(self) -> None:
        while not self._stop.is_set():
            try:
                short = self.placed() < self.count
            except Exception as e:  # noqa: BLE001 - e.g. the GCS briefly unreachable
                log.debug("cluster_resources failed: %s", e)
                short = True
            if not short:
                return  # the cluster holds every bundle: leave the standing request as it is
            self._send([dict(self.bundle) for _ in range(self.count)])
            self._stop.wait(self.refresh_s)

    def __enter__(self) -> "GpuRequest":
        self._send([dict(self.bundle) for _ in range(self.count)])
        self._thread = threading.Thread(target=self._keep_asking, name="gpu-request", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._send([])  # withdraw: the autoscaler may scale idle GPU nodes down again

    def wait(self) -> int:
        """Block until at least one bundle fits; returns how many fit then."""
        start = self.clock()
        last_line = None
        while True:
            resources = self._resources()
            placed = self.placed(resources)
            elapsed = self.clock() - start
            if placed >= 1:
                if last_line is not None:
                    self.notice(f"{placed} of {self.count} {self.what} placed after {elapsed:.0f} s; starting (more "
                                f"join as the autoscaler's GPU nodes come up)")
                return placed
            if elapsed >= self.timeout_s:
                raise PipelineError(
                    f"no GPU node joined the Ray cluster within {self.timeout_s:.0f} s for the {self.count} "
                    f"{self.what} asked of its autoscaler ({self.count} x {bundle_text(self.bundle)}). Check "
                    "`ray status` on the head (pending, failed or infeasible nodes), the autoscaler's log "
                    "(monitor.* in /tmp/ray/session_latest/logs on the head), the GPU node type's resources and "
                    f"max_workers in the cluster config, and the cloud's GPU quota and capacity; {self.advice}")
            if last_line is None or self.clock() - last_line >= self.every_s:
                last_line = self.clock()
                self.notice(f"waiting for {self.count} {self.what}: {placed} of {self.count} placed; the autoscaler "
                            f"is starting GPU nodes (asked for {self.count} x {bundle_text(self.bundle)}; "
                            f"{float(resources.get('GPU', 0)):g} GPUs in the cluster now; {elapsed:.0f} s of at most "
                            f"{self.timeout_s:.0f} s)")
            self.sleep(self.poll_s)


def _ray_cluster_resources() -> dict[str, float]:
    import ray

    return ray.cluster_resources()


def _ray_request_resources(bundles: list[dict[str, float]]) -> None:
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=bundles)
