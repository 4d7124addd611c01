"""ImageNet at full count on one machine: build an ImageNet-shaped source, run the real pipeline on
it, and write one JSON of per-stage time, throughput, memory, files and shards.

    .venv/bin/python bench/scale_imagenet.py --work /data/scale --json bench/results/scale_full.json
    .venv/bin/python bench/scale_imagenet.py --images 20000 --classes 100 --val 1000 --work /tmp/s20k

Defaults are ImageNet-1k's counts: 1,281,167 train images in 1,000 synset folders (732 to 1,300
per class, ImageNet's spread) and 50,000 val images in one flat folder with LOC_val_solution.csv.
Images are small real-photo JPEGs (random crops of scikit-image's photographs, 32-48 px, each one
different) so that disk and decode stay cheap and the job's own per-image overhead shows.

Stages (``--stages``, all by default; each is timed, its peak RSS recorded):
  source     write the tree (and with --tar-of-tars the original ILSVRC2012_img_train.tar layout)
  listing    list the train folder (and the tar-of-tars) with pipeline.data.sources, in a child
  tokenizer  train a small 32 px tokenizer for --tokenizer-seconds (skipped with --tokenizer DIR)
  tokenize   `maskgit-pipeline tokenize` of train (both formats) and val (Parquet), a local Ray
  verify     `maskgit-pipeline verify --source` of train: exactly once, both formats agree
  inspect    `maskgit-pipeline inspect` of train
  stream     one epoch of the training stream over train on W ranks x 2 DataLoader workers that
             only read: every sample exactly once across ranks; row groups decoded and files open
  decode     row groups and samples a rank decodes in one epoch at W = 1, 8, 64 (ranks 0 and W-1,
             in this process): the partitioned order's ~1/W
  mixing     distinct classes per global step (256 and 2,048 samples) over the first 40 steps, for
             the default order (partitions=64) and the unpartitioned one (partitions=1)
  resume     a stream resumed at a random mid-epoch sample (W and W/2 ranks) continues the
             uninterrupted sequence, reading only the row groups it needs
  train      a few real steps of `maskgit-pipeline train` (deepspeed launcher, 2 CPU ranks)

Peak RSS: of the command's process (the driver) and of its largest descendant (a Ray worker),
sampled every 0.2 s. Not a test: the figures depend on the machine (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import multiprocessing as mp
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BIN = Path(sys.executable).parent
IMAGENET_TRAIN, IMAGENET_CLASSES, IMAGENET_VAL = 1_281_167, 1000, 50_000
STAGES = ("source", "listing", "tokenizer", "tokenize", "verify", "inspect", "stream", "decode", "mixing", "resume",
          "train")


# ---------------------------------------------------------------- the source

def class_counts(images: int, classes: int) -> list[int]:
    """Per-class image counts shaped like ImageNet-1k train (most classes at the maximum, a tail
    down to 0.56 of it: ImageNet has 1,300 and 732), summing exactly to ``images``."""
    if classes < 1 or images < classes:
        raise SystemExit(f"need at least one image per class ({images} images, {classes} classes)")
    # ImageNet: 895 of 1000 classes hold 1,300; the other 10.5% spread down to 732 (= 0.563 x 1300)
    tail = max(0, round(0.105 * classes))
    shape = np.ones(classes)
    if tail:
        shape[classes - tail:] = np.linspace(1.0, 732 / 1300, tail + 1)[1:]
    counts = np.maximum(1, np.floor(shape / shape.sum() * images)).astype(np.int64)
    rest = images - int(counts.sum())
    order = np.argsort(-shape, kind="stable")  # hand the remainder to the largest classes first
    i = 0
    while rest != 0:
        c = order[i % classes]
        step = 1 if rest > 0 else -1
        if counts[c] + step >= 1:
            counts[c] += step
            rest -= step
        i += 1
    return counts.tolist()


def synsets(classes: int) -> list[str]:
    """The first ``classes`` ImageNet-1k synset ids (sorted), so that class names resolve."""
    from pipeline.data.sources import imagenet_class_entries

    ids = sorted(e["id"] for e in imagenet_class_entries())
    if classes <= len(ids):
        return ids[:classes]
    return ids + [f"n9{i:07d}" for i in range(classes - len(ids))]


_PHOTOS: list = []


def _photos():
    """scikit-image's photographs, downscaled once per process (crops then stay cheap)."""
    if not _PHOTOS:
        import skimage.data
        from PIL import Image

        for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea, skimage.data.rocket):
            im = Image.fromarray(f())
            _PHOTOS.append(im.resize((im.width // 3, im.height // 3), Image.BILINEAR))
    return _PHOTOS


def jpeg(seed: int) -> bytes:
    """One distinct small JPEG: a random crop of a photo, resized to 32-48 px, quality 85-95."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photo = _photos()[int(rng.integers(len(_PHOTOS)))]
    w, h = photo.size
    cw, ch = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
    x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
    side = int(rng.integers(32, 49))
    im = photo.crop((x, y, x + cw, y + ch)).resize((side, max(8, side * ch // cw)), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(85, 96)))
    return buf.getvalue()


def _write_class(args: tuple[str, str, int, int]) -> int:
    folder, wnid, n, seed0 = args
    d = Path(folder) / wnid
    d.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        data = jpeg(seed0 + i)
        (d / f"{wnid}_{i}.JPEG").write_bytes(data)
        total += len(data)
    return total


def _write_val(args: tuple[str, int, int]) -> int:
    folder, lo, hi = args
    total = 0
    for i in range(lo, hi):
        data = jpeg(10**9 + i)
        (Path(folder) / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(data)
        total += len(data)
    return total


def build_source(root: Path, *, images: int, classes: int, val: int, procs: int) -> dict:
    """ROOT/train/<wnid>/<wnid>_<i>.JPEG, ROOT/val/ILSVRC2012_val_<n>.JPEG + ROOT/LOC_val_solution.csv."""
    counts, ids = class_counts(images, classes), synsets(classes)
    seeds = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
    (root / "val").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root / "train"), w, n, s) for w, n, s in zip(ids, counts, seeds)]
    chunk = max(1, math.ceil(val / max(1, 4 * procs)))
    vjobs = [(str(root / "val"), lo, min(val, lo + chunk)) for lo in range(0, val, chunk)]
    t0 = time.time()
    with mp.get_context("fork").Pool(procs) as pool:
        nbytes = 0
        for i, b in enumerate(pool.imap_unordered(_write_class, jobs, chunksize=4)):
            nbytes += b
            if (i + 1) % max(1, classes // 10) == 0:
                print(f"source: {i + 1}/{classes} classes, {time.time() - t0:.0f} s", flush=True)
        nbytes += sum(pool.imap_unordered(_write_val, vjobs))
    rng = np.random.default_rng(1)
    with open(root / "LOC_val_solution.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ImageId", "PredictionString"])
        for i in range(val):
            w.writerow([f"ILSVRC2012_val_{i + 1:08d}", f"{ids[int(rng.integers(classes))]} 1 2 30 40"])
    return {"train_images": images, "classes": classes, "val_images": val, "min_per_class": min(counts),
            "max_per_class": max(counts), "jpeg_bytes": nbytes, "mean_jpeg_bytes": round(nbytes / (images + val), 1)}


def build_tar_of_tars(root: Path, out: Path) -> dict:
    """The original ILSVRC2012_img_train.tar layout (one <wnid>.tar per class) from ROOT/train."""
    classes = sorted(p.name for p in (root / "train").iterdir())
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as outer:
        for wnid in classes:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as inner:
                for f in sorted((root / "train" / wnid).iterdir()):
                    data = f.read_bytes()
                    ti = tarfile.TarInfo(f.name)
                    ti.size, ti.mtime = len(data), 0
                    inner.addfile(ti, io.BytesIO(data))
            ti = tarfile.TarInfo(f"{wnid}.tar")
            ti.size, ti.mtime = buf.tell(), 0
            buf.seek(0)
            outer.addfile(ti, buf)
    return {"path": str(out), "bytes": out.stat().st_size, "inner_tars": len(classes)}


# ---------------------------------------------------------------- measuring commands

class PeakRSS:
    """Samples the RSS of a process and of its descendants (e.g. the Ray workers of a local
    cluster the process started) every ``period`` s; the peaks in bytes."""

    def __init__(self, pid: int, period: float = 0.2):
        import psutil

        self.proc, self.period = psutil.Process(pid), period
        self.driver = self.worker = 0
        self.worker_name = ""
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                self.driver = max(self.driver, self.proc.memory_info().rss)
                for c in self.proc.children(recursive=True):
                    try:
                        rss = c.memory_info().rss
                        if rss > self.worker:
                            self.worker, self.worker_name = rss, " ".join(c.cmdline()[:2])[:80]
                    except psutil.Error:
                        continue
            except psutil.Error:
                return
            self._stop.wait(self.period)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return {"driver_peak_rss_mb": round(self.driver / 2**20, 1),
                "largest_child_peak_rss_mb": round(self.worker / 2**20, 1), "largest_child": self.worker_name}


def run_measured(cmd: list[str], *, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` (output to ``log``, its last lines echoed), time it, sample its memory."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        rss = PeakRSS(proc.pid)
        rc = proc.wait()
    res = {"seconds": round(time.time() - t0, 1), **rss.stop(), "command": " ".join(map(str, cmd))}
    if rc != 0:
        raise SystemExit(f"{cmd[1]} failed (exit {rc}); see {log}:\n" + log.read_text()[-3000:])
    return res


def _cli(*args) -> list[str]:
    return [str(BIN / "maskgit-pipeline"), *map(str, args)]


def _shards(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    res = {"samples": m["counts"]["samples"], "errors": m["counts"]["errors"]}
    for fmt in m["formats"]:
        sh = [s for s in m["shards"] if s["format"] == fmt]
        nbytes = sum(s["bytes"] for s in sh)
        res[fmt] = {"shards": len(sh), "bytes": nbytes, "bytes_per_image": round(nbytes / max(1, res["samples"]), 2),
                    "max_shard_mb": round(max(s["bytes"] for s in sh) / 2**20, 2)}
    t = m["tokenizer"]
    payload = len(t["augmentations"]) * t["latent_h"] * t["latent_w"] * np.dtype(t["token_dtype"]).itemsize
    res["token_payload_bytes_per_image"] = payload
    if "parquet" in res:
        res["parquet_bytes_per_payload"] = round(res["parquet"]["bytes_per_image"] / payload, 3)
    return res


# ---------------------------------------------------------------- stages in this process

def listing_child(path: str, split: str | None) -> None:
    """(child process) list a source and print one JSON line: items, seconds, peak RSS."""
    import resource

    from pipeline.data.sources import list_source

    t0 = time.time()
    listing = list_source(path, split=split)
    dt = time.time() - t0
    print(json.dumps({"items": len(listing.items), "errors": len(listing.errors), "layout": listing.layout,
                      "seconds": round(dt, 1), "files_per_s": round(len(listing.items) / max(dt, 1e-9)),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def measure_listing(path: Path, split: str | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_list", str(path)] + (["--_split", split] if split else []),
                         capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"listing {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _stream_cls():
    """TokenStream whose batches also carry this process's read counters (the DataLoader workers
    are separate processes: their counters come back with their batches)."""
    import torch

    from pipeline.data.stream import TokenStream

    class CountingStream(TokenStream):
        def batch_at(self, positions):
            b = super().batch_at(positions)
            b["stats"] = torch.tensor([self.units_decoded, self.samples_decoded, self.peak_open_files, os.getpid()])
            return b

    return CountingStream


def measure_stream(data: Path, *, world: int, workers: int, batch: int, codebook: int, latent: int) -> dict:
    """One epoch on ``world`` ranks x ``workers`` DataLoader workers; every sample exactly once."""
    from torch.utils.data import DataLoader

    from pipeline.data.stream import StreamConfig

    m = json.loads((data / "manifest.json").read_text())
    total = m["counts"]["samples"]
    steps = math.ceil(total / (world * batch))
    seen = np.zeros(total, np.int32)
    per_rank, t0 = [], time.time()
    cls = _stream_cls()
    for rank in range(world):
        ds = cls(StreamConfig(data=str(data), batch_size=batch, seed=0), codebook_size=codebook, latent_size=latent,
                 rank=rank, world_size=world, num_batches=steps)
        stats: dict[int, list[int]] = {}
        for b in DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False):
            idx, sid = b["index"].numpy(), b["sample_id"].numpy()
            first = idx < total  # the last step runs into the next epoch
            np.add.at(seen, sid[first], 1)
            units, samples, files, pid = b["stats"].tolist()
            stats[pid] = [units, samples, max(files, stats.get(pid, [0, 0, 0])[2])]
        per_rank.append({"rank": rank, "units_decoded": sum(s[0] for s in stats.values()),
                         "samples_decoded": sum(s[1] for s in stats.values()),
                         "peak_open_files_per_worker": max(s[2] for s in stats.values())})
        print(f"stream: rank {rank + 1}/{world} read, {time.time() - t0:.0f} s", flush=True)
    dt = time.time() - t0
    dec = [r["samples_decoded"] for r in per_rank]
    return {"world_size": world, "workers_per_rank": workers, "batch_per_rank": batch, "seconds": round(dt, 1),
            "samples_per_s": round(total / dt), "exactly_once": bool((seen == 1).all()),
            "missing": int((seen == 0).sum()), "repeated": int((seen > 1).sum()),
            "max_rank_decoded_fraction": round(max(dec) / total, 4),
            "peak_open_files": max(r["peak_open_files_per_worker"] for r in per_rank), "ranks": per_rank}


def measure_decode(data: Path, *, worlds: tuple[int, ...], global_batch: int, codebook: int, latent: int) -> dict:
    """Per-rank decode work of one epoch's whole steps, in this process (no DataLoader workers)."""
    from pipeline.data.stream import StreamConfig, TokenStream

    total = json.loads((data / "manifest.json").read_text())["counts"]["samples"]
    rows = []
    for w in worlds:
        for rank in sorted({0, w - 1}):
            t0 = time.time()
            ds = TokenStream(StreamConfig(data=str(data), batch_size=global_batch // w, seed=0), codebook_size=codebook,
                             latent_size=latent, rank=rank, world_size=w, num_batches=total // global_batch)
            served = sum(len(b["sample_id"]) for b in ds)
            rows.append({"world_size": w, "rank": rank, "samples_served": served, "row_groups_decoded": ds.units_decoded,
                         "samples_decoded": ds.samples_decoded, "decoded_fraction": round(ds.samples_decoded / total, 4),
                         "ideal": round(1 / w, 4), "peak_open_files": ds.peak_open_files,
                         "seconds": round(time.time() - t0, 1)})
            print(f"decode: W={w} rank {rank}: {rows[-1]['decoded_fraction']} of the data", flush=True)
    return {"global_batch": global_batch, "ranks": rows}


def measure_mixing(data: Path, *, codebook: int, latent: int, steps: int = 40) -> dict:
    """How many classes a global step holds: the shuffle quality of the order over sorted shards."""
    from pipeline.data.stream import StreamConfig, TokenStream

    res = {}
    for parts in (64, 1):
        for gb in (256, 2048):
            ds = TokenStream(StreamConfig(data=str(data), batch_size=gb, seed=0, partitions=parts),
                             codebook_size=codebook, latent_size=latent, num_batches=steps)
            n = [len(np.unique(b["labels"].numpy())) for b in ds]
            res[f"partitions={parts},global_batch={gb}"] = {"mean_classes": round(float(np.mean(n)), 1),
                                                           "min_classes": int(min(n))}
    return res


def measure_resume(data: Path, *, world: int, batch: int, codebook: int, latent: int, seed: int) -> dict:
    """Resume at a random mid-epoch step on ``world`` and ``world // 2`` ranks: the next steps'
    samples equal the uninterrupted run's, and the first batch reads only the row groups it needs."""
    from pipeline.data.stream import StreamConfig, rank_positions

    m = json.loads((data / "manifest.json").read_text())
    total = m["counts"]["samples"]
    cls = _stream_cls()
    step = int(np.random.default_rng(seed).integers(1, max(2, total // (world * batch) - 4)))
    cfg = StreamConfig(data=str(data), batch_size=batch, seed=0)
    res = {"resume_step": step, "resume_sample": step * world * batch, "checks": []}
    ref = {}  # uninterrupted: step -> sorted sample ids of the whole step
    for rank in range(world):
        ds = cls(cfg, codebook_size=codebook, latent_size=latent, rank=rank, world_size=world)
        for k in range(step, step + 3):
            b = ds.batch_at(rank_positions(0, k, rank=rank, world_size=world, batch_size=batch))
            ref.setdefault(k, []).extend(b["sample_id"].tolist())
    for w2 in (world, max(1, world // 2)):
        start = step * world * batch
        b2 = batch * world // w2
        got, reads = {}, []
        for rank in range(w2):
            ds = cls(cfg, codebook_size=codebook, latent_size=latent, rank=rank, world_size=w2, start=start)
            for k in range(3):
                b = ds.batch_at(rank_positions(start, k, rank=rank, world_size=w2, batch_size=b2))
                got.setdefault(step + k, []).extend(b["sample_id"].tolist())
                if k == 0:
                    reads.append(int(b["stats"][0]))
        same = all(sorted(got[k]) == sorted(ref[k]) for k in ref)
        res["checks"].append({"world_size": w2, "same_steps": same, "row_groups_read_for_first_batch_max": max(reads)})
    res["ok"] = all(c["same_steps"] for c in res["checks"])
    return res


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, help="Folder for the source, tokens and runs (required).")
    p.add_argument("--images", type=int, default=IMAGENET_TRAIN)
    p.add_argument("--classes", type=int, default=IMAGENET_CLASSES)
    p.add_argument("--val", type=int, default=IMAGENET_VAL)
    p.add_argument("--tar-of-tars", action="store_true", help="Also write and list ILSVRC2012_img_train.tar.")
    p.add_argument("--tokenizer", type=Path, help="A tokenizer checkpoint (default: train one, 32 px demo preset).")
    p.add_argument("--tokenizer-seconds", type=float, default=120.0)
    p.add_argument("--world", type=int, default=8, help="Simulated ranks for the stream epoch.")
    p.add_argument("--batch", type=int, default=256, help="Samples per rank per step in the stream epoch.")
    p.add_argument("--train-steps", type=int, default=6)
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--tokenize-args", default="", help="Extra tokenize flags, e.g. '--shard-size 12288'.")
    p.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    p.add_argument("--json", type=Path, help="Write the results here (default: WORK/scale.json).")
    p.add_argument("--_list", help=argparse.SUPPRESS)
    p.add_argument("--_split", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._list:
        listing_child(a._list, a._split)
        return 0
    if a.work is None:
        p.error("--work is required")
    stages = [s for s in a.stages.split(",") if s]
    bad = sorted(set(stages) - set(STAGES))
    if bad:
        p.error(f"unknown stages {bad}; choose from {list(STAGES)}")
    work = a.work.resolve()
    src, tokens, logs = work / "src", work / "tokens", work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_json = a.json or work / "scale.json"
    res = json.loads(out_json.read_text()) if out_json.is_file() else {}
    res.update({"machine": {"cpus": os.cpu_count(), "mem_gb": round(os.sysconf("SC_PAGE_SIZE") *
                                                                     os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                "date": time.strftime("%Y-%m-%d"), "argv": sys.argv[1:]})

    def save() -> None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(res, indent=1))

    def stage(name: str, fn) -> None:
        if name not in stages:
            return
        print(f"== {name}", flush=True)
        t0 = time.time()
        r = fn()
        r.setdefault("seconds", round(time.time() - t0, 1))
        res[name] = r
        save()
        print(f"== {name}: {json.dumps(r)[:600]}", flush=True)

    tar = work / "ILSVRC2012_img_train.tar"

    def source() -> dict:
        r = build_source(src, images=a.images, classes=a.classes, val=a.val, procs=a.procs)
        if a.tar_of_tars:
            t0 = time.time()
            r["tar_of_tars"] = {**build_tar_of_tars(src, tar), "seconds": round(time.time() - t0, 1)}
        return r

    def listing() -> dict:
        r = {"train_folder": measure_listing(src / "train", None)}
        if tar.is_file():
            r["tar_of_tars"] = measure_listing(tar, None)
        return r

    tok = a.tokenizer or work / "tokenizer"

    def train_tokenizer() -> dict:
        if a.tokenizer:
            return {"given": str(a.tokenizer)}
        r = run_measured(_cli("train-tokenizer", src, "--preset", "demo", "--out", tok, "--overwrite",
                              "--max-seconds", a.tokenizer_seconds), log=logs / "tokenizer.log")
        return {**r, "report": json.loads((tok / "config.json").read_text()).get("training", {}).get("report")}

    def tokenize() -> dict:
        extra = a.tokenize_args.split()
        r = {}
        for split, fmt in (("train", "both"), ("val", "parquet")):
            out = tokens / split
            cmd = _cli("tokenize", src, out, "--tokenizer", tok, "--split", split, "--format", fmt, *extra)
            m = run_measured(cmd, log=logs / f"tokenize_{split}.log")
            sh = _shards(out)
            r[split] = {**m, "images_per_s": round((sh["samples"] + sh["errors"]) / m["seconds"], 1), **sh}
            status = out / "_tokenize" / "status.json"
            if status.is_file():
                r[split]["status"] = json.loads(status.read_text())
        r["seconds"] = round(r["train"]["seconds"] + r["val"]["seconds"], 1)
        n = sum(r[s]["samples"] + r[s]["errors"] for s in ("train", "val"))
        r["images_per_s"] = round(n / r["seconds"], 1)
        return r

    def verify() -> dict:
        m = run_measured(_cli("verify", tokens / "train", "--source", src, "--split", "train", "--json"),
                         log=logs / "verify.log")
        text = (logs / "verify.log").read_text()
        report = json.loads(text[text.index("{"):text.rindex("}") + 1])
        return {**m, "ok": report.get("ok"), "report": {k: v for k, v in report.items() if k != "problems"},
                "problems": report.get("problems", [])[:5]}

    def inspect() -> dict:
        m = run_measured(_cli("inspect", tokens / "train", "--tokenizer", tok, "--report-dir", work / "inspect"),
                         log=logs / "inspect.log")
        return {**m, "tail": (logs / "inspect.log").read_text().strip()[-300:]}

    def _grid() -> tuple[int, int]:
        t = json.loads((tokens / "train" / "manifest.json").read_text())["tokenizer"]
        return t["codebook_size"], t["latent_h"]

    def stream() -> dict:
        k, lat = _grid()
        return measure_stream(tokens / "train", world=a.world, workers=2, batch=a.batch, codebook=k, latent=lat)

    def decode() -> dict:
        k, lat = _grid()
        return measure_decode(tokens / "train", worlds=(1, 8, 64), global_batch=64 * a.batch, codebook=k, latent=lat)

    def mixing() -> dict:
        k, lat = _grid()
        return measure_mixing(tokens / "train", codebook=k, latent=lat)

    def resume() -> dict:
        k, lat = _grid()
        return measure_resume(tokens / "train", world=a.world, batch=a.batch, codebook=k, latent=lat, seed=7)

    def train() -> dict:
        k, lat = _grid()
        ncls = len(json.loads((tokens / "train" / "manifest.json").read_text())["classes"])
        over = json.dumps({"codebook_size": k, "latent_size": lat, "num_classes": ncls + 1})
        cmd = _cli("train", tokens / "train", "--out", work / "run", "--nproc", 2, "--resume", "none",
                   "--config", REPO / "jobs" / "train_debug.json", f"steps={a.train_steps}", "save_every=1000",
                   f"model_overrides={over}", "block_size=4096", "shuffle_buffer=65536")
        m = run_measured(cmd, log=logs / "train.log")
        rows = [json.loads(ln) for ln in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        return {**m, "steps": len(rows), "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"]}

    if "train" in stages and (work / "run").exists():
        import shutil

        shutil.rmtree(work / "run")
    for name, fn in (("source", source), ("listing", listing), ("tokenizer", train_tokenizer),
                     ("tokenize", tokenize), ("verify", verify), ("inspect", inspect), ("stream", stream),
                     ("decode", decode), ("mixing", mixing), ("resume", resume), ("train", train)):
        stage(name, fn)
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
