"""The scale benchmark's small configuration: 20,000 train images in 100 ImageNet-shaped class folders
plus 1,000 flat val images through the real pipeline (source, listing of the folder and of the
tar-of-tars, Ray tokenize of both splits, verify --source, inspect, one stream epoch on 8 ranks x 2
DataLoader workers, a mid-epoch resume on 8 and 4 ranks, 3 deepspeed steps on 2 CPU ranks).
About 3 minutes on 2 cores; the full ImageNet count is the same command without the size flags
(docs/BENCHMARKS.md)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tokenizer

REPO = Path(__file__).resolve().parents[1]
IMAGES, CLASSES, VAL = 20_000, 100, 1_000


@pytest.mark.integration
def test_scale_benchmark_at_20k(tmp_path):
    tok = tmp_path / "tok"
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("demo"), tok)  # the 32 px demo architecture; its training is not the point
    out = tmp_path / "scale.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "scale_imagenet.py"), "--work", str(tmp_path / "w"),
                        "--images", str(IMAGES), "--classes", str(CLASSES), "--val", str(VAL), "--tar-of-tars",
                        "--tokenizer", str(tok), "--train-steps", "3", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    src = res["source"]
    assert (src["train_images"], src["classes"], src["val_images"]) == (IMAGES, CLASSES, VAL)
    assert src["min_per_class"] < src["max_per_class"]  # ImageNet's uneven spread, exact total
    assert res["listing"]["train_folder"]["items"] == IMAGES and res["listing"]["tar_of_tars"]["items"] == IMAGES
    tk = res["tokenize"]
    assert tk["train"]["samples"] == IMAGES and tk["train"]["errors"] == 0 and tk["val"]["samples"] == VAL
    for fmt in ("parquet", "webdataset"):
        assert tk["train"][fmt]["shards"] == math.ceil(IMAGES / 12_288)  # the default shard size
    assert tk["train"]["status"]["state"] == "done"
    assert res["verify"]["ok"] is True and res["verify"]["report"]["source_images"] == IMAGES
    st = res["stream"]
    assert st["exactly_once"] and st["world_size"] == 8 and st["workers_per_rank"] == 2
    assert 0 < st["peak_open_files"] <= 64
    assert all(rk["samples_decoded"] > 0 for rk in st["ranks"])
    assert res["resume"]["ok"] and {c["world_size"] for c in res["resume"]["checks"]} == {8, 4}
    assert res["train"]["steps"] == 3 and math.isfinite(res["train"]["last_loss"])
