"""GPU checks of the foundation, for a lent H100/H200 (not a test; run by bench/gpu/run_all.sh).

- parity with the official fixtures on CUDA in float32 (TF32 off), and the bf16 error;
- SDPA: does the official256 transformer run on the flash-attention kernel in bf16;
- speed: VQGAN encode images/s and transformer forward tokens/s for official256, fp32 and bf16.
Writes JSON to $OUT/foundation_gpu.json.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import tokenizer as tok  # noqa: E402
import transformer as tfm  # noqa: E402
from tokenizer.official import load_official_tokenizer  # noqa: E402
from transformer.official import load_official_transformer  # noqa: E402


def timed(fn, repeats=5):
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="fp32,tf32,bf16", help="precisions to time: fp32 (TF32 off), tf32, bf16")
    ap.add_argument("--no-transformer-compile", action="store_true", help="skip torch.compile of the transformer")
    args = ap.parse_args()
    out = Path(os.environ.get("OUT", "."))
    fixtures = Path(os.environ.get("FIXTURES", REPO / ".devcarry" / "official-tiny"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}

    # --- parity on CUDA
    ref = np.load(fixtures / "reference.npz")
    vq = load_official_tokenizer(fixtures / "tokenizer_checkpoint", image_size=64).to(dev)
    model = load_official_transformer(fixtures / "maskgit_checkpoint", codebook_size=64).to(dev)
    img = torch.from_numpy(ref["image"]).permute(0, 3, 1, 2).to(dev)
    seq = torch.from_numpy(ref["seq"]).long()
    seq[seq < 0] = model.config.mask_token_id
    seq = seq.to(dev)
    with torch.no_grad():
        ids = vq.encode(img).cpu().numpy()
        recon = vq.decode_ids(torch.from_numpy(ref["ids"]).long().to(dev)).permute(0, 2, 3, 1).cpu().numpy()
        logits = model(seq).cpu().numpy()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits_bf16 = model(seq).float().cpu().numpy()
            recon_bf16 = vq.decode_ids(torch.from_numpy(ref["ids"]).long().to(dev)).float().permute(0, 2, 3, 1).cpu().numpy()
    res["parity_fp32"] = {"ids_equal": bool((ids == ref["ids"]).all()),
                          "recon_max_abs_err": float(np.abs(recon - ref["recon"]).max()),
                          "logits_max_abs_err": float(np.abs(logits - ref["logits"]).max())}
    res["bf16_vs_official_fp32"] = {"recon_max_abs_err": float(np.abs(recon_bf16 - ref["recon"]).max()),
                                    "logits_max_abs_err": float(np.abs(logits_bf16 - ref["logits"]).max())}

    # --- SDPA flash kernel eligibility on the official256 shapes (head dim 48)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    big = tfm.build("official256").to(dev).eval()
    toks = torch.randint(0, 1024, (64, 257), device=dev)
    flash_ok = True
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            big(toks)
    except RuntimeError as e:
        flash_ok = f"no: {e}"[:300]
    res["sdpa_flash_attention_bf16"] = flash_ok

    # --- speed: eager and torch.compile, fp32 (TF32 off), TF32, bf16 autocast; NCHW
    # (channels_last was slower for the GroupNorm-heavy VQGAN in the first H100 run)
    speed = {}
    all_modes = {"fp32": (False, None), "tf32": (True, None), "bf16": (False, torch.bfloat16)}
    modes = [(m, *all_modes[m]) for m in args.modes.split(",")]

    def bench(model_fn, x, n, unit, repeats=5):
        for name, tf32, dtype in modes:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32

            def run():
                with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                    model_fn(x)
            t = timed(run, repeats)
            yield name, {"seconds": t, unit: n / t}

    big = big.eval()
    for name, r in bench(big, toks, 64 * 257, "tokens_per_s"):
        speed[f"transformer_forward_{name}_b64_eager"] = r
    if not args.no_transformer_compile:
        cbig = torch.compile(big)
        for name, r in bench(cbig, toks, 64 * 257, "tokens_per_s"):
            speed[f"transformer_forward_{name}_b64_compiled"] = r
        del cbig
    del big
    vqb = tok.build("official256").to(dev).eval()
    x = torch.rand(64, 3, 256, 256, device=dev)
    for name, r in bench(vqb.encode, x, 64, "images_per_s", 3):
        speed[f"vqgan_encode_{name}_b64_eager"] = r
    enc = torch.compile(vqb.encode_latents)
    for name, r in bench(enc, x, 64, "images_per_s", 3):
        speed[f"vqgan_encoder_{name}_b64_compiled"] = r
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    res["speed"] = speed
    (out / "foundation_gpu.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
