"""Storage faults under the real tokenize job (one local Ray for the module): transient object-store
faults injected by a proxy in front of moto_server are retried (bounded, logged) and change nothing;
permanent ones fail fast with the URL and the reason; a full disk stops the job at the first failed
write with nothing half-written, and a rerun after space is freed completes exactly once."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from fault_proxy import FaultProxy
from maskgit_core.errors import StorageError
from pipeline.data.storage import s3_max_attempts
from pipeline.data.tokenize_job import JOB_DIR, TokenizeConfig, run_tokenize
from tokenize_fixtures import check_equal_to_reference, digests, make_job_data, s3  # noqa: F401 (fixture)

CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")
UNIT, BATCH = 3, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24 JPEGs in 4 class folders + a truncated and an empty file, and a debug tokenizer."""
    return make_job_data(tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("tok"), per_class=6,
                         classes=CLASSES, bad_kinds=("truncated", "zero_byte"))


@pytest.fixture(scope="module")
def ray_local(s3):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(data, out, **kw) -> TokenizeConfig:
    return TokenizeConfig(**{**dict(source=data["src"], out=str(out), tokenizer=data["tok"],
                                    formats=("parquet", "webdataset"), unit_size=UNIT, batch_size=BATCH), **kw})


@pytest.fixture(scope="module")
def ref(data, ray_local, tmp_path_factory):
    """An uninterrupted run on a local disk: the reference the faulted runs must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    res = run_tokenize(_cfg(data, out))
    return {"out": str(out), "result": res}


@pytest.mark.integration
def test_s3_transient_faults_are_retried_and_change_nothing(data, ref, s3, monkeypatch, caplog):
    import s3fs

    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}).mkdir("flaky")
    out = "s3://flaky/tokens"
    caplog.set_level(logging.WARNING, logger="pipeline.data.storage")
    with FaultProxy(s3, seed=1, every=4, max_faults=40, lifetime_s=240) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the driver writes; the workers only read local files
        res = run_tokenize(_cfg(data, out))
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    injected = sum(proxy.faults.values())
    assert injected >= 10 and set(proxy.faults) == {"503", "500", "drop"}, proxy.faults
    assert res.units_run == res.units_total == ref["result"].units_total
    check_equal_to_reference(data["src"], ref["out"], out)  # read back without faults
    retries = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert retries and all(f"of {s3_max_attempts()}" in m for m in retries)  # logged, with the bound
    assert any("HTTP 503 SlowDown" in m for m in retries) and any("HTTP 500" in m for m in retries)
    print(f"\nfaults injected {dict(proxy.faults)} in {proxy.n_requests} requests; "
          f"{len(retries)} retries logged; {res.manifest.counts}")
    # training's input: the token stream reads the shards back through faults, batch for batch as from disk
    with FaultProxy(s3, seed=2, every=3, max_faults=40, lifetime_s=120) as reader:
        monkeypatch.setenv("AWS_ENDPOINT_URL", reader.url)
        got = {fmt: _epoch(out, fmt) for fmt in ("parquet", "webdataset")}
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    assert sum(reader.faults.values()) >= 5, reader.faults
    for fmt, batches in got.items():
        want = _epoch(ref["out"], fmt)
        assert len(batches) == len(want) and all(
            torch.equal(a[k], b[k]) for a, b in zip(batches, want) for k in ("images", "labels", "sample_id"))
    print(f"stream read 2 formats through {dict(reader.faults)} faults in {reader.n_requests} requests")


def _epoch(root: str, fmt: str) -> list[dict]:
    """One epoch of the training stream over ``root`` (shuffled, 4 samples a batch)."""
    from pipeline.data.shards import read_manifest
    from pipeline.data.stream import StreamConfig, TokenStream

    tok = read_manifest(root).tokenizer
    cfg = StreamConfig(data=root, batch_size=4, format=fmt, block_size=4, shuffle_buffer=8, seed=3)
    stream = TokenStream(cfg, codebook_size=tok.codebook_size, latent_size=tok.latent_h, num_batches=6)
    return list(stream)


@pytest.mark.integration
def test_s3_permanent_faults_fail_fast_with_the_url_and_reason(data, s3, monkeypatch):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3})
    fs.mkdir("locked")
    with FaultProxy(s3, every=10**9, permanent=lambda method, path: (403, "AccessDenied") if method == "PUT"
                    else None) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        t0 = time.time()
        with pytest.raises(StorageError, match=r"cannot write s3://locked/tokens/_tokenize/job.json: .*Access Denied"):
            run_tokenize(_cfg(data, "s3://locked/tokens"))
        assert time.time() - t0 < 60
    puts = [e for e in proxy.log if e[1] == "PUT"]
    assert len(puts) == 1, puts  # a 403 is not retried
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    fs.invalidate_cache()
    assert fs.ls("locked") == []  # nothing half-written
    with pytest.raises(StorageError, match=r"cannot write s3://no-such-bucket/tokens/_tokenize/job.json: "
                                           r".*(bucket does not exist|NoSuchBucket)"):
        run_tokenize(_cfg(data, "s3://no-such-bucket/tokens"))
    # a store that never stops saying SlowDown: the retries end (2 botocore attempts x 5 s3fs calls)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with FaultProxy(s3, every=10**9, permanent=lambda method, path: (503, "SlowDown") if method == "PUT"
                    else None) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        t0 = time.time()
        with pytest.raises(StorageError, match=r"cannot write s3://locked/tokens/_tokenize/job.json: .*"
                                               r"after at most 2 attempts per request"):
            run_tokenize(_cfg(data, "s3://locked/tokens"))
        took = time.time() - t0
    puts = [e for e in proxy.log if e[1] == "PUT"]
    assert len(puts) == 2 * 5 and took < 60, (len(puts), took)
    print(f"\npermanent SlowDown: gave up after {len(puts)} PUTs in {took:.1f} s")


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {r.stderr.strip()}")


def _check_nothing_half_written(out: Path) -> int:
    """Every file present parses, no temp file is left, every unit record's shards exist with its
    checksums. Returns the number of unit records."""
    import hashlib

    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp-" in p.name]
    for p in files:
        if p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".parquet":
            pq.read_table(p)
        elif p.name.endswith(".tar.gz"):
            with tarfile.open(p) as t:
                [t.extractfile(m).read() for m in t.getmembers()]
    records = sorted((out / JOB_DIR / "units").glob("*.json"))
    for r in records:
        for s in json.loads(r.read_text())["shards"]:
            assert hashlib.sha256((out / s["path"]).read_bytes()).hexdigest() == s["sha256"], s["path"]
    return len(records)


@pytest.mark.integration
def test_disk_full_stops_at_the_first_failed_write_then_rerun_completes(data, ref, tmp_path):
    ref_bytes = sum(-(-p.stat().st_size // 4096) * 4096 for p in Path(ref["out"]).rglob("*") if p.is_file())
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "2m")
    try:
        out = mnt / "out"
        ballast = mnt / "ballast"
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize
        ballast.write_bytes(b"\0" * (free - ref_bytes // 2))  # room for about half of the run
        t0 = time.time()
        with pytest.raises(StorageError, match=rf"cannot write {out}/\S+: No space left on device") as err:
            run_tokenize(_cfg(data, out))
        raised_at = time.time()
        failed_after = raised_at - t0
        n_records = _check_nothing_half_written(out)
        # the failed write removed its temp file, which changed its folder's mtime: the error came at once
        last_write = max(p.stat().st_mtime for p in [out, *out.rglob("*")])
        assert raised_at - last_write < 10, "the job went on after the first failed write"
        assert 0 < n_records < ref["result"].units_total and not (out / "manifest.json").exists()
        print(f"\ndisk full after {failed_after:.1f} s, raised {raised_at - last_write:.2f} s after the last write, "
              f"{n_records}/{ref['result'].units_total} units kept: {err.value}")
        ballast.unlink()  # space freed: the same command finishes the run
        res = run_tokenize(_cfg(data, out))
        assert res.units_skipped == n_records and res.units_run == res.units_total - n_records
        check_equal_to_reference(data["src"], ref["out"], str(out))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
