"""The real `deepspeed` launcher on 2 CPU ranks (gloo): training, kill -9 + resume, 1-rank resume,
2 nodes x 1 rank on this machine with one node killed, and the `train --max-restarts` supervisor.

Launcher runs are combined to fit the budget: one uninterrupted 2-rank run is the reference
for the kill/resume trajectory check and the source checkpoint of the 1-rank resume.
The first launcher run on a fresh machine JIT-compiles DeepSpeed's shm comm op (~35-150 s).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import transformer
from pipeline.data.stream import StreamConfig, TokenStream
from pipeline.data.synthetic import write_synthetic_token_dataset
from pipeline.train import COMPLETE, export_run, find_resume, lr_factor
from pipeline.train.launcher import free_port
from pipeline.train.shm import SHM_DIR

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
DS_CPU = str(REPO / "jobs" / "ds_config_cpu.json")
STEPS = 120
COMMON = [f"steps={STEPS}", "warmup_steps=5", "save_every=10", "keep_last=20", "block_size=64",
          "shuffle_buffer=256", "class_dropout=0.1", 'model_overrides={"num_classes": 11}']


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), MKL_NUM_THREADS="1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _launch(nproc: int, out: Path, data: Path, extra: list[str], *, resume: str | None = None, wait: bool = True,
            port: int | None = None):
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(port or free_port()),
           str(REPO / "jobs" / "train_mvtm.py"), "--deepspeed_config", DS_CPU, "--data", str(data),
           "--out", str(out)]
    if resume:
        cmd += ["--resume", resume]
    cmd += COMMON + extra
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    if not wait:
        return proc
    text, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, text[-4000:]
    return text


def _summary(text: str) -> dict:
    return json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])


def _metrics(out: Path) -> dict[int, dict]:
    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        rows[r["step"]] = r  # the last occurrence (a resumed run rewrites steps after its checkpoint)
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens")
    write_synthetic_token_dataset(str(root), codebook_size=64, latent_size=4, num_classes=10,
                                  shard_sizes=[400, 300, 333, 500], formats=("parquet",), row_group=64)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> tuple[Path, dict]:
    """One uninterrupted 2-rank run: the reference of every check below."""
    out = tmp_path_factory.mktemp("ref")
    port = free_port()
    text = _launch(2, out, data, ["sample_every=60"], port=port)
    return out, {**_summary(text), "master_port": port}


def _shm_left(port: int) -> list[str]:
    """DeepSpeed's CPU all-reduce workspaces of the run on ``port`` still named in /dev/shm."""
    return sorted(p.name for p in SHM_DIR.glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


@pytest.mark.integration
def test_two_rank_training_loss_decreases_and_exports(reference):
    out, summary = reference
    rows = _metrics(out)
    assert sorted(rows) == list(range(1, STEPS + 1))
    losses = np.array([rows[s]["loss"] for s in range(1, STEPS + 1)])
    assert losses[-10:].mean() < losses[:10].mean() - 0.1, losses
    assert _shm_left(summary["master_port"]) == []  # ~69 MB of RAM per rank, left behind by every run before
    # every micro-step consumed the next W*B stream positions, in order
    for s in range(1, STEPS + 1):
        assert rows[s]["index_min"] == (s - 1) * 16 and rows[s]["index_max"] == s * 16 - 1
        assert rows[s]["world_size"] == 2
    model = transformer.load(summary["export"])
    assert model.config.num_classes == 11 and model.checkpoint_meta["null_label"] == 10
    assert model.checkpoint_meta["trained_steps"] == STEPS
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = EventAccumulator(str(out / "tb"), size_guidance={"images": 0}).Reload()
    assert {"train/loss", "train/masked_acc", "train/lr", "train/tokens_per_s", "train/samples_per_s"} <= set(
        tb.Tags()["scalars"])
    assert [e.step for e in tb.Images("samples")] == [60, 120]
    # the offline export (CLI train-export) of the final checkpoint gives the same weights
    again = transformer.load(export_run(out, out / "export-again"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert again.checkpoint_meta["null_label"] == 10


@pytest.mark.integration
def test_kill9_then_resume_matches_uninterrupted(reference, data, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "killed"
    port = free_port()
    proc = _launch(2, out, data, [], wait=False, port=port)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 25:
            break
        if proc.poll() is not None:
            pytest.fail("training finished before it could be killed: " + proc.stdout.read()[-2000:])
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(_metrics(out))
    assert killed_at < STEPS, "the run was not interrupted"
    assert _shm_left(port) == []  # names dropped once mapped: a killed run leaves no RAM behind either
    tag = find_resume(out / "checkpoints")
    assert tag is not None
    # a partially written checkpoint (no completion marker) is never picked
    partial = out / "checkpoints" / "step99999999"
    partial.mkdir()
    (partial / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert find_resume(out / "checkpoints") == tag
    text = _launch(2, out, data, [], resume="auto")
    assert f"resumed {tag}" in text
    ref, got = _metrics(ref_out), _metrics(out)
    resumed_from = int(tag.removeprefix("step"))
    assert resumed_from < killed_at or resumed_from == killed_at
    for s in range(resumed_from + 1, STEPS + 1):
        assert abs(got[s]["loss"] - ref[s]["loss"]) <= 1e-6, (s, got[s]["loss"], ref[s]["loss"])
        assert got[s]["sample_id_sum"] == ref[s]["sample_id_sum"]
    shutil.rmtree(partial)


def _wait_for_checkpoint_then(proc_alive, out: Path, *, rows: int = 25, timeout: float = 240) -> None:
    """Poll until ``out`` holds a complete checkpoint and ``rows`` metrics rows (bounded)."""
    metrics = out / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= rows and find_resume(out / "checkpoints"):
            return
        if not proc_alive():
            pytest.fail("training ended before it could be killed")
        time.sleep(0.01)
    pytest.fail(f"no checkpoint and {rows} metrics rows in {out} after {timeout} s")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _launch_nodes(out: Path, data: Path, hostfile: Path, logs: Path, *, resume: str | None = None):
    """Two `deepspeed` launchers on this machine, one per hostfile entry (--no_ssh --node_rank r)."""
    port = str(free_port())
    procs = []
    for r in (0, 1):
        cmd = [str(VENV_BIN / "deepspeed"), "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(r),
               "--master_addr", "127.0.0.1", "--master_port", port, str(REPO / "jobs" / "train_mvtm.py"),
               "--deepspeed_config", DS_CPU, "--data", str(data), "--out", str(out)]
        cmd += (["--resume", resume] if resume else []) + COMMON
        with open(logs / f"node{r}.log", "w") as f:
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    return procs


@pytest.mark.integration
def test_two_nodes_one_killed_then_resumed_matches_uninterrupted(reference, data, tmp_path):
    """2 nodes x 1 rank (two launchers, gloo over 127.0.0.1): node 1's launcher and rank are killed
    with SIGKILL after a checkpoint; node 0 is stopped too (bounded); both rerun with --resume auto.
    The stream and seeds depend only on (global rank, world size), so the losses equal the 2-local-rank
    reference bit for bit."""
    ref_out, _ = reference
    out = tmp_path / "nodes"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    first = tmp_path / "first"
    first.mkdir()
    procs = _launch_nodes(out, data, hostfile, first)
    try:
        _wait_for_checkpoint_then(lambda: all(p.poll() is None for p in procs), out)
        _kill_group(procs[1])
        try:  # node 0 loses its peer: gloo fails its next collective, or it would hang; bounded either way
            procs[0].wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    finally:
        for p in procs:
            _kill_group(p)
    killed_at = max(_metrics(out))
    assert killed_at < STEPS, "the run was not interrupted"
    tag = find_resume(out / "checkpoints")
    assert tag is not None and (out / "checkpoints" / tag / COMPLETE).is_file()
    again = tmp_path / "again"
    again.mkdir()
    procs = _launch_nodes(out, data, hostfile, again, resume="auto")
    try:
        rcs = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            _kill_group(p)
    logs = [(again / f"node{r}.log").read_text() for r in (0, 1)]
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert f"resumed {tag}" in logs[0] and "nnodes=2" in logs[1]
    ref, got = _metrics(ref_out), _metrics(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s]["world_size"] == 2
        assert got[s]["loss"] == ref[s]["loss"], (s, got[s]["loss"], ref[s]["loss"])
        assert got[s]["sample_id_sum"] == ref[s]["sample_id_sum"]
    assert _summary(logs[0])["step"] == STEPS


@pytest.mark.integration
def test_supervisor_restarts_after_a_rank_is_killed(reference, data, tmp_path):
    """`maskgit-pipeline train --max-restarts 2` on 2 local ranks; rank 1's python process is killed
    with SIGKILL after a checkpoint: one restart (logged with its reason), then the run completes with
    the uninterrupted run's losses."""
    import psutil

    ref_out, _ = reference
    out = tmp_path / "supervised"
    cmd = [sys.executable, "-m", "pipeline.cli", "train", str(data), "--out", str(out), "--nproc", "2",
           "--ds-config", DS_CPU, "--master-port", str(free_port()), "--max-restarts", "2"] + COMMON
    with open(tmp_path / "cli.log", "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_checkpoint_then(lambda: proc.poll() is None, out)
        ranks = [c for c in psutil.Process(proc.pid).children(recursive=True)
                 if "--local_rank=1" in c.cmdline() and any(a.endswith("train_mvtm.py") for a in c.cmdline())]
        assert len(ranks) == 1, [c.cmdline() for c in psutil.Process(proc.pid).children(recursive=True)]
        ranks[0].send_signal(signal.SIGKILL)
        rc = proc.wait(timeout=300)
    finally:
        _kill_group(proc)
    text = (tmp_path / "cli.log").read_text()
    assert rc == 0, text[-4000:]
    log_text = (out / "train.log").read_text()
    restarts = [ln for ln in log_text.splitlines() if ln.startswith("# restart ")]
    assert len(restarts) == 1 and restarts[0].startswith("# restart 1/2 from the newest complete checkpoint"), restarts
    assert "exit " in restarts[0] and restarts[0][2:] in text  # on the terminal too
    ref, got = _metrics(ref_out), _metrics(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        assert got[s]["loss"] == ref[s]["loss"], (s, got[s]["loss"], ref[s]["loss"])
        assert got[s]["sample_id_sum"] == ref[s]["sample_id_sum"]
    assert json.loads(text.strip().splitlines()[-1])["step"] == STEPS


@pytest.mark.integration
def test_two_rank_checkpoint_resumes_on_one_rank_at_same_sample(reference, data, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "one"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(ref_out / "checkpoints" / "step00000020", out / "checkpoints" / "step00000020")
    text = _launch(1, out, data, ["stop_after=3"], resume="auto")
    assert "resumed step00000020" in text
    rows = _metrics(out)
    seen = _metrics(ref_out)[20]["samples_seen"]
    assert seen == 20 * 16
    assert rows[21]["world_size"] == 1 and rows[21]["index_min"] == seen and rows[21]["index_max"] == seen + 7
    # the 1-rank run reads exactly the samples the stream defines at those global positions
    stream = TokenStream(StreamConfig(data=str(data), batch_size=8, block_size=64, shuffle_buffer=256),
                         codebook_size=64, latent_size=4)
    for s in (21, 22, 23):
        pos = np.arange(seen + (s - 21) * 8, seen + (s - 20) * 8)
        assert rows[s]["sample_id_sum"] == int(stream.batch_at(pos)["sample_id"].sum())


def _single(args: list[str], out: Path, data: Path, ds_config: str = DS_CPU) -> subprocess.CompletedProcess:
    env = dict(_env(), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [sys.executable, str(REPO / "jobs" / "train_mvtm.py"), "--deepspeed_config", ds_config, "--data", str(data),
           "--out", str(out), "steps=6", "save_every=3", "block_size=64", "shuffle_buffer=256"] + args
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_ar_objective_and_bad_shard_errors(data, tmp_path):
    """One process without the launcher: AR training on the same data (gradient accumulation 2, EMA),
    then the missing-shard error."""
    ds = json.loads(Path(DS_CPU).read_text())
    ds["gradient_accumulation_steps"] = 2
    (tmp_path / "ds_accum2.json").write_text(json.dumps(ds))
    r = _single(["--objective", "ar", "ema_decay=0.5"], tmp_path / "ar", data, str(tmp_path / "ds_accum2.json"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = _metrics(tmp_path / "ar")  # 2 micro-batches of 8 per optimizer step
    assert [rows[s]["samples_seen"] for s in range(1, 7)] == [16 * s for s in range(1, 7)]
    assert rows[3]["index_min"] == 32 and rows[3]["index_max"] == 47
    model = transformer.load(json.loads(r.stdout.strip().splitlines()[-1])["export"])
    assert model.config.causal and model.checkpoint_meta["objective"] == "ar"
    # with EMA on, the export holds the EMA weights, not the raw ones
    states = torch.load(tmp_path / "ar" / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt",
                        weights_only=True)
    w = model.state_dict()["word_embeddings.weight"]
    assert torch.equal(w, states["ema"]["word_embeddings.weight"])
    assert not torch.equal(w, states["module"]["word_embeddings.weight"])
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "parquet" / "unit-00001.parquet").unlink()
    r = _single([], tmp_path / "b1", broken)
    assert r.returncode == 2 and "unit-00001.parquet: shard listed in the manifest is missing" in r.stderr
    assert "skip_bad_shards=true" in r.stderr  # the skip-and-count path: tests/test_stream.py


def test_lr_schedule_and_resume_picker(tmp_path):
    f = [lr_factor(s, warmup=4, total=20, schedule="cosine") for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0] and abs(f[-1] - 0.5 * (1 + np.cos(np.pi * 15 / 16))) < 1e-12
    assert all(a >= b for a, b in zip(f[3:], f[4:]))
    assert lr_factor(100, warmup=4, total=20, schedule="constant") == 1.0
    for s, done in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"step{s:08d}"
        d.mkdir()
        if done:
            (d / COMPLETE).write_text("{}")
    assert find_resume(tmp_path) == "step00000020" and find_resume(tmp_path / "none") is None


@pytest.mark.slow
@pytest.mark.integration
def test_zero1_checkpoint_resumes_on_one_rank_through_universal_conversion(data, tmp_path):
    """ZeRO-1 partitions the optimizer state: 2 ranks -> ds_to_universal.py -> 1 rank (~60 s, slow)."""
    ds = json.loads(Path(DS_CPU).read_text())
    ds["zero_optimization"] = {"stage": 1}
    cfg = tmp_path / "ds_zero1.json"
    cfg.write_text(json.dumps(ds))
    src = tmp_path / "two"
    env = _env()
    base = [str(REPO / "jobs" / "train_mvtm.py"), "--deepspeed_config", str(cfg), "--data", str(data)]
    r = subprocess.run([str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), *base,
                        "--out", str(src), "steps=20", "save_every=10", "block_size=64", "shuffle_buffer=256"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    dst = tmp_path / "one"
    tag = "step00000010"
    import deepspeed

    script = Path(deepspeed.__file__).parent / "checkpoint" / "ds_to_universal.py"
    r = subprocess.run([sys.executable, str(script), "--input_folder", str(src / "checkpoints" / tag),
                        "--output_folder", str(dst / "checkpoints" / tag), "--inject_missing_state"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    shutil.copy(src / "checkpoints" / tag / COMPLETE, dst / "checkpoints" / tag / COMPLETE)
    r = subprocess.run([str(VENV_BIN / "deepspeed"), "--num_gpus", "1", "--master_port", str(free_port()), *base,
                        "--out", str(dst), "--resume", "auto", "steps=20", "save_every=10", "block_size=64",
                        "shuffle_buffer=256", "universal=true"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"resumed {tag}: step 10, stream at global sample 160 (saved by 2 ranks, now 1)" in r.stdout + r.stderr
    rows = _metrics(dst)
    assert rows[11]["index_min"] == 160 and rows[20]["samples_seen"] == 160 + 10 * 8
    assert transformer.load(dst / "export").config.num_classes == 10


@pytest.mark.parametrize("name,stage,bf16", [("ds_config", 1, True), ("ds_config_zero2", 2, True),
                                             ("ds_config_zero3", 3, True), ("ds_config_cpu", 0, False)])
def test_shipped_deepspeed_configs_parse_with_the_recipe(name, stage, bf16):
    from deepspeed.runtime.config import DeepSpeedConfig

    d = json.loads((REPO / "jobs" / f"{name}.json").read_text())
    d["train_batch_size"] = d["train_micro_batch_size_per_gpu"] * d["gradient_accumulation_steps"]
    c = DeepSpeedConfig(d)
    assert c.zero_optimization_stage == stage and bool(c.bfloat16_config.enabled) == bf16
    assert c.optimizer_name == "adamw" and c.gradient_clipping == 1.0
    assert c.optimizer_params["betas"] == [0.9, 0.96] and c.optimizer_params["weight_decay"] == 0.045
    # torch's AdamW everywhere (DeepSpeed's FusedAdam would be JIT-built with nvcc); fused on the GPU configs
    assert c.optimizer_params.get("torch_adam") is True
    assert c.optimizer_params.get("fused", False) == bf16


def test_shipped_train_config_loads():
    from pipeline.train.config import load_train_config

    cfg = load_train_config(str(REPO / "jobs" / "train_debug.json"), {"data": "x", "out": "y", "objective": "ar"})
    assert cfg.model_config().causal and cfg.steps == 40
    with pytest.raises(ValueError, match=r"unknown training config keys \['stepz'\]"):
        load_train_config(str(REPO / "jobs" / "train_debug.json"), {"data": "x", "out": "y", "stepz": 1})
    with pytest.raises(ValueError, match=r"lacks \['data'\]: pass --data DATASET"):
        load_train_config(str(REPO / "jobs" / "train_debug.json"), {"out": "y"})
