"""`ray start --head` on loopback + `ray job submit ... jobs/tokenize_imagenet.py` + `ray stop`,
and ray_cluster.yaml against Ray's own cluster-config schema."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

import tokenizer
from pipeline.data.verify import verify_dataset
from pipeline.train.launcher import free_port
from tokenize_data import make_imagenet_tree
from tokenize_fixtures import S3_ENV, s3  # noqa: F401,F811 - the loopback S3 server fixture

RUNTIME_EXCLUDES = ("/ckpt/", "/demo-out/", "/runs/", "*.safetensors", "*.pth", "*.msgpack")
"""What docs/TOKENIZE.md's `ray job submit` keeps out of the uploaded working directory (Ray caps it
at 512 MiB; the official256 checkpoints alone are ~0.9 GB): checkpoints and run outputs."""

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_ray_cluster_yaml_matches_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert workers and all(t["max_workers"] >= 1 for t in workers)
    head_cmds = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds and "0.0.0.0" not in head_cmds  # not open to the internet
    assert any("pip install" in c and "maskgit-pipeline" in c for c in cfg["setup_commands"])
    bad = dict(cfg, provider={"type": "aws", "region": 7})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="needs root + unshare to give `ray stop` a private process namespace")
@pytest.mark.integration
def test_ray_start_job_submit_stop(tmp_path, s3):
    """The real cluster cycle, as docs/TOKENIZE.md runs it: the tokenizer read from the bucket (the
    loopback S3 server) and checkpoints/outputs excluded from the uploaded working directory. `ray stop`
    kills Ray processes by name on the whole machine, so the cycle runs in its own PID namespace
    (unshare): it stops this test's cluster and nothing else."""
    import fsspec

    src, out, tok = tmp_path / "src", tmp_path / "out", tmp_path / "tok"
    make_imagenet_tree(src, per_class=4)
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), tok)
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3})
    fs.mkdir("rj-bucket")
    fs.put(str(tok), "rj-bucket/ckpt/tokenizer", recursive=True)
    runtime_env = json.dumps({"excludes": list(RUNTIME_EXCLUDES),
                              "env_vars": {"AWS_ENDPOINT_URL": s3, **S3_ENV}})
    port, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: AF_UNIX socket paths are <= 107 bytes
    ray = BIN / "ray"
    script = f"""
set -u
export PATH="{BIN}:$PATH" RAY_AUTH_MODE=disabled  # loopback-only throwaway cluster (see STACK-NOTES)
{ray} start --head --node-ip-address 127.0.0.1 --port {port} --dashboard-host 127.0.0.1 --dashboard-port {dash} \
  --num-cpus 2 --disable-usage-stats --temp-dir {temp} >/dev/null || exit 11
# the head's job agent can come up after `ray start` returns (seen on a loaded machine:
# "No available agent to submit job"): retry only that refusal, for up to ~2 minutes
for try in $(seq 40); do
  {ray} job submit --address http://127.0.0.1:{dash} --working-dir {REPO} --runtime-env-json '{runtime_env}' -- \
    python jobs/tokenize_imagenet.py {src} {out} --tokenizer s3://rj-bucket/ckpt/tokenizer --format both \
    --shard-size 5 > submit.log 2>&1
  rc=$?
  grep -q "No available agent" submit.log || break
  sleep 3
done
cat submit.log
{ray} stop --force >/dev/null 2>&1
exit $rc
"""
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c", script],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in r.stdout and "copied from rj-bucket/ckpt/tokenizer" in r.stdout
    rep = verify_dataset(str(out), source=str(src))
    assert rep.ok and rep.samples == 12, rep.problems
