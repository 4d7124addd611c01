"""CLI for generation, editing and evaluation: ``sample``, ``edit replace|inpaint|outpaint`` (``eval`` is in ``evaluate.py``)."""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np
from maskgit_core.errors import ConfigError

from pipeline.cli._options import (NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, SEED,
                                   DEVICES, Command, Schedule, check_labels, deprecated_option, parse_labels,
                                   resolve_device, tokenizer_config, transformer_config)

__all__ = ["register", "MAX_EXTEND_FACTOR"]

#: outpaint grows each side by at most this many times the tokenizer's image size
MAX_EXTEND_FACTOR = 4


def _guidance_schedules() -> list[str]:
    from transformer.sampling import GUIDANCE_SCHEDULES

    return sorted(GUIDANCE_SCHEDULES)


def _orders() -> list[str]:
    from transformer.sampling import ORDERS

    return sorted(ORDERS)


@click.command("sample", cls=Command)
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Transformer checkpoint directory.")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=True),
              help="Tokenizer checkpoint directory.")
@click.option("--classes", required=True, help="Comma-separated class labels, e.g. 1,207,980.")
@click.option("--per-class", "per_class", type=POSITIVE_INT, default=8, show_default=True,
              help="Images per class (one grid row per class).")
@deprecated_option("--n", replaces="per_class", use="--per-class", type=POSITIVE_INT)
@click.option("--decode-steps", type=POSITIVE_INT, default=8, show_default=True,
              help="Decoding steps T (MaskGIT only).")
@deprecated_option("--steps", replaces="decode_steps", use="--decode-steps", type=POSITIVE_INT)
@click.option("--schedule", type=Schedule(), default="cosine", show_default=True, help="Mask schedule.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--choice-temperature", type=NON_NEGATIVE_FLOAT, default=4.5, show_default=True,
              help="Gumbel noise on the confidence that picks the tokens to keep (0 = pure confidence).")
@click.option("--guidance-scale", type=NON_NEGATIVE_FLOAT, default=0.0, show_default=True,
              help="Classifier-free guidance w (0 = off): logits = c + w (c - u).")
@click.option("--guidance-schedule", type=click.Choice(_guidance_schedules()), default="constant",
              show_default=True)
@click.option("--null-label", type=NON_NEGATIVE_INT, default=None, help="The model's 'no class' label for CFG.")
@click.option("--order", type=click.Choice(_orders()), default="confidence", show_default=True,
              help="confidence (official) or halton.")
@click.option("--top-k", type=POSITIVE_INT, default=None, help="Top-k token sampling (off by default).")
@click.option("--ar", is_flag=True, help="The checkpoint is the causal AR baseline: sample with a KV cache.")
@click.option("--temperature", type=POSITIVE_FLOAT, default=1.0, show_default=True, help="AR token temperature.")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True, help="Images per forward pass.")
@click.option("--save-steps", is_flag=True, help="Also write each image's per-step mask/prediction strip (Fig. 3).")
@click.option("--npz", "npz_path", type=click.Path(dir_okay=False), default=None,
              help="Also write images (N,H,W,3) uint8 + labels as .npz (input of `eval`).")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Grid PNG; images go to <out stem>/.")
def sample_cmd(checkpoint, tokenizer_dir, classes, per_class, decode_steps, schedule, seed, choice_temperature,
               guidance_scale, guidance_schedule, null_label, order, top_k, ar, temperature, batch_size, save_steps,
               npz_path, device, out) -> None:
    """Generate class-conditional images: a grid PNG plus one PNG per image.

    \b
    Example:
      maskgit-pipeline sample --checkpoint ckpt/official256 --tokenizer ckpt/official256 \\
          --classes 1,207,980 --per-class 8 --decode-steps 8 --schedule cosine --seed 0 --out grid.png
    """
    # every check a user can fail runs here, before the weights load
    labels = [c for c in parse_labels(classes) for _ in range(per_class)]
    if save_steps and ar:
        raise ConfigError("--save-steps shows MaskGIT's parallel steps; it does not apply to --ar")
    cfg, meta = transformer_config(checkpoint)
    if ar != cfg.causal:
        raise ConfigError(f"--ar {'given' if ar else 'missing'} but the checkpoint is "
                          f"{'causal (AR baseline): add --ar' if cfg.causal else 'a MaskGIT model: drop --ar'}")
    check_labels(sorted(set(labels)), cfg.num_classes, flag="--classes", checkpoint=checkpoint)
    if null_label is not None:
        check_labels([null_label], cfg.num_classes, flag="--null-label", checkpoint=checkpoint)
    if top_k is not None and top_k > cfg.codebook_size:
        raise ConfigError(f"--top-k {top_k}: the model has {cfg.codebook_size} codes; pass 1..{cfg.codebook_size}")
    tokenizer_config(tokenizer_dir)
    dev = resolve_device(device)

    from pipeline.cli.progress import Progress
    from pipeline.generate import load_pair, make_grid, save_png, step_progression
    from pipeline.generate.sampling import sample_batches

    model, vq = load_pair(checkpoint, tokenizer_dir, device=dev)
    out = Path(out)
    img_dir = out.with_suffix("")
    all_imgs = []
    batches = sample_batches(model, vq, labels, batch_size=batch_size, seed=seed, ar=ar, temperature=temperature,
                             top_k=top_k, record=save_steps, steps=decode_steps, schedule=schedule,
                             choice_temperature=choice_temperature, guidance_scale=guidance_scale,
                             guidance_schedule=guidance_schedule, null_label=null_label, order=order)
    with Progress("sampling", unit="img", total=len(labels)) as bar:
        for start, u8, _, res in batches:
            lb = labels[start:start + len(u8)]
            for j, (im, c) in enumerate(zip(u8, lb)):
                save_png(im, img_dir / f"{start + j:05d}_class{c}.png")
                if save_steps:
                    save_png(step_progression(vq, res, model.config.latent_size, index=j),
                             img_dir / "steps" / f"{start + j:05d}_class{c}.png")
            all_imgs.append(u8)
            bar.update(start + len(u8))
    imgs = np.concatenate(all_imgs)
    save_png(make_grid(imgs, nrow=per_class), out)
    if npz_path:
        Path(npz_path).parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz_path, images=imgs, labels=np.asarray(labels))
    click.echo(f"wrote {out} and {len(labels)} images in {img_dir}/"
               + (f" (per-step strips in {img_dir / 'steps'}/)" if save_steps else "")
               + (f"; {npz_path}" if npz_path else ""))


@click.group("edit")
def edit_group() -> None:
    """Edit an image with a MaskGIT model: replace a box's class, inpaint a mask, outpaint.

    \b
    Example:
      maskgit-pipeline edit replace --checkpoint ckpt/official256 --tokenizer ckpt/official256 \\
          --image dog.jpg --bbox 64_32_128_144 --class 207 --out cat.png
    """


def _edit_common(f):
    for opt in reversed([
        click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Transformer checkpoint."),
        click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=True),
                     help="Tokenizer checkpoint."),
        click.option("--image", required=True, type=click.Path(exists=True, dir_okay=False), help="Input image."),
        click.option("--class", "label", type=NON_NEGATIVE_INT, required=True, help="Class label to condition on."),
        click.option("--decode-steps", type=POSITIVE_INT, default=12, show_default=True, help="Decoding steps T."),
        deprecated_option("--steps", replaces="decode_steps", use="--decode-steps", type=POSITIVE_INT),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--schedule", type=Schedule(), default="cosine", show_default=True, help="Mask schedule."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG."),
    ]):
        f = opt(f)
    return f


def _check_edit(checkpoint, tokenizer_dir, label, device):
    """The checks an edit can fail before loading: the class label, both checkpoints, the device.
    Returns (tokenizer config, device)."""
    cfg, _ = transformer_config(checkpoint)
    check_labels([label], cfg.num_classes, flag="--class", checkpoint=checkpoint)
    vq_cfg, _ = tokenizer_config(tokenizer_dir)
    return vq_cfg, resolve_device(device)


def _load_for_edit(checkpoint, tokenizer_dir, image, device):
    from pipeline.generate import load_image, load_pair

    model, vq = load_pair(checkpoint, tokenizer_dir, device=device)
    img, rule = load_image(image, vq.config.image_size)
    click.echo(f"resize rule: {rule}")
    return model, vq, img


def _write_edit(res, out) -> None:
    from pipeline.generate import save_png

    save_png(np.clip(np.rint(res.image * 255), 0, 255).astype(np.uint8), out)
    click.echo(f"wrote {out} ({int(res.token_mask.sum())} tokens regenerated)")


@edit_group.command("replace", cls=Command)
@_edit_common
@click.option("--bbox", required=True, help="top_left_height_width in pixels of the resized image.")
@click.option("--start-iter", type=NON_NEGATIVE_INT, default=2, show_default=True,
              help="Decoding step to start from (official: 2 of 12); below --decode-steps.")
def replace_cmd(checkpoint, tokenizer_dir, image, label, decode_steps, seed, schedule, device, out, bbox, start_iter):
    """Official class-conditional replacement of a box (one-token margin, blurred composite).

    \b
    Example:
      maskgit-pipeline edit replace --checkpoint ckpt/official256 --tokenizer ckpt/official256 \\
          --image dog.jpg --bbox 64_32_128_144 --class 207 --out cat.png
    """
    from transformer.editing import parse_bbox

    box = parse_bbox(bbox)
    if start_iter >= decode_steps:
        raise ConfigError(f"--start-iter {start_iter} must be below --decode-steps ({decode_steps}): "
                          f"pass 0..{decode_steps - 1}")
    _, dev = _check_edit(checkpoint, tokenizer_dir, label, device)

    from pipeline.generate import edit_replace

    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, dev)
    _write_edit(edit_replace(model, vq, img, box, label, steps=decode_steps, start_iter=start_iter,
                             schedule=schedule, seed=seed), out)


@edit_group.command("inpaint", cls=Command)
@_edit_common
@click.option("--mask", "mask_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Mask image: white (>127) = regenerate. Resized/cropped like the image (nearest).")
@click.option("--dilation", type=NON_NEGATIVE_INT, default=0, show_default=True,
              help="Grow the token mask by N tokens.")
@click.option("--feather", type=NON_NEGATIVE_INT, default=None, help="Blend ramp in px (default: one patch).")
def inpaint_cmd(checkpoint, tokenizer_dir, image, label, decode_steps, seed, schedule, device, out, mask_path,
                dilation, feather):
    """Inpaint: tokens whose patch touches the mask are regenerated, then a feathered blend.

    \b
    Example:
      maskgit-pipeline edit inpaint --checkpoint ckpt/ --tokenizer ckpt/ --image in.png \\
          --mask hole.png --class 3 --out filled.png
    """
    from PIL import Image

    with Image.open(image) as im, Image.open(mask_path) as mk:
        if im.size != mk.size:
            raise ConfigError(f"--mask is {mk.size[0]}x{mk.size[1]} but --image is {im.size[0]}x{im.size[1]}; "
                              f"draw the mask at the image's size (both get the same resize/crop)")
    _, dev = _check_edit(checkpoint, tokenizer_dir, label, device)

    from pipeline.generate import edit_inpaint, load_mask

    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, dev)
    mask, _ = load_mask(mask_path, vq.config.image_size)
    _write_edit(edit_inpaint(model, vq, img, mask, label, steps=decode_steps, schedule=schedule, seed=seed,
                             dilation=dilation, feather=feather), out)


@edit_group.command("outpaint", cls=Command)
@_edit_common
@click.option("--extend", required=True,
              help=f"Pixels per side, e.g. left=128,right=128 (rounded up to patches; at most "
                   f"{MAX_EXTEND_FACTOR} x the tokenizer's image size per side).")
@click.option("--stride", type=POSITIVE_INT, default=None,
              help="Window stride in tokens (default half the model grid).")
@click.option("--feather", type=NON_NEGATIVE_INT, default=None,
              help="Blend ramp in px at the seam (default one patch).")
def outpaint_cmd(checkpoint, tokenizer_dir, image, label, decode_steps, seed, schedule, device, out, extend, stride,
                 feather):
    """Outpaint: grow the canvas on any side; new tokens are generated in overlapping model-size windows.

    \b
    Example:
      maskgit-pipeline edit outpaint --checkpoint ckpt/ --tokenizer ckpt/ --image in.png \\
          --extend left=128,right=128 --class 980 --out wide.png
    """
    from transformer.editing import parse_extend

    sides = parse_extend(extend)
    vq_cfg, dev = _check_edit(checkpoint, tokenizer_dir, label, device)
    cap = MAX_EXTEND_FACTOR * vq_cfg.image_size
    too_far = {s: v for s, v in sides.items() if v > cap}
    if too_far:
        raise ConfigError(f"--extend {','.join(f'{s}={v}' for s, v in too_far.items())}: at most {cap} px per side "
                          f"({MAX_EXTEND_FACTOR} x the tokenizer's {vq_cfg.image_size} px image); outpaint "
                          "in several passes for a larger canvas")

    from pipeline.generate import edit_outpaint

    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, dev)
    _write_edit(edit_outpaint(model, vq, img, sides, label, steps=decode_steps, schedule=schedule,
                              seed=seed, stride=stride, feather=feather), out)


def register(cli: click.Group) -> None:
    cli.add_command(sample_cmd)
    cli.add_command(edit_group)
