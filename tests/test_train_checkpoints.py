"""Training checkpoints: atomic tags, pruning by step, resume checks, and no code execution from a
run directory someone hands you (train-export and train --resume)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskgit_core.errors import CheckpointError
from pipeline.data.synthetic import write_synthetic_token_dataset
from pipeline.train.checkpoint import (COMPLETE, check_loadable_safely, commit_tag, complete_tags, find_resume,
                                       prune, resolve_resume, settings_difference, tag_name, temp_tag)
from pipeline.train.export import export_run
from pipeline.train.launcher import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


class _Payload:
    """Unpickling this runs ``touch marker``: a stand-in for an attacker's shell command."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_pt(path: Path, marker: Path) -> None:
    torch.save({"optimizer_state_dict": {"loss_scaler": _Payload(marker)}, "ds_version": "0.0"}, path)


def _tag_dir(root: Path, step: int, *, complete: bool = True) -> Path:
    d = root / tag_name(step)
    d.mkdir(parents=True)
    torch.save({"module": {"w": torch.zeros(2)}}, d / "mp_rank_00_model_states.pt")
    if complete:
        (d / COMPLETE).write_text(json.dumps({"step": step}))
    return d


def test_the_payload_is_live(tmp_path):
    """The hostile file below really runs its command when unpickled, so 'no marker' means 'not run'."""
    marker = tmp_path / "ran"
    _hostile_pt(tmp_path / "x.pt", marker)
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert marker.exists()


def test_safe_check_refuses_a_pickle_payload_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    d = _tag_dir(tmp_path, 3)
    _hostile_pt(d / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    with pytest.raises(CheckpointError, match=r"optim_states\.pt: refusing to load .*GLOBAL posix\.system"):
        check_loadable_safely(d)
    assert not marker.exists()


def test_train_export_of_a_crafted_run_directory_runs_no_code(tmp_path):
    """train-export of a ZeRO-1 run directory used to hand every *.pt file to DeepSpeed's zero-to-fp32
    helper, which unpickles them: a crafted optimizer file ran a shell command."""
    run, marker = tmp_path / "run", tmp_path / "ran"
    (run / "checkpoints").mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"data": str(tmp_path / "tokens"), "out": str(run)}))
    d = run / "checkpoints" / tag_name(10)
    d.mkdir()
    torch.save({"module": {}, "ds_config": {"zero_optimization": {"stage": 1}}}, d / "mp_rank_00_model_states.pt")
    _hostile_pt(d / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    (d / COMPLETE).write_text("{}")
    with pytest.raises(CheckpointError, match="refusing to load"):
        export_run(run, tmp_path / "export")
    assert not marker.exists()
    assert not (tmp_path / "export").exists()


def test_complete_tags_sort_by_step_and_ignore_partial_saves(tmp_path):
    _tag_dir(tmp_path, 9)
    _tag_dir(tmp_path, 100000000)  # 9 digits: sorts before step00000009 by name
    _tag_dir(tmp_path, 50, complete=False)
    (tmp_path / temp_tag(70)).mkdir()
    assert complete_tags(tmp_path) == [(9, tag_name(9)), (100000000, tag_name(100000000))]
    assert find_resume(tmp_path) == tag_name(100000000)


def test_prune_never_deletes_the_new_checkpoint_or_newer_ones(tmp_path):
    """keep_last used to sort by name over the whole directory: a restarted run next to higher-numbered
    tags deleted the checkpoint it had just written."""
    for s in (10, 20, 30, 900):
        _tag_dir(tmp_path, s)
    assert prune(tmp_path, current_step=30, keep_last=2) == [tag_name(10)]
    assert [t for _, t in complete_tags(tmp_path)] == [tag_name(20), tag_name(30), tag_name(900)]


def test_commit_replaces_an_existing_tag_and_writes_the_marker_last(tmp_path):
    old = _tag_dir(tmp_path, 5)
    (old / "stale.pt").write_bytes(b"old")
    tmp = tmp_path / temp_tag(5)
    tmp.mkdir()
    torch.save({"module": {"w": torch.ones(2)}}, tmp / "mp_rank_00_model_states.pt")
    final = commit_tag(tmp_path, 5, {"step": 5, "settings": {"seed": 1}})
    assert not tmp.exists() and not (final / "stale.pt").exists()
    assert json.loads((final / COMPLETE).read_text())["settings"] == {"seed": 1}
    assert torch.load(final / "mp_rank_00_model_states.pt", weights_only=True)["module"]["w"].sum() == 2


def test_explicit_resume_needs_a_complete_checkpoint(tmp_path):
    _tag_dir(tmp_path, 10)
    _tag_dir(tmp_path, 20, complete=False)
    assert resolve_resume(tmp_path, "auto") == (tmp_path, tag_name(10))
    assert resolve_resume(tmp_path, tag_name(10)) == (tmp_path, tag_name(10))
    assert resolve_resume(tmp_path, str(tmp_path / tag_name(10))) == (tmp_path, tag_name(10))
    with pytest.raises(CheckpointError, match=r"step00000020 is not a complete checkpoint.*step00000010"):
        resolve_resume(tmp_path, tag_name(20))
    assert resolve_resume(tmp_path / "none", "auto") is None


def test_settings_difference_names_each_changed_setting():
    saved = {"seed": 0, "data": "a", "model": {"depth": 2, "num_classes": 11}}
    now = {"seed": 1, "data": "a", "model": {"depth": 2, "num_classes": 12}, "format": "parquet"}
    assert settings_difference(saved, now) == ["model.num_classes: checkpoint 11, now 12", "seed: checkpoint 0, now 1"]


def test_the_stream_order_settings_are_run_settings():
    """partitions, block_size and shuffle_buffer decide which samples a resumed run reads next: a resume
    with other values would repeat some samples of the epoch and skip others, so it is refused by name."""
    from pipeline.train.config import TrainConfig
    from pipeline.train.loop import run_settings

    cfg = TrainConfig(data="d", out="o")
    saved = run_settings(cfg, cfg.model_config())
    assert saved["stream"] == {"block_size": cfg.block_size, "shuffle_buffer": cfg.shuffle_buffer,
                               "partitions": cfg.partitions}
    other = TrainConfig(data="d", out="o", partitions=cfg.partitions // 2)
    assert settings_difference(saved, run_settings(other, other.model_config())) == [
        f"stream.partitions: checkpoint {cfg.partitions}, now {cfg.partitions // 2}"]


# ------------------------------------------------------------------ the real launcher (one rank, gloo)

def _launch(out: Path, data: Path, *extra: str, resume: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "1", "--master_port", str(free_port()),
           str(REPO / "jobs" / "train_mvtm.py"), "--deepspeed_config", str(REPO / "jobs" / "ds_config_cpu.json"),
           "--data", str(data), "--out", str(out)]
    if resume:
        cmd += ["--resume", resume]
    cmd += ["steps=4", "save_every=2", "block_size=64", "shuffle_buffer=256", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_resume_refuses_other_settings_foreign_files_and_a_silent_restart(tmp_path):
    data = tmp_path / "tokens"
    write_synthetic_token_dataset(str(data), codebook_size=64, latent_size=4, num_classes=10, shard_sizes=[300],
                                  formats=("parquet",), row_group=64)
    out = tmp_path / "run"
    first = _launch(out, data, "stop_after=2")
    assert first.returncode == 0, first.stdout[-3000:]
    assert [t for _, t in complete_tags(out / "checkpoints")] == [tag_name(2)]
    assert not list((out / "checkpoints").glob(temp_tag(2)))

    r = _launch(out, data, resume="none")  # a fresh start into a directory holding checkpoints
    assert r.returncode == 2 and "already holds checkpoints (newest step00000002) and --resume is none" in r.stderr, r.stderr[-2000:]
    r = _launch(out, data, "seed=1", resume="auto")
    assert r.returncode == 2 and "seed: checkpoint 0, now 1" in r.stderr, r.stderr[-2000:]

    marker = tmp_path / "ran"
    _hostile_pt(out / "checkpoints" / tag_name(2) / "zero_pp_rank_0_mp_rank_00_optim_states.pt", marker)
    r = _launch(out, data, resume="auto")
    assert r.returncode == 2 and "refusing to load" in r.stderr, r.stderr[-2000:]
    assert not marker.exists()

    (out / "checkpoints" / tag_name(2) / "zero_pp_rank_0_mp_rank_00_optim_states.pt").unlink()
    r = _launch(out, data, resume="auto")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed step00000002: step 2" in r.stdout + r.stderr
    assert [t for _, t in complete_tags(out / "checkpoints")] == [tag_name(2), tag_name(4)]
