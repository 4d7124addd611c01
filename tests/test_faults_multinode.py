"""A real multi-node Ray cluster on one machine (a head with no CPUs and two worker nodes, each its
own raylet and object store), the tokenize job run against it, and the worker node that hosts an
encoder killed mid-run (raylet, object store and workers, no graceful shutdown). The job completes on
the surviving node or fails with its reason, and a rerun completes; either way the output is exactly
once and byte-identical to an uninterrupted run on the same cluster."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.data.tokenize_job import JOB_DIR, TokenizeConfig, run_tokenize
from tokenize_fixtures import BIN, check_equal_to_reference, make_job_data

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")
UNIT, BATCH, ENCODERS = 3, 4, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_job_data(tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("tok"), per_class=5,
                         classes=CLASSES, bad_kinds=("truncated",))


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs: no task or actor can run there) + two 2-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    mem = 150 * 2**20
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, object_store_memory=mem,
                                                          include_dashboard=False))
    for _ in range(2):
        c.add_node(num_cpus=2, object_store_memory=mem)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _cfg(data, out, address) -> TokenizeConfig:
    return TokenizeConfig(source=data["src"], out=str(out), tokenizer=data["tok"], formats=("parquet", "webdataset"),
                          unit_size=UNIT, batch_size=BATCH, num_encoders=ENCODERS, ray_address=address)


def _records(out: Path) -> int:
    d = out / JOB_DIR / "units"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


def _encoders_by_node(cluster) -> dict:
    """{worker node: [encoder actor pids]}, from the process tree (workers are children of their raylet)."""
    import psutil

    raylets = {n.all_processes["raylet"][0].process.pid: n for n in cluster.worker_nodes}
    head_raylet = cluster.head_node.all_processes["raylet"][0].process.pid
    found: dict = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EncodeTasks" not in " ".join(p.cmdline()):
                continue
            parents = {q.pid for q in p.parents()}
        except psutil.Error:
            continue
        assert head_raylet not in parents, "an encoder runs on the head node (it has no CPUs)"
        for pid, node in raylets.items():
            if pid in parents:
                found.setdefault(node, []).append(p.pid)
    return found


@pytest.mark.integration
def test_worker_node_killed_mid_run(data, cluster, tmp_path):
    ref_out = tmp_path / "ref"
    res = run_tokenize(_cfg(data, ref_out, cluster.address))  # uninterrupted, same cluster and settings
    total = res.units_total
    out = tmp_path / "out"
    cmd = [str(BIN / "maskgit-pipeline"), "tokenize", data["src"], str(out), "--tokenizer", data["tok"],
           "--format", "both", "--shard-size", str(UNIT), "--batch-size", str(BATCH),
           "--num-encoders", str(ENCODERS), "--ray-address", cluster.address]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while not (_records(out) >= 1 and _encoders_by_node(cluster)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victims = _encoders_by_node(cluster)
    done_at_kill = _records(out)
    assert victims and proc.poll() is None and done_at_kill < total, "the job ended before a node could be killed"
    node = next(iter(victims))
    cluster.remove_node(node, allow_graceful=False)  # SIGKILL: raylet, object store, its workers
    t_kill = time.time()
    try:
        _, stderr = proc.communicate(timeout=150)
        outcome = "completed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        outcome = "hung; driver killed after 150 s"
    took = time.time() - t_kill
    print(f"\nkilled a node with encoder pids {victims[node]} at {done_at_kill}/{total} units; first run {outcome} "
          f"{took:.1f} s later; last stderr line: {(stderr or '').strip().splitlines()[-1:]}")
    assert outcome != "hung; driver killed after 150 s", stderr[-2000:]
    if proc.returncode != 0:  # the failure says why and what to do, in one line
        assert proc.returncode == 2 and "error: the Ray pipeline of" in stderr, stderr[-2000:]
        assert "units written so far are kept: rerun the same command" in stderr
    rerun = run_tokenize(_cfg(data, out, cluster.address))  # on the surviving node
    assert rerun.units_run + rerun.units_skipped == total
    if proc.returncode == 0:
        assert rerun.units_run == 0
    check_equal_to_reference(data["src"], str(ref_out), str(out))
