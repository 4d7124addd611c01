"""The demo's stages 1-3: the built-in dataset, the tokenizer trained on it, and its reconstructions."""
from __future__ import annotations

import numpy as np

from pipeline.demo.context import DemoContext, plot_curves, save_grid

__all__ = ["stage_make_dataset", "stage_train_tokenizer", "stage_reconstructions"]


def stage_make_dataset(ctx: DemoContext) -> None:
    """Write the built-in dataset to OUT/data (ImageNet layout, JPEG) and a grid of it."""
    from PIL import Image

    from pipeline.demo.data import make_demo_dataset

    s = ctx.settings
    ds = make_demo_dataset(ctx.out / "data", s.data)
    ctx.paths["data"] = ds.root
    ctx.metrics["dataset"] = {"classes": len(ds.classes), "train_images": ds.num_train, "val_images": ds.num_val,
                              "image_size": s.data.image_size, "seed": s.data.seed}
    per_class = s.grid_per_class
    rows = []
    for c in ds.classes:
        files = sorted((ds.val_dir / c["id"]).glob("*.JPEG"))[:per_class]
        rows += [np.asarray(Image.open(f).convert("RGB")) for f in files]
    grid = save_grid(np.stack(rows), ctx.out / "figures" / "data_grid.png", nrow=per_class)
    ctx.add_figure("dataset", f"Held-out images, one row per class ({len(ds.classes)} classes)", grid)
    ctx.add_text("dataset",
                 f"{len(ds.classes)} classes (one per scikit-image photo), {ds.num_train} train and {ds.num_val} "
                 f"held-out {s.data.image_size} px JPEGs in the ImageNet folder layout at `data/`.",
                 "Classes: " + ", ".join(f"`{c['id']}`" for c in ds.classes) + ".")


def stage_train_tokenizer(ctx: DemoContext) -> None:
    """Train the small VQGAN on data/ and save it to OUT/tokenizer (safetensors + config.json)."""
    from tokenizer.train import train_tokenizer

    data = ctx.need("data", "dataset")
    cfg = ctx.settings.tokenizer_train

    def on_log(rec: dict) -> None:
        if rec["step"] % (cfg.log_every * 5) == 0:
            ctx.say(f"  tokenizer step {rec['step']}/{cfg.steps}: loss {rec['loss']:.4f}, "
                    f"train PSNR {rec['train_psnr']:.2f} dB, {rec['seconds']:.0f} s")

    res = train_tokenizer(data, model_config=ctx.settings.tokenizer_preset, config=cfg,
                          out=ctx.out / "tokenizer", on_log=on_log)
    ctx.paths["tokenizer"] = res.out
    ctx.metrics["train_tokenizer"] = res.metrics
    steps = [h["step"] for h in res.history]
    fig = plot_curves(ctx.out / "figures" / "tokenizer_loss.png",
                      {"total": (steps, [h["loss"] for h in res.history]),
                       "L1": (steps, [h["l1"] for h in res.history]),
                       "L2": (steps, [h["l2"] for h in res.history])},
                      title="Tokenizer training loss", logy=True)
    ctx.add_figure("train_tokenizer", "Tokenizer training losses", fig)
    m = res.metrics
    ctx.add_text("train_tokenizer",
                 f"Preset `{ctx.settings.tokenizer_preset}`, {m['steps']} steps of batch {cfg.batch_size} in "
                 f"{m['seconds']:.0f} s ({m['images_per_second']:.0f} images/s, {m['torch_threads']} threads). "
                 "Losses: L1 + L2 + codebook + commitment, dead-code restarts every "
                 f"{cfg.restart_every} steps ({m['dead_codes_restarted']} restarts in all). Perceptual and "
                 "adversarial terms: not used (no pretrained weights offline).")


def stage_reconstructions(ctx: DemoContext) -> None:
    """Held-out reconstruction PSNR and codebook usage of the trained tokenizer, plus a grid."""
    import torch

    import tokenizer
    from tokenizer.train import codebook_stats, psnr, read_images

    from pipeline.generate.imageio import to_uint8

    tok_dir = ctx.need("tokenizer", "train_tokenizer")
    data = ctx.need("data", "dataset")
    vq = tokenizer.load(tok_dir)
    files = sorted((data / "val").rglob("*.JPEG"))
    imgs = read_images(files, vq.config.image_size, [])
    with torch.no_grad():
        x = imgs.float() / 255.0  # (N, 3, S, S)
        ids = vq.encode(x)  # (N, h, w)
        recon = vq.decode_ids(ids).clamp(0, 1)
    p = psnr(recon, x)
    stats = codebook_stats(ids, vq.config.codebook_size)
    ctx.metrics["reconstructions"] = {"psnr_mean": float(p.mean()), "psnr_min": float(p.min()),
                                      "psnr_max": float(p.max()), "images": len(x), **stats,
                                      "tokenizer_sha256": vq.weights_sha256,
                                      "latent_grid": list(ids.shape[1:])}
    # One real/reconstruction pair per class where possible: every k-th held-out image.
    k = max(1, len(x) // 16)
    pick = torch.arange(0, len(x), k)[:16]
    pairs = torch.stack([x[pick], recon[pick]], dim=1).flatten(0, 1)  # (2n, 3, S, S), real, recon, ...
    fig = save_grid(to_uint8(pairs), ctx.out / "figures" / "tokenizer_reconstructions.png", nrow=8)
    ctx.add_figure("reconstructions", "Held-out images (left of each pair) and their reconstructions "
                   "from 8x8 tokens (right)", fig)
    ctx.add_text("reconstructions",
                 f"Held-out reconstruction PSNR **{float(p.mean()):.2f} dB** (min {float(p.min()):.1f}, max "
                 f"{float(p.max()):.1f}) over {len(x)} images; codebook usage **{stats['usage']:.0%}** "
                 f"({stats['codes_used']}/{vq.config.codebook_size} codes), perplexity "
                 f"**{stats['perplexity']:.1f}**.")
