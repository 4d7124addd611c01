"""The Ray Data tokenize job on a real local Ray (one per module): exactly once with bad input,
rerun/resume, SIGKILL of the driver and of a worker, s3:// in and out via moto_server, inspect."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenizer
from tokenizer.preprocess import preprocess_bytes
from pipeline.data.shards import read_manifest, read_shard
from pipeline.data.sources import ItemReader, list_source
from pipeline.data import tokenize_job
from pipeline.data.tokenize_job import (JOB_DIR, STATUS_FILE, TokenizeConfig, auto_task_size, load_tokenizer,
                                        plan_resources,
                                        plan_tasks, plan_units, run_tokenize)
from pipeline.data.tokenize_output import UnitAssembler
from pipeline.data.verify import read_error_report, verify_dataset
from tokenize_data import BAD_KINDS, CONVERTIBLE, add_bad_file, make_imagenet_tree
from tokenize_fixtures import check_equal_to_reference, digests as _digests, s3  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")
UNIT, BATCH = 3, 4


@pytest.fixture(scope="module")
def ray_address(s3):
    """One local Ray for the module, started after the S3 env so its workers see it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 real JPEGs in 4 ImageNet class folders, one of each bad kind, and a debug tokenizer."""
    root = tmp_path_factory.mktemp("src")
    make_imagenet_tree(root, per_class=10, classes=CLASSES)
    bad = {kind: add_bad_file(root, kind) for kind in BAD_KINDS}
    tok = tmp_path_factory.mktemp("tok")
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), tok)
    return {"src": str(root), "tok": str(tok), "bad": bad}


def _cfg(data, out, **kw) -> TokenizeConfig:
    base = dict(source=data["src"], out=str(out), tokenizer=data["tok"], formats=("parquet", "webdataset"),
                unit_size=UNIT, batch_size=BATCH)
    base.update(kw)
    return TokenizeConfig(**base)


@pytest.fixture(scope="module")
def ref(data, ray_address, tmp_path_factory):
    """An uninterrupted run: the reference the interrupted runs must equal."""
    out = tmp_path_factory.mktemp("ref") / "out"
    events = []
    res = run_tokenize(_cfg(data, out), progress=events.append)
    return {"out": str(out), "result": res, "events": events}


@pytest.mark.integration
def test_job_exactly_once_and_bad_inputs(data, ref):
    out, res = ref["out"], ref["result"]
    rep = verify_dataset(out, source=data["src"])
    assert rep.ok, rep.problems
    m = read_manifest(out)
    n_listed = 40 + len(BAD_KINDS)
    assert m.counts == {"images": n_listed, "samples": rep.samples, "errors": rep.errors}
    assert rep.samples == 40 + len(CONVERTIBLE) and rep.source_images == n_listed
    assert m.formats == ["parquet", "webdataset"] and res.units_run == res.units_total
    errors = dict(read_error_report(out, m.error_report))
    keys = set()
    for s in m.shards_of("parquet"):
        keys |= set(read_shard(out, s, m.tokenizer).keys)
    for kind, key in data["bad"].items():
        if kind in CONVERTIBLE:
            assert key in keys and key not in errors, kind
        else:
            assert key in errors and key not in keys and errors[key], kind
    assert "no class folder" in errors[data["bad"]["no_class_folder"]]
    assert "empty file" in errors[data["bad"]["zero_byte"]]
    assert "aspect ratio above 16:1" in errors[data["bad"]["thin_png"]]
    assert "aspect ratio above 16:1" in errors[data["bad"]["very_thin_png"]]
    assert "not a regular file (a FIFO)" in errors[data["bad"]["fifo"]]
    assert "not a regular file (a character device)" in errors[data["bad"]["dev_zero_link"]]
    assert [c["id"] for c in m.classes] == list(CLASSES) and m.classes[0]["name"].startswith("tench")
    # manifest.json is written last
    shard_mtimes = [p.stat().st_mtime for p in Path(out).glob("*/*") if p.is_file()]
    assert (Path(out) / "manifest.json").stat().st_mtime >= max(shard_mtimes)


@pytest.mark.integration
def test_shard_tokens_equal_the_tokenizer_on_the_preprocessed_images(data, ref):
    """Shard contents = encoding each unit's crops directly (same fixed chunks), label per key."""
    m = read_manifest(ref["out"])
    model = tokenizer.load(data["tok"])
    lst = list_source(data["src"])
    reader = ItemReader()
    for unit, items in enumerate(plan_units(lst.items, UNIT)):
        rows = read_shard(ref["out"], m.shards_of("webdataset")[unit], m.tokenizer)
        ok = [(it, preprocess_bytes(reader.read(it), 32)) for it in items if it.key in set(rows.keys)]
        assert [it.key for it, _ in ok] == rows.keys and [it.label for it, _ in ok] == rows.labels.tolist()
        if not ok:
            continue
        x = torch.from_numpy(np.concatenate([v for _, v in ok])).float() / 255.0
        with torch.inference_mode():
            ids = torch.cat([model.encode(c) for c in x.split(BATCH)])
        assert np.array_equal(rows.tokens[:, 0], ids.numpy())


@pytest.mark.integration
def test_progress_is_reported_per_unit_and_in_the_status_file(data, ref):
    ev, res = ref["events"], ref["result"]
    n_images = len(list_source(data["src"]).items)  # listing errors are in no unit
    assert [e.units_done for e in ev] == list(range(res.units_total + 1)) + [res.units_total]  # start, units, end
    assert [e.state for e in ev] == ["running"] * (res.units_total + 1) + ["done"]
    assert all(e.units_total == res.units_total and e.images_total == n_images for e in ev)
    assert ev[0].images_done == 0 and ev[0].images_per_s is None and ev[0].eta_s is None
    assert all(a.images_done < b.images_done for a, b in zip(ev[:-2], ev[1:-1]))
    assert all(e.images_per_s > 0 and e.eta_s >= 0 for e in ev[1:])
    assert ev[-1].images_done == n_images and ev[-1].eta_s == 0
    status = json.loads((Path(ref["out"]) / STATUS_FILE).read_text())
    assert {k: v for k, v in status.items() if k != "updated"} == dataclasses.asdict(ev[-1])
    assert status["updated"].endswith("Z")


@pytest.mark.integration
def test_rerun_skips_finished_units_and_checks_settings(data, ref, tmp_path):
    before = _digests(ref["out"])
    res = run_tokenize(_cfg(data, ref["out"], resume=True))
    assert res.units_run == 0 and res.units_skipped == res.units_total
    assert _digests(ref["out"]) == before
    with pytest.raises(ValueError, match="different.*unit_size"):
        run_tokenize(_cfg(data, ref["out"], unit_size=UNIT + 1))
    with pytest.raises(ValueError, match="no tokenize run to resume"):
        run_tokenize(_cfg(data, tmp_path / "empty", resume=True))


def _driver(data, out, address) -> subprocess.Popen:
    cmd = [str(BIN / "maskgit-pipeline"), "tokenize", data["src"], str(out), "--tokenizer", data["tok"],
           "--format", "both", "--shard-size", str(UNIT), "--batch-size", str(BATCH), "--ray-address", address]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _records(out) -> int:
    d = Path(out) / JOB_DIR / "units"
    return len(list(d.glob("*.json"))) if d.is_dir() else 0


def _wait_for(pred, proc, timeout=120.0) -> None:
    deadline = time.time() + timeout
    while not pred():
        if proc.poll() is not None or time.time() > deadline:
            return
        time.sleep(0.02)


def _check_equal_to_reference(data, ref, out) -> None:
    check_equal_to_reference(data["src"], ref["out"], out)


@pytest.mark.integration
def test_sigkill_driver_at_a_random_point_then_rerun(data, ref, ray_address, tmp_path):
    seed = int(os.environ.get("KILL_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    n_units = ref["result"].units_total
    out = tmp_path / "out"
    proc = _driver(data, out, ray_address)
    target = rng.randint(0, n_units // 2)
    if target == 0:
        time.sleep(rng.uniform(0.5, 4.0))  # anywhere in start-up, listing or the first units
    else:
        _wait_for(lambda: _records(out) >= target, proc)
    killed_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _records(out)
    res = run_tokenize(_cfg(data, out))  # the rerun (no --resume needed)
    assert res.units_skipped == done_before, f"seed {seed}"
    if killed_running:
        assert not (out / "manifest.json").exists() or done_before == n_units or res.units_run > 0
    _check_equal_to_reference(data, ref, out)


def _encoder_pids() -> list[int]:
    import psutil

    pids = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EncodeTasks" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


@pytest.mark.integration
def test_sigkill_worker_then_rerun(data, ref, ray_address, tmp_path):
    out = tmp_path / "out"
    proc = _driver(data, out, ray_address)
    _wait_for(lambda: _records(out) >= 1 and _encoder_pids(), proc)
    victims = _encoder_pids()
    assert victims and proc.poll() is None, "the job finished before a worker could be killed"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=180)  # Ray restarts the actor and retries its unit, or the driver fails
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    res = run_tokenize(_cfg(data, out))
    assert res.units_run + res.units_skipped == res.units_total
    if proc.returncode == 0:  # Ray restarted the actor and retried its unit: the first run finished
        assert res.units_run == 0
    _check_equal_to_reference(data, ref, out)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """24 good JPEGs (no decode errors) and the debug tokenizer: 2 units of 12 images."""
    root = tmp_path_factory.mktemp("clean")
    make_imagenet_tree(root, per_class=6, classes=CLASSES)
    tok = tmp_path_factory.mktemp("tok-clean")
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), tok)
    return {"src": str(root), "tok": str(tok)}


@pytest.fixture(scope="module")
def one_task(clean, ray_address, tmp_path_factory):
    """Units of 12 images, each encoded as one task (batch 2): the reference for the task tests."""
    out = tmp_path_factory.mktemp("one-task") / "out"
    run_tokenize(_cfg(clean, out, unit_size=12, task_size=12, batch_size=2))
    return str(out)


@pytest.mark.integration
def test_a_unit_of_several_tasks_writes_the_same_bytes_as_one_task(clean, one_task, tmp_path):
    out = tmp_path / "out"
    res = run_tokenize(_cfg(clean, out, unit_size=12, task_size=4, batch_size=2))
    assert res.units_total == 2 and res.manifest.extra["task_size"] == 4
    assert json.loads((out / JOB_DIR / "job.json").read_text())["task_size"] == 4
    check_equal_to_reference(clean["src"], one_task, str(out))
    with pytest.raises(ValueError, match=r"different \['task_size'\]"):
        run_tokenize(_cfg(clean, out, unit_size=12, task_size=6, batch_size=2))


class _StopAfter(UnitAssembler):
    """Stops the driver (as a kill would) when the ``limit``-th task arrives, before it is joined."""

    limit = 0

    def add(self, row):
        type(self).limit -= 1
        if type(self).limit < 0:
            raise KeyboardInterrupt("stopped by the test")
        return super().add(row)


@pytest.mark.integration
@pytest.mark.parametrize("tasks_before_stop", [1, 4])
def test_stopped_inside_a_unit_then_rerun(clean, one_task, tmp_path, monkeypatch, tasks_before_stop):
    """Stopped with 1 task of unit 0 (or all 3 of unit 0 and 1 of unit 1) joined: the open unit's
    tasks are lost, the rerun redoes that unit only and equals the uninterrupted run byte for byte."""
    out = tmp_path / "out"
    monkeypatch.setattr(_StopAfter, "limit", tasks_before_stop)
    monkeypatch.setattr(tokenize_job, "UnitAssembler", _StopAfter)
    with pytest.raises(KeyboardInterrupt):
        run_tokenize(_cfg(clean, out, unit_size=12, task_size=4, batch_size=2))
    monkeypatch.undo()
    assert _records(out) == tasks_before_stop // 3 and not (out / "manifest.json").exists()
    res = run_tokenize(_cfg(clean, out, unit_size=12, task_size=4, batch_size=2))
    assert (res.units_skipped, res.units_run) == (tasks_before_stop // 3, 2 - tasks_before_stop // 3)
    check_equal_to_reference(clean["src"], one_task, str(out))


def test_auto_task_size_fits_the_crop_budget():
    kw = dict(unit_size=12288, batch_size=32)
    assert auto_task_size(image_size=32, n_views=1, **kw) == 12288  # 21,824 fit: capped at the unit
    assert auto_task_size(image_size=256, n_views=1, **kw) == 320  # 341 fit (64 MiB / 192 KiB)
    assert auto_task_size(image_size=256, n_views=2, **kw) == 160
    assert auto_task_size(image_size=256, n_views=10, **kw) == 32  # 34 fit
    assert auto_task_size(image_size=512, n_views=10, **kw) == 32  # 8 fit: at least one batch
    assert auto_task_size(image_size=256, n_views=1, unit_size=100, batch_size=32) == 100  # at most the unit
    assert auto_task_size(image_size=32, n_views=1, unit_size=8, batch_size=32) == 8
    assert auto_task_size(image_size=256, n_views=1, budget=10 * 2**20, **kw) == 32  # 53 -> multiple of 32


def test_plan_tasks_start_at_multiples_of_the_task_size():
    assert plan_tasks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_tasks(8, 8) == [(0, 8)] and plan_tasks(3, 8) == [(0, 3)]
    assert plan_tasks(0, 4) == [(0, 0)]


@pytest.mark.integration
def test_s3_tar_of_tars_in_and_out_with_hflip(data, ray_address, s3, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3})
    fs.mkdir("tok-bucket")
    outer = tmp_path / "ILSVRC2012_img_train.tar"
    train = Path(data["src"]) / "train"
    with tarfile.open(outer, "w") as o:
        for wnid in CLASSES[:2]:
            inner = tmp_path / f"{wnid}.tar"
            with tarfile.open(inner, "w") as t:
                for f in sorted((train / wnid).glob(f"{wnid}_[0-9]*.JPEG"))[:5]:
                    t.add(f, arcname=f.name)
            o.add(inner, arcname=inner.name)
    fs.put(str(outer), "tok-bucket/imagenet/ILSVRC2012_img_train.tar")
    src, out = "s3://tok-bucket/imagenet/ILSVRC2012_img_train.tar", "s3://tok-bucket/tokens"
    # the tokenizer from the bucket too (a parent holding tokenizer/), as a `ray job submit` run reads it
    fs.put(data["tok"], "tok-bucket/ckpt/tokenizer", recursive=True)
    with pytest.raises(ValueError, match="no tokenizer checkpoint here"):
        load_tokenizer("s3://tok-bucket/nothing")
    res = run_tokenize(TokenizeConfig(source=src, out=out, tokenizer="s3://tok-bucket/ckpt", augmentations=("hflip",),
                                      unit_size=4, batch_size=BATCH, search="faiss"))
    assert res.manifest.source["layout"] == "tar-of-tars" and res.manifest.counts["samples"] == 10
    local_sha = json.loads((Path(data["tok"]) / "config.json").read_text())["weights_sha256"]
    assert res.manifest.tokenizer.checkpoint_sha256 == local_sha
    rep = verify_dataset(out, source=src)
    assert rep.ok, rep.problems
    m = read_manifest(out)
    rows = read_shard(out, m.shards_of("parquet")[0], m.tokenizer)
    assert m.tokenizer.augmentations == ("center", "center_hflip") and rows.tokens.shape[1:] == (2, 8, 8)
    assert fs.exists("tok-bucket/tokens/manifest.json") and fs.exists("tok-bucket/tokens/errors.jsonl")


@pytest.mark.integration
def test_verify_catches_a_corrupt_shard_and_cli_exit_codes(data, ref, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(ref["out"], bad)
    p = sorted((bad / "parquet").glob("*.parquet"))[1]
    p.write_bytes(p.read_bytes()[:-10] + b"0123456789")
    rep = verify_dataset(str(bad))
    assert not rep.ok and any("corrupt" in x for x in rep.problems)
    mp = [str(BIN / "maskgit-pipeline")]
    r = subprocess.run(mp + ["verify", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1 and "FAILED" in r.stdout
    r = subprocess.run(mp + ["verify", ref["out"], "--source", data["src"]], capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    n = len(read_manifest(ref["out"]).shards)
    assert f"verify: {n}/{n} shards (100%)" in r.stderr  # plain progress lines: stderr is not a terminal
    r = subprocess.run(mp + ["tokenize", data["src"], str(tmp_path / "o"), "--tokenizer", data["tok"],
                             "--shard-size", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "'--shard-size': 0 is not in the range x>=1" in r.stderr  # checked before Ray starts


@pytest.mark.integration
def test_inspect_report(data, ref, tmp_path):
    from PIL import Image

    from pipeline.data.inspect import inspect_dataset

    seen = []
    rep = inspect_dataset(ref["out"], report_dir=tmp_path, tokenizer_dir=data["tok"], num_samples=10,
                          progress=lambda done, total: seen.append((done, total)))
    m = read_manifest(ref["out"])
    n = len(m.shards_of(m.formats[0]))
    assert seen == [(i, n) for i in range(1, n + 1)]
    u = rep.usage
    assert u["counts"].sum() == rep.samples * 64 == u["tokens"]
    assert 1.0 <= u["perplexity"] <= u["codes_used"] <= 64 and u["dead_codes"] == 64 - u["codes_used"]
    assert sum(rep.class_counts.values()) == m.counts["samples"] and set(rep.class_counts) == set(CLASSES)
    grid = Image.open(rep.files["samples_png"])
    assert grid.size == (8 * 34 + 2, 2 * 34 + 2)
    assert json.loads(Path(rep.files["json"]).read_text())["samples"] == rep.samples


def test_plan_resources_never_takes_all_cpus():
    p = plan_resources({"CPU": 2.0})  # small encoders scale badly over threads: one 1-thread actor per CPU
    assert p.device == "cpu" and p.num_encoders == 2 and p.torch_threads == 1
    assert p.num_encoders * p.encoder_cpus + p.decode_cpus < 2.0  # room for a decode task beside the actors
    big = plan_resources({"CPU": 16.0})
    assert big.num_encoders == 8 and big.torch_threads == 2 and 8 * big.encoder_cpus + big.decode_cpus < 16
    g = plan_resources({"CPU": 16.0, "GPU": 2.0})
    assert g.device == "cuda" and g.num_encoders == 2 and g.encoder_gpus == 1.0 and g.decode_cpus == 1.0
    assert 2 * g.encoder_cpus < 16
    with pytest.raises(ValueError, match="no GPUs"):  # and its autoscaler can start none
        plan_resources({"CPU": 4.0}, device="cuda", gpu_capacity=0)
