"""The demo's stages 8-9 with the MVTM checkpoint: per-class samples and the step-by-step decoding grid
(paper Figure 3), then inpainting, outpainting and class-conditional replace on held-out images."""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.demo.context import DemoContext, load_models, save_grid, save_upscaled, split_images, torch_threads

__all__ = ["stage_sample", "stage_edit"]


def stage_sample(ctx: DemoContext) -> None:
    """Samples per class (MaskGIT T=8 and AR) and the step-by-step decoding grid."""
    import torch

    from pipeline.generate import ar_sample_images, sample_images, step_progression
    from pipeline.generate.imageio import to_uint8

    model, vq = load_models(ctx, "mvtm", stage="train_mvtm")
    nc, per = ctx.num_classes(), ctx.settings.sample_per_class
    labels = torch.arange(nc).repeat_interleave(per)
    with torch_threads(ctx.settings.threads):
        imgs, res = sample_images(model, vq, labels, steps=8, schedule="cosine", seed=ctx.settings.seed,
                                  record=True, return_result=True)
        fig = save_grid(to_uint8(imgs), ctx.out / "figures" / "samples_maskgit.png", nrow=per)
        ctx.add_figure("sample", f"MaskGIT samples, T=8 cosine, no guidance: one row per class (the {nc} classes in "
                       "order, compare with the dataset grid)", fig)
        prog = [step_progression(vq, res, model.config.latent_size, index=i * per) for i in (0, 3, 9)]
        fig = save_upscaled(np.concatenate(prog, axis=0), ctx.out / "figures" / "decoding_steps.png")
        ctx.add_figure("sample", "Step-by-step decoding (paper Figure 3), three samples: per step (columns 1-8), "
                       "top row = tokens kept after the step (grey = still masked), bottom row = the step's full "
                       "prediction", fig)
        if "ar" in ctx.paths:
            ar, _ = load_models(ctx, "ar", stage="train_ar")
            aimgs = ar_sample_images(ar, vq, labels, seed=ctx.settings.seed)
            fig = save_grid(to_uint8(aimgs), ctx.out / "figures" / "samples_ar.png", nrow=per)
            ctx.add_figure("sample", "AR baseline samples (raster order, temperature 1): one row per class", fig)
    masked_after = res.masked[:, :, 1:].float().mean((0, 2)).tolist()  # (T,) fraction masked after each step
    ctx.metrics["sample"] = {"per_class": per, "classes": nc, "steps": 8, "schedule": "cosine",
                             "masked_fraction_after_step": [round(v, 4) for v in masked_after]}
    ctx.add_text("sample", f"{per} samples per class from the exported MVTM checkpoint "
                 "(`pipeline.generate.sample_images`, official decoding: choice temperature 4.5, cosine schedule, "
                 "T=8). Fraction of tokens still masked after each step: "
                 + ", ".join(f"{v:.2f}" for v in masked_after) + ".")


def stage_edit(ctx: DemoContext) -> None:
    """Inpaint, outpaint and class-conditional replace on held-out images; a before/after grid each."""
    from pipeline.generate import edit_inpaint, edit_outpaint, edit_replace
    from pipeline.generate.imageio import to_uint8

    model, vq = load_models(ctx, "mvtm", stage="train_mvtm")
    imgs, labels = split_images(ctx, "val")
    s = imgs.shape[-1]
    nc = ctx.num_classes()
    picks = [int(np.flatnonzero(labels == c)[0]) for c in ctx.settings.edit_classes if (labels == c).any()]
    rows_in, rows_out, rows_rep = [], [], []
    m: dict[str, Any] = {"images": len(picks)}
    changed = {"inpaint": [], "replace": [], "outpaint_kept_max_abs": []}
    with torch_threads(ctx.settings.threads):
        for j, i in enumerate(picks):
            img = imgs[i].transpose(1, 2, 0).astype(np.float32) / 255.0  # (S, S, 3)
            lab = int(labels[i])
            # inpaint: the central half of the image
            mask = np.zeros((s, s), bool)
            mask[s // 4:3 * s // 4, s // 4:3 * s // 4] = True
            r = edit_inpaint(model, vq, img, mask, lab, seed=ctx.settings.seed + j)
            holed = img.copy()
            holed[mask] = 0.5
            rows_in += [img, holed, r.decoded, r.image]
            changed["inpaint"].append(float(r.token_mask.mean()))
            # class-conditional replace: the central box with another class
            other = (lab + nc // 2) % nc
            q = edit_replace(model, vq, img, (s // 4, s // 4, s // 2, s // 2), other, seed=ctx.settings.seed + j)
            boxed = img.copy()
            boxed[s // 4:3 * s // 4, [s // 4, 3 * s // 4 - 1]] = (1, 0, 0)
            boxed[[s // 4, 3 * s // 4 - 1], s // 4:3 * s // 4] = (1, 0, 0)
            rows_rep += [img, boxed, q.image]
            changed["replace"].append(float(q.token_mask.mean()))
            # outpaint: 8 px on the left and right
            o = edit_outpaint(model, vq, img, {"left": 8, "right": 8}, lab, seed=ctx.settings.seed + j)
            changed["outpaint_kept_max_abs"].append(float(np.abs(o.image[:, 8:8 + s] - img).max()))
            rows_out.append(o)

    def pad(rows: list) -> np.ndarray:  # (B, H, W, 3) float [0, 1] -> uint8
        return to_uint8(np.stack(rows).transpose(0, 3, 1, 2))

    g = save_grid(pad(rows_in), ctx.out / "figures" / "edit_inpaint.png", nrow=4)
    ctx.add_figure("edit", "Inpainting: original | centre masked | decoded tokens | composite (feathered), "
                   "one held-out image per row", g)
    g = save_grid(pad(rows_rep), ctx.out / "figures" / "edit_replace.png", nrow=3)
    ctx.add_figure("edit", f"Class-conditional replace (official: box + 1 token margin, decode steps 2..12, blurred "
                   f"composite): original | box | result conditioned on class (label + {nc // 2}) mod {nc}", g)
    h, w = rows_out[0].image.shape[:2]
    canvas = []
    for j, o in enumerate(rows_out):
        before = np.ones((h, w, 3), np.float32)
        before[:, 8:8 + s] = imgs[picks[j]].transpose(1, 2, 0) / 255.0
        canvas += [before, o.image]
    g = save_grid(pad(canvas), ctx.out / "figures" / "edit_outpaint.png", nrow=2)
    ctx.add_figure("edit", "Outpainting 8 px left and right (windows of the model's 8x8 grid): before | after", g)
    m.update({"inpaint_token_fraction": float(np.mean(changed["inpaint"])),
              "replace_token_fraction": float(np.mean(changed["replace"])),
              "outpaint_original_max_abs_change": float(np.max(changed["outpaint_kept_max_abs"])),
              "outpaint_canvas": [int(h), int(w)]})
    ctx.metrics["edit"] = m
    ctx.add_text("edit", f"{len(picks)} held-out images (classes {[int(labels[i]) for i in picks]}), "
                 "`pipeline.generate.edit_inpaint` / `edit_replace` / `edit_outpaint` with the MVTM checkpoint "
                 f"(12 steps, cosine). Inpainting regenerates {m['inpaint_token_fraction']:.0%} of the tokens; "
                 f"replace {m['replace_token_fraction']:.0%}; outpainting grows {s}x{s} to {h}x{w} and leaves the "
                 f"original pixels within {m['outpaint_original_max_abs_change']:.3f} (feathered seam).")

