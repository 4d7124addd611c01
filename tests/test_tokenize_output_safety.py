"""The tokenize job touches only what it owns in its output: it removes only its own temp files (never a
user's file that merely has ``.tmp-`` in its name, never a live concurrent run's temp files) and refuses
an output location that already holds something else."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from maskgit_core.errors import ConfigError
from pipeline.data.storage import url_to_fs
from pipeline.data.tokenize_output import check_job as _check_job, done_units as _done_units
from pipeline.data.tokenize_progress import JOB_DIR


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_only_the_jobs_own_dead_temp_files_are_removed(tmp_path):
    out = tmp_path / "tokens"
    user = [_touch(out / "notes" / "report.tmp-final.docx"), _touch(out / "parquet" / "mine.tmp-1234"),
            _touch(out / "summary.json.tmp-99")]
    dead = _touch(out / "parquet" / f"unit-00000.parquet.tmp-{_dead_pid()}")
    dead_rec = _touch(out / JOB_DIR / "units" / f"unit-00000.json.tmp-{_dead_pid()}")
    live = _touch(out / "wds" / f"unit-00001.tar.gz.tmp-{os.getpid()}")  # a concurrent run still writing it
    shard = _touch(out / "parquet" / "unit-00000.parquet")
    _touch(out / JOB_DIR / "units" / "unit-00000.json",
           json.dumps({"unit": 0, "samples": 1, "shards": [{"path": "parquet/unit-00000.parquet"}],
                       "errors": []}).encode())
    fs, root = url_to_fs(str(out))
    done = _done_units(fs, root, 2)
    assert sorted(done) == [0]
    assert all(p.exists() for p in user + [live, shard])
    assert not dead.exists() and not dead_rec.exists()


def test_a_foreign_non_empty_output_is_refused_untouched(tmp_path):
    out = tmp_path / "photos"
    _touch(out / "holiday.jpg")
    fs, root = url_to_fs(str(out))
    with pytest.raises(ConfigError, match=r"photos is not empty \(1 entries.*holiday\.jpg.*nothing there was changed"):
        _check_job(fs, root, {"images": 3}, resume=False, out=str(out))
    assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_an_empty_or_new_output_starts_a_run_and_a_rerun_must_match(tmp_path):
    fs, root = url_to_fs(str(tmp_path / "new"))
    _check_job(fs, root, {"images": 3, "unit_size": 8}, resume=False, out="new")
    assert json.loads((tmp_path / "new" / JOB_DIR / "job.json").read_text()) == {"images": 3, "unit_size": 8}
    _check_job(fs, root, {"images": 3, "unit_size": 8}, resume=True, out="new")  # same settings: resumable
    with pytest.raises(ConfigError, match=r"different \['unit_size'\]"):
        _check_job(fs, root, {"images": 3, "unit_size": 16}, resume=False, out="new")


def test_a_run_from_before_tasks_resumes_as_one_task_per_unit(tmp_path):
    """A job.json without task_size (each unit was one task) matches task_size == unit_size only."""
    fs, root = url_to_fs(str(tmp_path / "old"))
    _check_job(fs, root, {"images": 3, "unit_size": 8}, resume=False, out="old")
    _check_job(fs, root, {"images": 3, "unit_size": 8, "task_size": 8}, resume=True, out="old")
    with pytest.raises(ConfigError, match=r"different \['task_size'\]"):
        _check_job(fs, root, {"images": 3, "unit_size": 8, "task_size": 4}, resume=True, out="old")
