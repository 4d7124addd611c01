"""Tokenize job end to end on many small images: images/s, shards per format, bytes per image.

    PYTHONPATH=. .venv/bin/python bench/bench_tokenize_units.py --images 20000 --unit-size 256 --task-size 256
    PYTHONPATH=. .venv/bin/python bench/bench_tokenize_units.py --images 20000            # the defaults
    ... --profile driver.prof   # cProfile of the driver process (pstats file)

The source is an ImageNet-style tree of 48x40 JPEGs (``ROOT/train/<wnid>/<wnid>_<i>.JPEG``, made
once under ``--data``) and the tokenizer the 32 px ``debug`` preset (8x8 grid, 64 codes), random
init: speed does not depend on the weights, but its tokens are nearly constant, so the bytes per
image it prints are far below real tokens' (tests/test_shards.py measures uniform random ids). A local Ray (``--cpus``) is started before the
clock starts, so the figure is the job's own wall time: listing, planning, decode, encode, write,
manifest. Prints one line; ``--json`` appends it as a JSON line. Benchmark, not a test.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def make_tree(root: Path, n: int, classes: int) -> None:
    """``n`` small JPEGs in ``classes`` ImageNet-like class folders (skipped when already there)."""
    from tokenize_data import jpeg_bytes, photo

    marker = root / f".done-{n}-{classes}"
    if marker.exists():
        return
    per = -(-n // classes)
    for i in range(n):
        wnid = f"n{1440764 + i // per:08d}"
        d = root / "train" / wnid
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{wnid}_{10000 + i % per}.JPEG").write_bytes(jpeg_bytes(photo(i % 97, (48, 40))))
    marker.write_text("")


def make_tokenizer(d: Path, preset: str) -> None:
    import torch

    import tokenizer

    if not (d / "config.json").exists():
        torch.manual_seed(0)
        tokenizer.save(tokenizer.build(preset), d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--data", default="/tmp/bench_tok_units")
    ap.add_argument("--preset", default="debug")
    ap.add_argument("--unit-size", type=int, default=None, help="default: the TokenizeConfig default")
    ap.add_argument("--task-size", type=int, default=None, help="default: auto (new code only)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--formats", default="parquet,webdataset")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--profile", default=None, help="write a cProfile of the driver here")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import ray

    from pipeline.data.tokenize_job import TokenizeConfig, run_tokenize

    data = Path(a.data)
    make_tree(data / "src", a.images, a.classes)
    make_tokenizer(data / f"tok-{a.preset}", a.preset)
    kw = {k: v for k, v in (("unit_size", a.unit_size), ("task_size", a.task_size)) if v is not None}
    out = Path(tempfile.mkdtemp(prefix="out-", dir=data))
    cfg = TokenizeConfig(source=str(data / "src"), out=str(out / "tokens"), tokenizer=str(data / f"tok-{a.preset}"),
                         formats=tuple(a.formats.split(",")), batch_size=a.batch_size, **kw)
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    prof = cProfile.Profile() if a.profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    res = run_tokenize(cfg)
    if prof:
        prof.disable()
        prof.dump_stats(a.profile)
    wall = time.perf_counter() - t
    ray.shutdown()
    m = res.manifest
    info = m.tokenizer
    payload = info.tokens_per_sample * info.token_dtype.itemsize
    row = {"images": a.images, "unit_size": cfg.unit_size, "task_size": m.extra.get("task_size"),
           "batch_size": a.batch_size, "wall_s": round(wall, 2), "images_per_s": round(a.images / wall, 1),
           "encoder_images_per_s": round(res.encoder_images_per_s or 0, 1),
           "decode_task_images_per_s": round(getattr(res, "decode_images_per_s", None) or 0, 1),
           "grid": f"{info.latent_h}x{info.latent_w}", "payload_bytes": payload,
           "load_avg": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for f in m.formats:
        shards = m.shards_of(f)
        per_image = sum(s.bytes for s in shards) / max(m.num_samples(f), 1)
        row[f"{f}_shards"] = len(shards)
        row[f"{f}_bytes_per_image"] = round(per_image, 1)
        row[f"{f}_over_payload"] = round(per_image / payload, 3)
    print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
