"""Tokenize benchmarks: per-stage and end-to-end images/s, FAISS vs torch search, bytes/image.

    .venv/bin/python bench/bench_tokenize.py --tokenizers demo,official256 --images 48 --json out.json

Sections (``--sections``):
  search  nearest-code search, FAISS vs torch, K = 1024 / 16384 / 65536, D = 256 (ids compared)
  stages  decode+crop, encoder+search (encoder-only, in-memory crops), shard writing, per tokenizer
  e2e     the Ray job end to end on a local Ray (started before timing), vs encoder-only at the same
          batch, and a naive single-process loop at batch 1 (read, decode, encode one image at a time)
  bytes   bytes/image of Parquet and WebDataset shards for a 1024-code, 16x16 grid: uniform random
          tokens (10 bits of entropy each: the worst case) and real tokens from the e2e run
Benchmarks, not tests: numbers depend on the machine; run on a quiet one and compare ratios.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokenizer  # noqa: E402
from tokenizer.preprocess import preprocess_bytes  # noqa: E402
from pipeline.data.shards import ShardRows, TokenizerInfo, write_parquet_shard, write_webdataset_shard  # noqa: E402
from tokenizer.faiss_search import FaissSearch  # noqa: E402
from tokenizer.search import TorchSearch  # noqa: E402


def _timeit(fn, *, min_time: float = 1.0, min_reps: int = 2) -> float:
    """Seconds per call (best of a few repeats after one warm-up)."""
    fn()
    best, total, reps = float("inf"), 0.0, 0
    while total < min_time or reps < min_reps:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def make_photos(root: Path, n: int, classes: int = 4) -> list[Path]:
    """ImageNet-like JPEGs (random crops of scikit-image's photographs, ~500x375, q=90)."""
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        src = Image.fromarray(photos[i % len(photos)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = src.crop((x, y, x + cw, y + ch)).resize((500, 375) if i % 3 else (375, 500), Image.BICUBIC)
        d = root / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"img_{i:05d}.JPEG"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def bench_search(ks=(1024, 16384, 65536), n_rows: int = 4096, dim: int = 256) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in ks:
        cb = torch.randn(k, dim, generator=g)
        z = cb[torch.randint(0, k, (n_rows,), generator=g)] + 0.3 * torch.randn(n_rows, dim, generator=g)
        ts, fs = TorchSearch(), FaissSearch()
        t_torch = _timeit(lambda: ts.search(z, cb))
        t_faiss = _timeit(lambda: fs.search(z, cb))
        agree = bool(torch.equal(ts.search(z, cb), fs.search(z, cb)))
        out.append({"K": k, "rows": n_rows, "dim": dim, "torch_rows_per_s": n_rows / t_torch,
                    "faiss_rows_per_s": n_rows / t_faiss, "faiss_over_torch": t_torch / t_faiss,
                    "ids_identical": agree, "faiss_rows_rechecked": fs.flagged_rows / max(fs.total_rows, 1)})
        print(f"search K={k:6d}: torch {n_rows / t_torch:10.0f} rows/s  faiss {n_rows / t_faiss:10.0f} rows/s  "
              f"faiss/torch speed {t_torch / t_faiss:5.2f}x  identical={agree}", flush=True)
    return out


def _load_tok(name: str, tmp: Path) -> Path:
    d = tmp / f"tok-{name}"
    if not d.exists():
        torch.manual_seed(0)
        tokenizer.save(tokenizer.build(name), d)
    return d


def bench_stages(name: str, tok_dir: Path, paths: list[Path], batch: int, search: str) -> dict:
    from tokenizer.faiss_search import make_search

    model = tokenizer.load(tok_dir)
    model.set_search(make_search(search, codebook_size=model.config.codebook_size))
    size = model.config.image_size
    blobs = [p.read_bytes() for p in paths]
    t = _timeit(lambda: [preprocess_bytes(b, size) for b in blobs], min_time=0.5, min_reps=1)
    decode_ips = len(blobs) / t
    crops = np.concatenate([preprocess_bytes(b, size) for b in blobs])  # (N, 3, S, S)
    x = torch.from_numpy(crops[:batch]).float() / 255.0
    with torch.inference_mode():
        t_enc = _timeit(lambda: model.encode(x), min_time=2.0)
        z = model.encode_latents(x)
        t_lat = _timeit(lambda: model.encode_latents(x), min_time=2.0)
        t_srch = _timeit(lambda: model.quantizer.ids(z), min_time=0.5)
        ids = model.encode(x)
    info = TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=model.config.codebook_size,
                         latent_h=ids.shape[1], latent_w=ids.shape[2], image_size=size)
    rows = ShardRows([f"k{i}" for i in range(256)], np.zeros(256), ids.numpy()[np.arange(256) % len(ids), None]
                     .astype(np.uint16))
    with tempfile.TemporaryDirectory() as d:
        t_pq = _timeit(lambda: write_parquet_shard(d, 0, rows, info), min_time=0.5)
        t_wd = _timeit(lambda: write_webdataset_shard(d, 0, rows, info), min_time=0.5)
    r = {"tokenizer": name, "batch": batch, "search": search, "decode_crop_ips": decode_ips,
         "encoder_plus_search_ips": batch / t_enc, "encoder_latents_ips": batch / t_lat,
         "search_ips": batch / t_srch, "write_parquet_ips": 256 / t_pq, "write_webdataset_ips": 256 / t_wd}
    print(f"stages {name:12s} b={batch}: decode+crop {decode_ips:7.1f}  encoder+search {batch / t_enc:8.2f}  "
          f"(latents {batch / t_lat:8.2f}, search {batch / t_srch:9.1f})  write pq {256 / t_pq:8.0f} "
          f"wds {256 / t_wd:8.0f} images/s", flush=True)
    return r


def bench_e2e(name: str, tok_dir: Path, src: Path, n: int, batch: int, search: str, enc_ips: float,
              tmp: Path) -> dict:
    from pipeline.data.tokenize_job import TokenizeConfig, run_tokenize
    from tokenizer.faiss_search import make_search

    out = tmp / f"out-{name}-{search}"
    t = time.perf_counter()
    res = run_tokenize(TokenizeConfig(source=str(src), out=str(out), tokenizer=str(tok_dir), unit_size=batch,
                                      batch_size=batch, search=search, formats=("parquet", "webdataset")))
    e2e = n / (time.perf_counter() - t)
    steady = res.steady_images_per_s or float("nan")
    in_job_enc = res.encoder_images_per_s or float("nan")  # encoder-only rate inside the job's actor
    # naive: one process, one image at a time: read, decode, crop, encode, collect; write at the end
    model = tokenizer.load(tok_dir)
    model.set_search(make_search(search, codebook_size=model.config.codebook_size))
    files = sorted(src.rglob("*.JPEG"))[: max(4, min(n, 16))]
    t = time.perf_counter()
    toks = []
    with torch.inference_mode():
        for p in files:
            crop = preprocess_bytes(p.read_bytes(), model.config.image_size)
            toks.append(model.encode(torch.from_numpy(crop).float() / 255.0).numpy())
    np.save(io.BytesIO(), np.stack(toks))
    naive = len(files) / (time.perf_counter() - t)
    r = {"tokenizer": name, "images": n, "batch": batch, "search": search, "e2e_ips": e2e,
         "steady_ips": steady, "steady_over_encoder": steady / enc_ips,
         "encoder_in_job_ips": in_job_enc, "steady_over_encoder_in_job": steady / in_job_enc,
         "encoder_only_ips": enc_ips, "e2e_over_encoder": e2e / enc_ips, "naive_batch1_ips": naive,
         "e2e_over_naive": e2e / naive, "out": str(out)}
    print(f"e2e    {name:12s} b={batch} {search}: job wall {e2e:7.2f} images/s = {e2e / enc_ips:5.1%} of encoder-only "
          f"({enc_ips:.2f}); steady {steady:7.2f} = {steady / enc_ips:5.1%} (of the encoder rate inside the job "
          f"{in_job_enc:.2f}: {steady / in_job_enc:5.1%}); naive batch-1 loop {naive:6.2f} "
          f"images/s -> job wall is {e2e / naive:5.1f}x, steady {steady / naive:5.1f}x", flush=True)
    return r


def bench_bytes(real_outs: list[str]) -> list[dict]:
    from pipeline.data.shards import read_manifest

    out = []
    rng = np.random.default_rng(0)
    n = 1024
    info = TokenizerInfo(checkpoint_sha256="0" * 64, codebook_size=1024, latent_h=16, latent_w=16, image_size=256)
    keys = [f"train/n{i % 1000:08d}/n{i % 1000:08d}_{10000 + i}.JPEG" for i in range(n)]
    rows = ShardRows(keys, rng.integers(0, 1000, n), rng.integers(0, 1024, (n, 1, 16, 16)).astype(np.uint16))
    with tempfile.TemporaryDirectory() as d:
        pq = write_parquet_shard(d, 0, rows, info).bytes / n
        wd = write_webdataset_shard(d, 0, rows, info).bytes / n
    ideal = 256 * 10 / 8
    out.append({"tokens": "uniform random, K=1024, 16x16", "parquet_bytes_per_image": pq,
                "webdataset_bytes_per_image": wd, "ideal_10_bits_per_token": ideal,
                "parquet_over_ideal": pq / ideal, "webdataset_over_parquet": wd / pq})
    print(f"bytes  uniform K=1024 16x16: parquet {pq:6.1f} B/image ({pq / ideal:4.2f}x of 10 bits/token = "
          f"{ideal:.0f} B), webdataset {wd:6.1f} B/image ({wd / pq:4.2f}x parquet)", flush=True)
    for o in real_outs:
        m = read_manifest(o)
        s = {f: sum(x.bytes for x in m.shards_of(f)) / m.num_samples(f) for f in m.formats}
        t = m.tokenizer
        out.append({"tokens": f"job output {o}", "codebook": t.codebook_size, "grid": t.latent_h,
                    **{f"{f}_bytes_per_image": v for f, v in s.items()}})
        print(f"bytes  job K={t.codebook_size} {t.latent_h}x{t.latent_w}: " +
              ", ".join(f"{f} {v:.1f} B/image" for f, v in s.items()), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default="search,stages,e2e,bytes")
    ap.add_argument("--tokenizers", default="demo,official256")
    ap.add_argument("--images", type=int, default=48, help="images for the e2e runs")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--search", default="torch,faiss")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    sections = a.sections.split(",")
    res: dict = {"machine": f"{os.cpu_count()} CPUs", "torch_threads": a.threads,
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    tmp = Path(tempfile.mkdtemp(prefix="bench_tok_"))
    if "search" in sections:
        res["search"] = bench_search()
    outs = []
    if "stages" in sections or "e2e" in sections:
        src = tmp / "src"
        paths = make_photos(src, a.images)
        res["stages"], res["e2e"] = [], []
        started = False
        for name in a.tokenizers.split(","):
            tok = _load_tok(name, tmp)
            for search in a.search.split(","):
                st = bench_stages(name, tok, paths[:16], a.batch, search)
                res["stages"].append(st)
                if "e2e" in sections:
                    if not started:
                        import ray

                        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                                 logging_level="ERROR")
                        started = True
                    r = bench_e2e(name, tok, src, a.images, a.batch, search, st["encoder_plus_search_ips"], tmp)
                    res["e2e"].append(r)
                    outs.append(r["out"])
    if "bytes" in sections:
        res["bytes"] = bench_bytes(outs[-1:])
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
