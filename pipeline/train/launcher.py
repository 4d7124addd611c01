"""Launch training from outside: the ``deepspeed`` launcher command for N local ranks, and running it
under a supervisor that restarts a run whose rank died (``max_restarts``) from its newest complete
checkpoint. A job that refused its input (exit code 2: the job's one-line ``error: ...``, or a bad
flag) is never restarted: the same input would fail the same way."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import torch

from pipeline.train.cuda_env import sanitize_environ
from maskgit_core.errors import TrainingError

__all__ = ["jobs_dir", "deepspeed_command", "run_training", "stream_command", "error_lines", "free_port",
           "LOG_FILE", "INPUT_ERROR_EXIT"]

LOG_FILE = "train.log"
"""The launcher's output, appended under the run directory by ``run_training``."""

INPUT_ERROR_EXIT = 2
"""Exit code of a job that refused its input (jobs/train_mvtm.py's ``error: ...``, argparse): not retried."""

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a master port, a test server; another run may hold 29500)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jobs_dir() -> Path:
    """Where jobs/train_mvtm.py and the shipped DeepSpeed configs live."""
    import jobs

    return Path(jobs.__file__).resolve().parent


def deepspeed_command(*, data: str, out: str, nproc: int = 2, ds_config: str | None = None,
                      config: str | None = None, objective: str = "mvtm", resume: str | None = "auto",
                      overrides: list[str] | None = None, master_port: int = 29500) -> list[str]:
    """The `deepspeed` launcher command line that trains on ``nproc`` local ranks (CPU or GPU).
    ``resume``: 'auto', a checkpoint tag, or None to start fresh."""
    import shutil
    import sys

    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    jd = jobs_dir()
    if ds_config is None:
        ds_config = str(jd / ("ds_config.json" if torch.cuda.is_available() else "ds_config_cpu.json"))
    cmd = [launcher, "--num_gpus", str(nproc), "--master_port", str(master_port), str(jd / "train_mvtm.py"),
           "--ds-config", ds_config, "--data", str(data), "--out", str(out), "--objective", objective,
           "--resume", resume or "none"]
    if config:
        cmd += ["--config", config]
    return cmd + list(overrides or [])


def run_training(*, on_line: Callable[[str], None] | None = None, max_restarts: int = 0,
                 **kwargs: Any) -> dict[str, Any]:
    """Run ``deepspeed_command(**kwargs)`` to completion (OMP_NUM_THREADS=1 per rank on CPU) and
    return the summary the job prints.

    The launcher's output (stdout and stderr of every rank) is streamed line by line to
    ``on_line`` (default: this module's logger) and appended to ``<out>/train.log``.

    Supervisor: when the launcher exits non-zero for another reason than an input error (exit code
    ``INPUT_ERROR_EXIT``), e.g. a rank was killed or crashed, the run is started again with
    ``--resume auto`` (the newest complete checkpoint in ``out``), at most ``max_restarts`` times;
    each restart is announced, with the exit code and the last error lines, to ``on_line`` and
    train.log. On a failure that is not restarted raises ``TrainingError`` with the child's own error
    lines (``error_lines``) and the log's path."""
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    show = on_line or log.info
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")  # ranks write as they go, not when their buffer fills
    sanitize_environ(env)  # the launcher itself imports DeepSpeed's op builders too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(jobs_dir().parent), env.get("PYTHONPATH")]))
    log_path = Path(kwargs["out"]) / LOG_FILE
    restarts = 0
    while True:
        cmd = deepspeed_command(**kwargs)
        log.info("running %s (output in %s)", " ".join(cmd), log_path)
        rc, summaries, tail = stream_command(cmd, env=env, log_path=log_path, on_line=show)
        if rc == 0:
            break
        reason = f"exit {rc}{_rank_exit(tail)}: {' | '.join(error_lines(tail)) or 'no output'}"
        if rc == INPUT_ERROR_EXIT or restarts >= max_restarts:
            why = "" if rc == INPUT_ERROR_EXIT or not max_restarts else f" after {restarts} restarts"
            raise TrainingError(f"training failed{why} ({reason}); full output in {log_path}")
        restarts += 1
        note = (f"restart {restarts}/{max_restarts} from the newest complete checkpoint (--resume auto) "
                f"after {reason}")
        log.warning("%s", note)
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"# {note}\n")
        if on_line is not None:  # the terminal (the default, the logger, has it already)
            on_line(note)
        kwargs = {**kwargs, "resume": "auto"}
    for line in reversed(summaries):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise TrainingError(f"training exited 0 but printed no summary line; see {log_path}")


def stream_command(cmd: list[str], *, env: dict[str, str], log_path: Path, on_line: Callable[[str], None],
                   keep: int = 400) -> tuple[int, list[str], list[str]]:
    """Run ``cmd``; hand each line of its stdout and stderr to ``on_line`` as it comes and append it
    to ``log_path``. Returns (exit code, the last stdout lines that start with ``{`` (summaries),
    the last ``keep`` lines of stdout followed by the last ``keep`` of stderr). The two tails are kept
    apart because two threads read the pipes: in arrival order a stdout line can land between a
    stderr traceback's header and its exception line, and ``error_lines`` would take it for the error."""
    import subprocess
    import threading

    log_path.parent.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    summaries: deque[str] = deque(maxlen=8)
    out_tail: deque[str] = deque(maxlen=keep)
    err_tail: deque[str] = deque(maxlen=keep)
    with open(log_path, "a", encoding="utf-8") as logf:
        logf.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {' '.join(cmd)}\n")
        logf.flush()

        def pump(stream, tail: deque[str], sink: deque[str] | None) -> None:
            for raw in stream:
                line = raw.rstrip("\n")
                with lock:
                    logf.write(line + "\n")
                    logf.flush()
                    tail.append(line)
                    if sink is not None and line.startswith("{"):
                        sink.append(line)
                    on_line(line)

        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", bufsize=1)
        readers = [threading.Thread(target=pump, args=(proc.stdout, out_tail, summaries), daemon=True),
                   threading.Thread(target=pump, args=(proc.stderr, err_tail, None), daemon=True)]
        for t in readers:
            t.start()
        try:
            rc = proc.wait()
        except BaseException:  # Ctrl-C: stop the launcher (it stops its ranks), then re-raise
            proc.terminate()
            proc.wait()
            raise
        finally:
            for t in readers:
                t.join()
    return rc, list(summaries), list(out_tail) + list(err_tail)


_RANK_EXIT = re.compile(r"exits with return code = (-?\d+)")


def _rank_exit(lines: list[str]) -> str:
    """`` (a rank ended by SIGKILL)`` from the launcher's report of the first rank that failed; '' if none."""
    codes = [int(m.group(1)) for ln in lines for m in [_RANK_EXIT.search(ln)] if m]
    if not codes:
        return ""
    code = codes[0]
    if code < 0:
        try:
            return f" (a rank ended by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return f" (a rank exited with {code})"


_RANK_PREFIX = re.compile(r"^\[?rank\s?\d+\]?:\s?")


def error_lines(lines: list[str], *, limit: int = 4) -> list[str]:
    """The child's real error text: the exception line ending each Python traceback (``KeyError:
    'x'``) and the job's own ``error: ...`` lines, oldest first, duplicates (one per rank) dropped;
    the launcher's own ``CalledProcessError`` only when nothing else is found. Falls back to the
    last non-empty lines."""
    found: list[str] = []
    in_tb = False
    for raw in lines:
        line = _RANK_PREFIX.sub("", raw)
        if line.startswith("Traceback (most recent call last)"):
            in_tb = True
            continue
        if in_tb:
            if not line.strip() or line[0].isspace():
                continue  # frames and their source lines are indented
            found.append(line.strip())  # the first unindented line after the frames: ``SomeError: ...``
            in_tb = False
        elif line.lstrip().lower().startswith("error:"):
            found.append(line.strip())
    real = [ln for ln in found if "CalledProcessError" not in ln] or found
    unique = list(dict.fromkeys(real))
    if unique:
        return unique[-limit:]
    return [ln.strip() for ln in lines if ln.strip()][-limit:]
