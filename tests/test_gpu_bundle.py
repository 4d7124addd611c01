"""The bundle that carries Ray, DeepSpeed and the rest to the GPU machine (bench/gpu/make_bundle.sh),
built here for THIS machine's Python, unpacked into a fresh folder by bench/gpu/unpack_bundle.sh and
used from a stand-in of the GPU image (tests/gpu_image.py: a venv that has only the image's packages),
so that nothing the bundle lacks can come from this machine's environment: a tokenize job through
Ray, a 2-step `deepspeed` launch on the CPU, and bench/gpu/run_gpu.sh --dry-run end to end.

Needs PyPI (the bundle downloads Ray and the wheels; skipped without it). About 4 minutes on 2 CPU
cores (3 min 49 s to 4 min 14 s measured), most of it building the bundle (xz) and starting Ray and
DeepSpeed: slow and integration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpu_image import make_image
from pipeline.data.verify import verify_dataset
from pipeline.train.launcher import free_port
from tokenize_data import WNIDS
from tokenize_fixtures import make_job_data

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
GPU = REPO / "bench" / "gpu"
PYV = "%d.%d" % sys.version_info[:2]
CARRIED = ("ray", "deepspeed", "webdataset", "jsonschema", "pydantic", "hjson", "tensorboard")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra}


def _run(cmd, *, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    r = _run(["bash", GPU / "make_bundle.sh", "--python-version", PYV, "--out", out, "--cache", out / "cache"],
             timeout=900, PYTHON=sys.executable)
    if r.returncode != 0 and "is PyPI reachable" in r.stderr:
        pytest.skip(f"no PyPI here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stdout + r.stderr
    path = out / f"gpu-bundle-py{PYV}.tar.xz"
    assert path.stat().st_size < 45 * 2**20, "the bundle no longer leaves room for the repo in 64 MiB"
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    return make_image(tmp_path_factory.mktemp("image") / "venv")["python"]


def test_the_image_stand_in_lacks_what_the_bundle_carries(image):
    for name in CARRIED:
        r = _run([image, "-c", f"import {name}"], timeout=60)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, name
    r = _run([image, "-c", "import torch, pyarrow, pandas, PIL, grpc, aiohttp"], timeout=120)
    assert r.returncode == 0, r.stderr


def test_bundle_runs_the_tokenize_job_and_deepspeed_in_the_gpu_image(bundle, image, tmp_path):
    site = tmp_path / "site"
    r = _run(["bash", GPU / "unpack_bundle.sh", site, "--bundle", bundle], timeout=300, PYTHON=image)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("ray 2.60.0", "deepspeed 0.19.7", "webdataset", "pydantic", "jsonschema"):
        assert f"{name}" in r.stdout and "not the bundle" not in r.stdout, r.stdout
    path = f"{site}{os.pathsep}{REPO}"

    data = make_job_data(tmp_path / "src", tmp_path / "tok", per_class=4, classes=WNIDS[:2])
    out = tmp_path / "tokens"
    r = _run([image, REPO / "jobs" / "tokenize_imagenet.py", data["src"], out, "--tokenizer", data["tok"],
              "--device", "cpu", "--shard-size", "4"], timeout=300, PYTHONPATH=path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = verify_dataset(str(out), source=data["src"])
    assert rep.ok, rep.problems

    shards, run = tmp_path / "shards", tmp_path / "run"
    r = _run([image, GPU / "gpu_steps.py", "tokens", shards, "--tiny"], timeout=120, PYTHONPATH=path)
    assert r.returncode == 0, r.stderr
    r = _run([image, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", free_port(),
              REPO / "jobs" / "train_mvtm.py", "--ds-config", REPO / "jobs" / "ds_config_cpu.json",
              "--config", REPO / "jobs" / "train_debug.json", "--data", shards, "--out", run, "steps=2",
              "warmup_steps=1", "save_every=2", "log_every=1", 'model_overrides={"num_classes": 10}'],
             timeout=300, PYTHONPATH=path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_run_gpu_dry_run_goes_end_to_end_on_the_bundle(bundle, image, tmp_path):
    out = tmp_path / "out"
    r = _run(["bash", GPU / "run_gpu.sh", "--dry-run", "--bundle", bundle], timeout=600,
             PYTHON=image, OUT=str(out), WORK=str(tmp_path / "work"))
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    assert r.returncode == 0, summary + r.stderr + (out / "run.log").read_text()[-4000:]
    for step in ("bundle", "train_ds", "tokenize_ray", "train_mfu", "decode", "tokenize_gpu", "eval_rate",
                 "tokenize_compiled", "train_ds_compiled"):
        assert f"\n{step} rc=0 " in summary, summary
    for step in ("foundation", "official_jax", "train_ds_zero3", "precision"):  # precision: no scikit-image there
        assert f"\n{step} skipped: " in summary, summary
    assert json.loads((out / "train_ds.json").read_text())["summary"]["step"] == 2
    tok = json.loads((out / "tokenize_ray.json").read_text())
    assert (tok["samples"], tok["errors"]) == (32, 0)
    assert json.loads((out / "tokenize_gpu.json").read_text())["error"] == "no CUDA device"
    assert (out / "decode_gpu.json").exists()
