"""Tokenize precision with evidence: for fp32, tf32 (CUDA only) and bf16, the fraction of token ids
equal to the fp32 ids and the reconstruction PSNR (decode of the ids vs the crop), through the tokenize
job's own encoder actor (``EncodeTasks``), on real photos: the demo's built-in photos (scikit-image),
random crops at the tokenizer's size.

    .venv/bin/python bench/bench_precision.py --tokenizer demo-out/tokenizer [--crops 512] [--device auto]
    # for a machine without scikit-image (the GPU image): write the crops here, carry the file
    .venv/bin/python bench/bench_precision.py --save-crops .devcarry/precision_crops256.npz --image-size 256 --crops 64
    python bench/bench_precision.py --tokenizer TOK --crops-file .devcarry/precision_crops256.npz

Prints a table to stderr and JSON to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tokenizer  # noqa: E402
from pipeline.data.tokenize_stages import EncodeTasks, encoder_payload  # noqa: E402


def crops(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, 1, 3, size, size) uint8: random square crops of the built-in photos resized to ``size``."""
    from PIL import Image

    from pipeline.demo.data import PHOTOS, load_photo  # scikit-image's photos

    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name in PHOTOS]
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        side = int(rng.integers(min(p.shape[:2]) // 3, min(p.shape[:2]) + 1))
        y, x = rng.integers(0, p.shape[0] - side + 1), rng.integers(0, p.shape[1] - side + 1)
        img = Image.fromarray(p[y:y + side, x:x + side]).resize((size, size), Image.BICUBIC)
        out.append(np.asarray(img).transpose(2, 0, 1))
    return np.stack(out)[:, None]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer")
    ap.add_argument("--save-crops", help="Write the crops (npz) and stop; with --image-size.")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--crops-file", help="Crops written by --save-crops instead of the built-in photos.")
    ap.add_argument("--crops", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    if a.save_crops:
        Path(a.save_crops).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(a.save_crops, crops=crops(a.crops, a.image_size))
        print(f"wrote {a.crops} crops of {a.image_size} px to {a.save_crops}", file=sys.stderr)
        return
    if not a.tokenizer:
        ap.error("--tokenizer is required (unless --save-crops)")
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    model = tokenizer.load(a.tokenizer)
    cfg = model.config
    if a.crops_file:
        with np.load(a.crops_file) as z:
            x = z["crops"]
        if x.shape[-1] != cfg.image_size:
            raise SystemExit(f"{a.crops_file}: crops of {x.shape[-1]} px, the tokenizer takes {cfg.image_size}")
    else:
        x = crops(a.crops, cfg.image_size)
    payload = encoder_payload(model)
    precisions = ["fp32", "tf32", "bf16"] if dev == "cuda" else ["fp32", "bf16"]
    res: dict = {"date": time.strftime("%Y-%m-%d"), "device": dev, "tokenizer": a.tokenizer,
                 "image_size": cfg.image_size, "crops": int(len(x)), "crops_file": a.crops_file, "rows": []}
    ref = None
    for prec in precisions:
        enc = EncodeTasks([payload], device=dev, precision=prec, batch_size=a.batch_size, search="torch",
                          torch_threads=torch.get_num_threads(), image_size=cfg.image_size, n_views=1,
                          latent=cfg.latent_size, token_dtype="int64")
        enc.encode(x[:a.batch_size])  # warm-up: first-call costs out of the timing
        t0 = time.perf_counter()
        ids = enc.encode(x)[:, 0]
        wall = time.perf_counter() - t0
        ref = ids if ref is None else ref
        with torch.no_grad():
            rec = torch.cat([model.decode_ids(torch.from_numpy(ids[i:i + 64]).to(torch.long))
                             for i in range(0, len(ids), 64)])
        rec = (rec.clamp(0, 1) * 255).round().byte().numpy()
        row = {"precision": prec, "ids_equal_to_fp32": float((ids == ref).mean()),
               "psnr_db": round(psnr(rec, x[:, 0]), 3), "encode_images_per_s": round(len(x) / wall, 1)}
        res["rows"].append(row)
        print(f"{prec:>5}: ids equal to fp32 {row['ids_equal_to_fp32']:.4f}, reconstruction PSNR "
              f"{row['psnr_db']:.3f} dB, {row['encode_images_per_s']} images/s", file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
