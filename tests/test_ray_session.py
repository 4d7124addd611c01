"""A Ray cluster the project starts for a run (tokenize, sample sets, the demo) listens on 127.0.0.1
only: before, its GCS, raylets and workers listened on every interface of the machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_PROBE = """
import os, subprocess
from pipeline.ray_session import ray_session
import ray

with ray_session("local", num_cpus=1):
    ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
    pids = set(subprocess.run(["pgrep", "-s", str(os.getsid(0))], capture_output=True, text=True).stdout.split())
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    mine = [l for l in out.splitlines() if any(f"pid={p}," in l for p in pids)]
    print("NODE", ray.nodes()[0]["NodeManagerAddress"])
    for line in mine:
        print("LISTEN", line.split()[3])
"""


@pytest.mark.integration
@pytest.mark.skipif(not Path("/usr/bin/ss").exists() and not Path("/bin/ss").exists(), reason="needs ss (iproute2)")
def test_a_local_cluster_listens_on_loopback_only():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    r = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=240,
                       start_new_session=True)  # its own session: only this cluster's processes are inspected
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert "NODE 127.0.0.1" in lines, r.stdout
    listens = [ln.split()[1] for ln in lines if ln.startswith("LISTEN")]
    assert len(listens) >= 3, r.stdout  # GCS, raylet, workers: the check saw Ray's sockets
    exposed = [a for a in listens if not (a.startswith("127.") or a.startswith("[::ffff:127.") or a.startswith("[::1]"))]
    assert exposed == [], f"listening beyond loopback: {exposed}"
