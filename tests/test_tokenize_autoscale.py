"""The tokenize job on an autoscaling Ray cluster whose GPU nodes start on demand (ray_cluster.yaml:
a head without GPU, GPU workers with min_workers 0): the plan counts the GPUs the autoscaler can
reach, the job asks for them, says on the terminal that it waits, uses the nodes that join, never
falls back to CPU silently, and times out with what to check. Unit tests of the decisions (no Ray),
then the real job on Ray's own fake autoscaling cluster (tests/fake_autoscaling_cluster.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from maskgit_core.errors import ConfigError, PipelineError
from pipeline.data.tokenize_job import TokenizeConfig, _joins_cluster, plan_resources
from pipeline.data.tokenize_stages import encoder_device
from pipeline.ray_autoscale import GpuRequest, capacity_from_node_types, gpu_capacity

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ the plan (pure)

def test_auto_plans_gpu_encoders_for_gpu_node_types_not_up_yet():
    res = plan_resources({"CPU": 2.0}, device="auto", gpu_capacity=8, tasks=100)
    assert res.device == "cuda" and res.num_encoders == 8 and res.encoder_gpus == 1.0 and res.wait_for_gpus
    assert res.encoder_bundle == {"GPU": 1.0, "CPU": res.encoder_cpus} and 0 < res.encoder_cpus <= 1.0
    few = plan_resources({"CPU": 2.0}, device="auto", gpu_capacity=8, tasks=3)
    assert few.num_encoders == 3 and few.wait_for_gpus  # no more encoders than tasks


def test_auto_stays_cpu_without_gpu_node_types():
    for capacity in (None, 0):  # unknown (no autoscaler config visible) or none
        res = plan_resources({"CPU": 2.0}, device="auto", gpu_capacity=capacity, tasks=10)
        assert res.device == "cpu" and not res.wait_for_gpus and res.encoder_gpus == 0.0
        assert res == plan_resources({"CPU": 2.0})  # as before autoscaling clusters were known


def test_cuda_with_no_gpu_up_waits_for_them():
    res = plan_resources({"CPU": 2.0}, device="cuda")  # capacity unknown: ask and wait
    assert res.device == "cuda" and res.num_encoders == 1 and res.wait_for_gpus
    four = plan_resources({"CPU": 2.0}, device="cuda", num_encoders=4, tasks=2)
    assert four.num_encoders == 4 and four.encoder_gpus == 1.0 and four.wait_for_gpus  # asked for: kept
    with pytest.raises(ConfigError, match="cannot start any"):
        plan_resources({"CPU": 2.0}, device="cuda", gpu_capacity=0)


def test_gpus_up_and_more_to_come():
    res = plan_resources({"CPU": 18.0, "GPU": 1.0}, device="auto", gpu_capacity=8, tasks=100)
    assert res.num_encoders == 8 and res.encoder_gpus == 1.0 and not res.wait_for_gpus  # starts on the first
    shared = plan_resources({"CPU": 16.0, "GPU": 1.0}, device="cuda", num_encoders=2)
    assert shared.encoder_gpus == 0.5 and not shared.wait_for_gpus  # two encoders share the GPU, as before


def test_capacity_from_node_types():
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    assert capacity_from_node_types(cfg) == 8  # gpu_worker: 1 GPU x max_workers 8
    types = {"head": {"resources": {"CPU": 4, "GPU": 1}}, "big": {"resources": {"GPU": 8}, "max_workers": 2},
             "small": {"resources": {"GPU": 1}, "max_workers": 10}, "cpu": {"resources": {"CPU": 64}}}
    # the head's GPU, then the biggest nodes first within the overall max_workers
    assert capacity_from_node_types({"head_node_type": "head", "max_workers": 3, "available_node_types": types}) \
        == 1 + 8 * 2 + 1
    assert capacity_from_node_types({"head_node_type": "head", "available_node_types": {"cpu": {"resources": {}}}}) \
        == 0


def test_gpu_capacity_reads_the_launchers_bootstrap_config(tmp_path):
    path = tmp_path / "ray_bootstrap_config.yaml"
    assert gpu_capacity(str(path))[0] is None  # not a cluster-launcher head: unknown
    path.write_text(json.dumps(yaml.safe_load((REPO / "ray_cluster.yaml").read_text())))  # `ray up` writes JSON
    assert gpu_capacity(str(path)) == (8, str(path))


def test_joins_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = dict(source="s", out="o", tokenizer="t")
    assert not _joins_cluster(TokenizeConfig(**cfg))  # a local Ray for the run: no autoscaler to ask
    assert not _joins_cluster(TokenizeConfig(**cfg, ray_address="local"))
    assert _joins_cluster(TokenizeConfig(**cfg, ray_address="10.0.0.1:6379"))
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # set by `ray job submit`
    assert _joins_cluster(TokenizeConfig(**cfg))


def test_encoder_device_refuses_a_gpu_actor_without_cuda():
    assert encoder_device("cuda", cuda_available=True) == "cuda"
    assert encoder_device("cpu", cuda_available=False) == "cpu"
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        encoder_device("cuda", cuda_available=False, where="node 10.0.0.7")
    assert encoder_device("cuda", cuda_available=False, simulated_gpus=True) == "cpu"  # test clusters only


def test_a_gpu_actor_without_cuda_ends_the_job_with_its_reason():
    from ray.exceptions import RayError

    from pipeline.data.tokenize_job import _pipeline_error

    text = ("The actor died because of an error raised in its creation task, ray::MapWorker(...).__init__()\n"
            "  File \"tokenize_stages.py\", line 126, in encoder_device\n"
            "maskgit_core.errors.ConfigError: an encoder actor holds a Ray GPU but its torch sees no CUDA device "
            "(node 10.0.0.7, torch 2.13.0+cpu): install a CUDA build of torch\n")
    plan = SimpleNamespace(records={}, units=[[], [], []])
    err = _pipeline_error(RayError(text), TokenizeConfig(source="s", out="OUT", tokenizer="t"), plan)
    assert isinstance(err, PipelineError)
    assert str(err).startswith("the Ray pipeline of OUT stopped: an encoder actor holds a Ray GPU but its torch sees "
                               "no CUDA device (node 10.0.0.7, torch 2.13.0+cpu)")
    assert str(err).endswith("the 0 of 3 units written so far are kept: fix that, then rerun the same command to "
                             "finish the rest")


# ------------------------------------------------------------------ asking and waiting (fake Ray)

class _FakeCluster:
    """``cluster_resources`` whose GPUs appear at a given (fake) time; records the requests."""

    def __init__(self, gpu_at: float | None):
        self.now, self.gpu_at, self.requests, self.lock = 0.0, gpu_at, [], threading.Lock()

    def resources(self) -> dict[str, float]:
        up = self.gpu_at is not None and self.now >= self.gpu_at
        return {"CPU": 2.0, **({"GPU": 1.0} if up else {})}

    def request(self, bundles) -> None:
        with self.lock:
            self.requests.append(bundles)

    def sleep(self, s: float) -> None:
        self.now += s


def _request(fake: _FakeCluster, lines: list, **kw) -> GpuRequest:
    return GpuRequest({"GPU": 1.0, "CPU": 0.5}, 2, notice=lines.append, cluster_resources=fake.resources,
                      request=fake.request, clock=lambda: fake.now, sleep=fake.sleep, every_s=30, poll_s=1,
                      refresh_s=0.01, **kw)


def test_gpu_request_waits_with_a_line_and_withdraws():
    fake, lines = _FakeCluster(gpu_at=75.0), []
    with _request(fake, lines, timeout_s=900) as req:
        assert req.wait() == 1
    assert lines[0].startswith("waiting for 2 GPU encoders: 0 of 2 placed; the autoscaler is starting GPU nodes "
                               "(asked for 2 x {GPU: 1, CPU: 0.5}; 0 GPUs in the cluster now; 0 s of at most 900 s)")
    assert [ln.split(";")[0] for ln in lines[:3]] == ["waiting for 2 GPU encoders: 0 of 2 placed"] * 3  # 0, 30, 60 s
    assert lines[-1].startswith("1 of 2 GPU encoders placed after 75 s")
    assert fake.requests[0] == [{"GPU": 1.0, "CPU": 0.5}] * 2 and fake.requests[-1] == []  # asked, then withdrawn


def test_gpu_request_times_out_saying_what_to_check():
    fake, lines = _FakeCluster(gpu_at=None), []
    with pytest.raises(PipelineError, match=r"within 120 s .*`ray status` on the head.*then run again"):
        with _request(fake, lines, timeout_s=120) as req:
            req.wait()
    assert len(lines) == 4 and fake.requests[-1] == []  # a line at 0, 30, 60, 90 s; the request withdrawn


# ------------------------------------------------------------------ the real job, Ray's fake autoscaler

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None or os.geteuid() != 0,
                    reason="needs root, unshare and ip to give the fake cluster a private PID and network namespace")
@pytest.mark.integration  # ~35-45 s on the loaded 2-core machine (2026-12-06)
def test_job_scales_up_a_gpu_node_and_finishes_exactly_once(tmp_path):
    """Head: 1 CPU, no GPU. One worker type {CPU: 1, GPU: 1}, min_workers 0, started by Ray's real
    autoscaler (fake node provider) on demand. The job (default --device auto, the cluster-launcher
    config in ~/ray_bootstrap_config.yaml as `ray up` leaves it) must plan a GPU encoder, ask for it,
    say that it waits, run on the node that joins and write every image exactly once. The encoder
    runs torch on the CPU there (--simulated-gpus: the declared GPU does not exist).

    The cluster runs in its own PID and network namespace: AutoscalingCluster runs `ray stop --force`
    (kills every Ray process it sees) and its head takes Ray's default ports; RAY_TMPDIR keeps its
    files apart from other Ray clusters on the machine."""
    from pipeline.data.verify import verify_dataset
    from tokenize_fixtures import make_job_data

    data = make_job_data(tmp_path / "src", tmp_path / "tok", per_class=6, classes=CLASSES, bad_kinds=("truncated",))
    out, log, home = tmp_path / "out", tmp_path / "job.log", tmp_path / "home"
    home.mkdir()
    rtmp = tempfile.mkdtemp(prefix="ra", dir="/tmp")  # short: AF_UNIX socket paths are <= 107 bytes
    spec = {"head": {"CPU": 1}, "workers": {"gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                                                           "min_workers": 0, "max_workers": 1}},
            "log": str(log), "timeout": 400,
            "job": [sys.executable, str(REPO / "jobs" / "tokenize_imagenet.py"), data["src"], str(out),
                    "--tokenizer", data["tok"], "--shard-size", "8", "--batch-size", "4", "--simulated-gpus",
                    "--gpu-timeout", "240"]}
    script = f"""
set -u
ip link set lo up || exit 12
export PATH="{BIN}:$PATH" HOME={home} RAY_TMPDIR={rtmp} RAY_AUTH_MODE=disabled PYTHONPATH={REPO}
python {REPO / "tests" / "fake_autoscaling_cluster.py"} '{json.dumps(spec)}'
rc=$?  # not exec'd: bash stays PID 1 and reaps the processes that `ray stop` kills
exit $rc
"""
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--net", "bash", "-c", script],
                           capture_output=True, text=True, timeout=480, cwd=tmp_path)
    finally:
        shutil.rmtree(rtmp, ignore_errors=True)
    job_log = log.read_text() if log.exists() else ""
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + job_log[-3000:]
    result = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    print(f"fake cluster: job {result['job_s']:.1f} s, cluster start + job + stop {result['total_s']:.1f} s")
    assert result["rc"] == 0, job_log[-4000:]
    assert result["before"].get("GPU", 0) == 0  # the head alone: no GPU up when the job started
    assert result["after"].get("GPU", 0) >= 1, result  # the autoscaler added the GPU worker for the job
    assert "tokenize: waiting for 1 GPU encoder: 0 of 1 placed; the autoscaler is starting GPU nodes" in job_log
    assert "1 of 1 GPU encoder placed after" in job_log
    assert "24 samples, 1 errors of 25 images; 4 units run, 0 already done" in job_log, job_log[-2000:]
    rep = verify_dataset(str(out), source=data["src"])
    assert rep.ok and rep.samples == 24 and rep.errors == 1, rep.problems
