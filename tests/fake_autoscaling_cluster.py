"""Ray's fake autoscaling cluster on this machine, for the tokenize job's autoscaling test
(tests/test_tokenize_autoscale.py): ``ray.cluster_utils.AutoscalingCluster`` runs Ray's real
autoscaler (monitor) with the ``fake_multinode`` node provider, which starts each worker node it
launches as a raylet on this machine with the resources its node type declares. Nothing real stands
behind a declared GPU: torch on such a node sees no CUDA device.

Run as a script inside a private PID and network namespace (the test does this): ``start()`` and
``shutdown()`` run ``ray stop --force``, which kills every Ray process it can see, and the head
listens on Ray's default ports. The script

1. writes the cluster config where ``ray up`` leaves it on a head node (``~/ray_bootstrap_config.yaml``),
2. starts the head (no GPU), reads ``ray.cluster_resources()``,
3. runs the job command it was given (this process's driver disconnected first), its output to a file,
4. reads ``ray.cluster_resources()`` again, prints one line ``RESULT {json}`` and stops the cluster.

The pip wheel of Ray lacks the ``fake_multi_node/example.yaml`` that ``AutoscalingCluster`` reads
its base config from, so ``_generate_config`` here builds the whole config.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import AutoscalingCluster

HEAD_TYPE = "ray.head.default"


class FakeAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` with its own base config (see the module docstring)."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        types = {name: dict(t) for name, t in worker_node_types.items()}
        types[HEAD_TYPE] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        config = {"cluster_name": "fake-tokenize", "max_workers": sum(t.get("max_workers", 0) for t in
                                                                       worker_node_types.values()),
                  "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
                  # as Ray's own fake-cluster config: the fake nodes share one IP (told apart by node id),
                  # and have nothing to set up by SSH (with node updaters on, the autoscaler tries, fails
                  # and terminates each node it launched as "launch failed")
                  "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                               "disable_launch_config_check": True},
                  "auth": {"ssh_user": "ubuntu"},
                  "head_node_type": HEAD_TYPE, "available_node_types": types,
                  "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
                  "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
                  "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": []}
        config.update(config_kwargs)
        return config


def main() -> int:
    spec = json.loads(sys.argv[1])  # {"head": {...}, "workers": {...}, "job": [argv...], "log": path}
    cluster = FakeAutoscalingCluster(head_resources=dict(spec["head"]), worker_node_types=spec["workers"])
    bootstrap = Path(os.path.expanduser("~/ray_bootstrap_config.yaml"))
    bootstrap.write_text(json.dumps(cluster._config))
    t0 = time.monotonic()
    cluster.start()
    try:
        ray.init(address="auto", logging_level="WARNING")
        address = ray.get_runtime_context().gcs_address
        before = ray.cluster_resources()
        ray.shutdown()
        t_job = time.monotonic()
        with open(spec["log"], "w") as log:
            rc = subprocess.run([*spec["job"], "--ray-address", address], stdout=log, stderr=subprocess.STDOUT,
                                timeout=spec.get("timeout", 400)).returncode
        job_s = time.monotonic() - t_job
        ray.init(address=address, logging_level="WARNING")
        after = ray.cluster_resources()
        nodes = [{"alive": n["Alive"], "resources": n["Resources"]} for n in ray.nodes()]
        ray.shutdown()
    finally:
        cluster.shutdown()
    print("RESULT " + json.dumps({"rc": rc, "before": before, "after": after, "nodes": nodes, "job_s": job_s,
                                  "total_s": time.monotonic() - t0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
