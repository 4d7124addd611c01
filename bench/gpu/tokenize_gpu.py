"""GPU figures for the tokenize job: official256 encoder images/s at batch 64 (fp32, tf32, bf16)
and nearest-code search torch vs FAISS on the GPU (K = 1024 / 16384 / 65536), ids compared.

    OUT=/tmp/out python bench/gpu/tokenize_gpu.py          # writes $OUT/tokenize_gpu.json

Needs only torch with CUDA (faiss is used if importable). It loads the repo's tokenizer/model.py
directly (without tokenizer/__init__.py, so safetensors/msgpack need not be installed); the
weights are random: speed does not depend on them.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def _import_tokenizer_modules():
    pkg = types.ModuleType("tokenizer")
    pkg.__path__ = [str(REPO / "tokenizer")]
    sys.modules.setdefault("tokenizer", pkg)
    cfg = importlib.import_module("tokenizer.config")
    model = importlib.import_module("tokenizer.model")
    search = importlib.import_module("tokenizer.search")
    try:
        fs = importlib.import_module("tokenizer.faiss_search")
    except Exception:  # noqa: BLE001
        fs = None
    return cfg, model, search, fs


def _cuda_time(fn, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "."))
    out_dir.mkdir(parents=True, exist_ok=True)
    res: dict = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        res["error"] = "no CUDA device"
        (out_dir / "tokenize_gpu.json").write_text(json.dumps(res, indent=1))
        print(res)
        return
    res["device"] = torch.cuda.get_device_name(0)
    cfgm, modelm, searchm, fsm = _import_tokenizer_modules()
    torch.manual_seed(0)
    model = modelm.VQGAN(cfgm.PRESETS["official256"]).cuda().eval()
    model.decoder = None
    batch = 64
    x = torch.rand(batch, 3, 256, 256, device="cuda")
    enc = {}
    with torch.inference_mode():
        for mode in ("fp32", "tf32", "bf16"):
            torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.allow_tf32 = mode == "tf32"
            if mode == "bf16":
                def fn():
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        z = model.encode_latents(x)
                    return model.quantizer.ids(z.float())
            else:
                def fn():
                    return model.encode(x)
            dt = _cuda_time(fn, 10)
            enc[mode] = {"batch": batch, "images_per_s": batch / dt,
                         "imagenet_train_hours_per_gpu": 1_281_167 / (batch / dt) / 3600}
            print(f"encoder+search {mode}: {batch / dt:8.1f} images/s", flush=True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        # bf16 vs fp32 ids (what bf16 changes in the stored tokens)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            zb = model.encode_latents(x[:16])
        ids_b = model.quantizer.ids(zb.float())
        ids_f = model.encode(x[:16])
        enc["bf16_ids_equal_fp32_fraction"] = float((ids_b == ids_f).float().mean())
    res["encoder_official256"] = enc

    g = torch.Generator(device="cuda").manual_seed(0)
    rows = batch * 256
    srch = []
    with torch.inference_mode():
        z_real = model.encode_latents(x).permute(0, 2, 3, 1).reshape(-1, 256).float()
        for k in (1024, 16384, 65536):
            cb = torch.randn(k, 256, device="cuda", generator=g)
            z = cb[torch.randint(0, k, (rows,), device="cuda", generator=g)] + 0.3 * torch.randn(
                rows, 256, device="cuda", generator=g)
            ts = searchm.TorchSearch()
            t_torch = _cuda_time(lambda: ts.search(z, cb), 5)
            r = {"K": k, "rows": rows, "torch_rows_per_s": rows / t_torch}
            if fsm is not None and fsm.faiss_available():
                f = fsm.FaissSearch()
                r["faiss_gpu_index"] = f.use_gpu
                t_f = _cuda_time(lambda: f.search(z, cb), 5)
                r["faiss_rows_per_s"] = rows / t_f
                r["ids_identical_random"] = bool(torch.equal(f.search(z, cb), ts.search(z, cb)))
                cbr = torch.cat([z_real[:k // 2], z_real[: k // 8]])  # codes from real latents + duplicates
                r["ids_identical_encoder_latents_with_duplicates"] = bool(
                    torch.equal(f.search(z_real, cbr), ts.search(z_real, cbr)))
                r["faiss_rows_rechecked"] = f.flagged_rows / max(f.total_rows, 1)
            srch.append(r)
            print(f"search K={k}: {r}", flush=True)
    res["search"] = srch
    (out_dir / "tokenize_gpu.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
