"""`train`'s launcher wrapper: the child's output streams through a callback into <out>/train.log,
and a failure inside the job surfaces the job's own error line (e.g. a ``KeyError``), not just
lines containing ``error:``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from maskgit_core.errors import MaskGITError, TrainingError
from pipeline.train import launcher
from pipeline.train.launcher import LOG_FILE, error_lines, free_port, run_training

TRACEBACK = """\
[2026-01-01 00:00:00,000] [INFO] [launch.py:256:main] process 11 spawned with command: [...]
Traceback (most recent call last):
  File "/repo/jobs/train_mvtm.py", line 70, in <module>
    sys.exit(main())
  File "/repo/pipeline/data/shards.py", line 176, in from_dict
    return cls(tokenizer=TokenizerInfo.from_dict(d["tokenizer"]),
                                                 ~^^^^^^^^^^^^^
KeyError: 'tokenizer'
[rank1]: Traceback (most recent call last):
[rank1]:   File "/repo/jobs/train_mvtm.py", line 70, in <module>
[rank1]: KeyError: 'tokenizer'
Traceback (most recent call last):
  File "/venv/bin/deepspeed", line 6, in <module>
subprocess.CalledProcessError: Command '['python', '-u', 'jobs/train_mvtm.py']' returned non-zero exit status 1.
"""


def test_error_lines_keep_the_exception_line_of_each_traceback():
    assert error_lines(TRACEBACK.splitlines()) == ["KeyError: 'tokenizer'"]  # one per rank, deduplicated
    assert error_lines(["step 1", "error: [rank 0] data/: no manifest.json", "bye"]) == [
        "error: [rank 0] data/: no manifest.json"]
    assert error_lines(["a", "", "b", "c"], limit=2) == ["b", "c"]  # no traceback: the last lines
    only_launcher = TRACEBACK.splitlines()[-3:]
    assert error_lines(only_launcher)[0].startswith("subprocess.CalledProcessError")


def test_output_streams_to_the_callback_and_the_log_file(tmp_path, monkeypatch):
    """A child (standing in for the launcher) that prints, then dies with a KeyError."""
    script = ("import sys, json; print('step 1 loss 3.2', flush=True); print('warn', file=sys.stderr, flush=True);"
              "print(json.dumps({'steps': 1}), flush=True); {}['missing_key']")
    monkeypatch.setattr(launcher, "deepspeed_command", lambda **kw: [sys.executable, "-c", script])
    seen: list[str] = []
    with pytest.raises(TrainingError, match=r"KeyError: 'missing_key'.*train\.log") as exc:
        run_training(data="d", out=str(tmp_path / "run"), on_line=seen.append)
    assert str(tmp_path / "run" / LOG_FILE) in str(exc.value)
    assert {"step 1 loss 3.2", "warn", "KeyError: 'missing_key'"} <= set(seen)
    logged = (tmp_path / "run" / LOG_FILE).read_text().splitlines()
    assert logged[0].startswith("# ") and set(seen) == set(logged[1:])
    ok = "import json; print('hello'); print(json.dumps({'steps': 2, 'export': 'x'}))"
    monkeypatch.setattr(launcher, "deepspeed_command", lambda **kw: [sys.executable, "-c", ok])
    assert run_training(data="d", out=str(tmp_path / "run"), on_line=seen.append) == {"steps": 2, "export": "x"}
    assert (tmp_path / "run" / LOG_FILE).read_text().count("\n# ") == 1  # appended: two runs, two headers


@pytest.mark.integration
def test_real_launch_failing_inside_the_job_surfaces_its_error(tmp_path):
    """The deepspeed launcher on 1 CPU rank, on a data dir whose manifest lacks its tokenizer
    (~20-45 s on 2 cores: the launcher and one rank start, then the job fails reading the data)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"kind": "maskgit-token-dataset", "format_version": 1}))
    out = tmp_path / "run"
    seen: list[str] = []
    with pytest.raises(MaskGITError) as exc:
        run_training(data=str(data), out=str(out), nproc=1, config=str(Path(launcher.jobs_dir()) /
                     "train_debug.json"), master_port=free_port(), on_line=seen.append)
    assert "KeyError: 'tokenizer'" in str(exc.value) and str(out / LOG_FILE) in str(exc.value)
    assert "KeyError: 'tokenizer'" in (out / LOG_FILE).read_text()
    assert any("KeyError: 'tokenizer'" in line for line in seen)
