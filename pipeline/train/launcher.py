"""Launch training from outside: the ``deepspeed`` launcher command for N local ranks, and running it."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from maskgit_core.errors import ConfigError

__all__ = ["jobs_dir", "deepspeed_command", "run_training", "free_port"]

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


def run_training(**kwargs: Any) -> dict[str, Any]:
    """Run ``deepspeed_command(**kwargs)`` to completion (OMP_NUM_THREADS=1 per rank on CPU);
    return the summary the job prints. Raises ValueError with the job's last error line on failure."""
    import subprocess

    cmd = deepspeed_command(**kwargs)
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(jobs_dir().parent), env.get("PYTHONPATH")]))
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    if proc.returncode != 0:
        errors = [ln for ln in lines if "error:" in ln] or lines[-5:]
        raise ConfigError(f"training failed (exit {proc.returncode}): {errors[-1] if errors else ''}")
    return json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
