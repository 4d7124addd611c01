"""Shared pieces of the tokenize job tests: the loopback S3 server, a small job's data, and the
comparison of a run's durable output with an uninterrupted reference run."""
from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tokenizer
from pipeline.data.storage import join, url_to_fs
from pipeline.data.tokenize_job import JOB_DIR
from pipeline.data.verify import read_error_report, verify_dataset
from pipeline.train.launcher import free_port
from tokenize_data import add_bad_file, make_imagenet_tree

BIN = Path(sys.executable).parent
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.time() > deadline or (proc is not None and proc.poll() is not None):
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def s3():
    """A real S3 API on loopback (moto_server), with dummy credentials in the environment."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": endpoint, **S3_ENV}.items():
            mp.setenv(k, v)
        try:
            wait_for_port(port, proc)
        except RuntimeError:
            proc.kill()
            pytest.fail("moto_server did not start")
        yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def make_job_data(src: Path, tok: Path, *, per_class: int, classes, bad_kinds=()) -> dict:
    """Real JPEGs in ImageNet class folders (+ bad files of ``bad_kinds``) and a debug tokenizer."""
    make_imagenet_tree(src, per_class=per_class, classes=classes)
    bad = {kind: add_bad_file(src, kind) for kind in bad_kinds}
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), tok)
    return {"src": str(src), "tok": str(tok), "bad": bad}


def digests(out: str) -> dict[str, str]:
    """sha256 of every shard file and unit record (the run's durable output), local or s3://."""
    fs, root = url_to_fs(out)
    fs.invalidate_cache()
    files = []
    for sub in ("parquet", "wds", f"{JOB_DIR}/units"):
        try:
            files += fs.ls(join(root, sub), detail=False)
        except FileNotFoundError:
            pass
    return {f.rstrip("/")[len(root) + 1:]: hashlib.sha256(fs.cat_file(f)).hexdigest() for f in sorted(files)}


def check_equal_to_reference(source: str, ref_out: str, out: str) -> None:
    """``out`` verifies exactly once against ``source`` and equals the reference byte for byte."""
    rep = verify_dataset(str(out), source=source)
    assert rep.ok, rep.problems
    assert digests(str(out)) == digests(ref_out)
    assert read_error_report(str(out), "errors.jsonl") == read_error_report(ref_out, "errors.jsonl")
