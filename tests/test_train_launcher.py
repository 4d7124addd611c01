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


def _fake_launcher(monkeypatch, script: str) -> list[dict]:
    """``deepspeed_command`` replaced by ``python -c script``; returns the kwargs of every launch."""
    calls: list[dict] = []

    def command(**kw):
        calls.append(kw)
        return [sys.executable, "-c", script]

    monkeypatch.setattr(launcher, "deepspeed_command", command)
    return calls


def test_supervisor_restarts_a_crashed_run_with_resume_auto(tmp_path, monkeypatch):
    """A child that dies like a killed rank (SIGKILL) on its first two launches, then succeeds."""
    count = tmp_path / "launches"
    script = (f"import json, os, pathlib, signal; p = pathlib.Path({str(count)!r}); "
              "n = int(p.read_text()) if p.exists() else 0; p.write_text(str(n + 1)); print('step', n, flush=True)\n"
              "if n < 2: print('[launch.py:330:sigkill_handler] [...] exits with return code = -9', flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)\n"
              "print(json.dumps({'step': 40}))")
    calls = _fake_launcher(monkeypatch, script)
    seen: list[str] = []
    out = tmp_path / "run"
    assert run_training(data="d", out=str(out), resume=None, max_restarts=2, on_line=seen.append) == {"step": 40}
    assert [c["resume"] for c in calls] == [None, "auto", "auto"]  # the first launch as asked, restarts resume
    notes = [ln for ln in seen if ln.startswith("restart ")]
    assert len(notes) == 2 and notes[0].startswith("restart 1/2 from the newest complete checkpoint")
    assert "after exit -9 (a rank ended by SIGKILL): " in notes[0]
    log_text = (out / LOG_FILE).read_text()
    assert log_text.count("# restart ") == 2 and "# restart 2/2" in log_text
    # one restart allowed, two failures: the second is raised with the count and the reason
    count.unlink()
    expected = r"training failed after 1 restarts \(exit -9 \(a rank ended by SIGKILL\): .*train\.log"
    with pytest.raises(TrainingError, match=expected):
        run_training(data="d", out=str(tmp_path / "run2"), max_restarts=1, on_line=seen.append)


def test_supervisor_does_not_retry_an_input_error(tmp_path, monkeypatch):
    """The job's one-line ``error: ...`` with exit code 2 (e.g. a bad config) fails at once."""
    script = "import sys; print('error: [rank 0] steps must be positive, got 0', file=sys.stderr); sys.exit(2)"
    calls = _fake_launcher(monkeypatch, script)
    with pytest.raises(TrainingError, match=r"^training failed \(exit 2: error: \[rank 0\] steps must be positive"):
        run_training(data="d", out=str(tmp_path / "run"), max_restarts=3, on_line=lambda line: None)
    assert len(calls) == 1
    assert "# restart" not in (tmp_path / "run" / LOG_FILE).read_text()
    with pytest.raises(ValueError, match="max_restarts must be >= 0, got -1"):
        run_training(data="d", out=str(tmp_path / "run"), max_restarts=-1)


@pytest.mark.integration
def test_cli_does_not_retry_a_config_error(tmp_path):
    """`train --max-restarts 2` with a real (fast) failing launch: the entry script refuses an invalid
    config before any model is built, exit 2, and the supervisor starts it once."""
    from click.testing import CliRunner

    from pipeline.cli import cli
    from pipeline.data.synthetic import write_synthetic_token_dataset

    data = tmp_path / "data"
    write_synthetic_token_dataset(str(data), codebook_size=64, latent_size=4, num_classes=10, shard_sizes=[32],
                                  formats=("parquet",), row_group=32)
    out = tmp_path / "run"
    cfg = Path(launcher.jobs_dir()) / "train_debug.json"
    r = CliRunner().invoke(cli, ["train", str(data), "--out", str(out), "--nproc", "1", "--config", str(cfg),
                                 "--master-port", str(free_port()), "--max-restarts", "2", 'steps=0'])
    assert r.exit_code == 2, r.output
    log_text = (out / LOG_FILE).read_text()
    assert log_text.count("\n# ") + log_text.startswith("# ") == 1, log_text  # one launch, no restart line
    assert "steps must be positive, got 0" in log_text and "restart" not in r.output


def test_a_stdout_line_arriving_inside_a_stderr_traceback_does_not_hide_the_error(tmp_path, monkeypatch):
    """stdout and stderr are read by two threads; a stdout line that arrives between a traceback's
    header and its exception line (forced here with sleeps) must not be taken for the exception."""
    script = ("import sys, time\n"
              "sys.stderr.write('Traceback (most recent call last):\\n'); sys.stderr.flush(); time.sleep(0.3)\n"
              "print('step 2 loss 3.1', flush=True); time.sleep(0.3)\n"
              "sys.stderr.write('  File \"<string>\", line 9, in <module>\\nKeyError: \\'late\\'\\n'); sys.exit(1)\n")
    monkeypatch.setattr(launcher, "deepspeed_command", lambda **kw: [sys.executable, "-c", script])
    with pytest.raises(TrainingError, match=r"exit 1: KeyError: 'late'\)"):
        run_training(data="d", out=str(tmp_path / "run"), on_line=lambda line: None)
