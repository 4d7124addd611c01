"""CLI for generation, editing and evaluation: ``sample``, ``edit replace|inpaint|outpaint``, ``eval``."""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
from maskgit_core.errors import ConfigError

__all__ = ["register"]


def _labels(classes: str, n: int) -> list[int]:
    try:
        cls = [int(c) for c in classes.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"--classes {classes!r} must be comma-separated integers, e.g. 1,207,980") from None
    if not cls or n <= 0:
        raise ConfigError("--classes needs at least one label and --n must be positive")
    return [c for c in cls for _ in range(n)]


def _device(name: str) -> str:
    from pipeline.generate.sampling import resolve_device

    return resolve_device(name)


@click.command("sample")
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Transformer checkpoint directory.")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=True),
              help="Tokenizer checkpoint directory.")
@click.option("--classes", required=True, help="Comma-separated class labels, e.g. 1,207,980.")
@click.option("--n", "n", type=int, default=8, show_default=True, help="Images per class.")
@click.option("--steps", type=int, default=8, show_default=True, help="Decoding steps T (MaskGIT only).")
@click.option("--schedule", default="cosine", show_default=True,
              help="Mask schedule: cosine, linear, square, cubic, sqrt, log, exp.")
@click.option("--seed", type=int, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--choice-temperature", type=float, default=4.5, show_default=True)
@click.option("--guidance-scale", type=float, default=0.0, show_default=True,
              help="Classifier-free guidance w (0 = off): logits = c + w (c - u).")
@click.option("--guidance-schedule", default="constant", show_default=True, help="constant, linear or cosine.")
@click.option("--null-label", type=int, default=None, help="The model's 'no class' label for CFG.")
@click.option("--order", default="confidence", show_default=True, help="confidence (official) or halton.")
@click.option("--top-k", type=int, default=None, help="Top-k token sampling (off by default).")
@click.option("--ar", is_flag=True, help="The checkpoint is the causal AR baseline: sample with a KV cache.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="AR token temperature.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--save-steps", is_flag=True, help="Also write each image's per-step mask/prediction strip (Fig. 3).")
@click.option("--npz", "npz_path", type=click.Path(dir_okay=False), default=None,
              help="Also write images (N,H,W,3) uint8 + labels as .npz (input of `eval`).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda or auto.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Grid PNG; images go to <out stem>/.")
def sample_cmd(checkpoint, tokenizer_dir, classes, n, steps, schedule, seed, choice_temperature, guidance_scale,
               guidance_schedule, null_label, order, top_k, ar, temperature, batch_size, save_steps, npz_path,
               device, out) -> None:
    """Generate class-conditional images: a grid PNG plus one PNG per image.

    \b
    Example:
      maskgit-pipeline sample --checkpoint ckpt/official256 --tokenizer ckpt/official256 \\
          --classes 1,207,980 --n 8 --steps 8 --schedule cosine --seed 0 --out grid.png
    """
    from pipeline.cli.progress import Progress
    from pipeline.generate import load_pair, make_grid, save_png, step_progression
    from pipeline.generate.sampling import sample_batches

    labels = _labels(classes, n)
    model, vq = load_pair(checkpoint, tokenizer_dir, device=_device(device))
    if ar != model.config.causal:
        raise ConfigError(f"--ar {'given' if ar else 'missing'} but the checkpoint is "
                          f"{'causal (AR baseline): add --ar' if model.config.causal else 'a MaskGIT model: drop --ar'}")
    if save_steps and ar:
        raise ConfigError("--save-steps shows MaskGIT's parallel steps; it does not apply to --ar")
    out = Path(out)
    img_dir = out.with_suffix("")
    all_imgs = []
    batches = sample_batches(model, vq, labels, batch_size=batch_size, seed=seed, ar=ar, temperature=temperature,
                             top_k=top_k, record=save_steps, steps=steps, schedule=schedule,
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
    save_png(make_grid(imgs, nrow=n), out)
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
        click.option("--class", "label", type=int, required=True, help="Class label to condition on."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--schedule", default="cosine", show_default=True),
        click.option("--device", default="auto", show_default=True),
        click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG."),
    ]):
        f = opt(f)
    return f


def _load_for_edit(checkpoint, tokenizer_dir, image, device):
    from pipeline.generate import load_image, load_pair

    model, vq = load_pair(checkpoint, tokenizer_dir, device=_device(device))
    img, rule = load_image(image, vq.config.image_size)
    click.echo(f"resize rule: {rule}")
    return model, vq, img


def _write_edit(res, out) -> None:
    from pipeline.generate import save_png

    save_png(np.clip(np.rint(res.image * 255), 0, 255).astype(np.uint8), out)
    click.echo(f"wrote {out} ({int(res.token_mask.sum())} tokens regenerated)")


@edit_group.command("replace")
@_edit_common
@click.option("--bbox", required=True, help="top_left_height_width in pixels of the resized image.")
@click.option("--steps", type=int, default=12, show_default=True)
@click.option("--start-iter", type=int, default=2, show_default=True)
def replace_cmd(checkpoint, tokenizer_dir, image, label, seed, schedule, device, out, bbox, steps, start_iter):
    """Official class-conditional replacement of a box (one-token margin, blurred composite).

    \b
    Example:
      maskgit-pipeline edit replace --checkpoint ckpt/official256 --tokenizer ckpt/official256 \\
          --image dog.jpg --bbox 64_32_128_144 --class 207 --out cat.png
    """
    from transformer.editing import parse_bbox

    from pipeline.generate import edit_replace

    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, device)
    _write_edit(edit_replace(model, vq, img, parse_bbox(bbox), label, steps=steps, start_iter=start_iter,
                             schedule=schedule, seed=seed), out)


@edit_group.command("inpaint")
@_edit_common
@click.option("--mask", "mask_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Mask image: white (>127) = regenerate. Resized/cropped like the image (nearest).")
@click.option("--dilation", type=int, default=0, show_default=True, help="Grow the token mask by N tokens.")
@click.option("--feather", type=int, default=None, help="Blend ramp in px (default: one patch).")
@click.option("--steps", type=int, default=12, show_default=True)
def inpaint_cmd(checkpoint, tokenizer_dir, image, label, seed, schedule, device, out, mask_path, dilation, feather,
                steps):
    """Inpaint: tokens whose patch touches the mask are regenerated, then a feathered blend.

    \b
    Example:
      maskgit-pipeline edit inpaint --checkpoint ckpt/ --tokenizer ckpt/ --image in.png \\
          --mask hole.png --class 3 --out filled.png
    """
    from pipeline.generate import edit_inpaint, load_mask

    from PIL import Image

    with Image.open(image) as im, Image.open(mask_path) as mk:
        if im.size != mk.size:
            raise ConfigError(f"--mask is {mk.size[0]}x{mk.size[1]} but --image is {im.size[0]}x{im.size[1]}; "
                              f"draw the mask at the image's size (both get the same resize/crop)")
    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, device)
    mask, _ = load_mask(mask_path, vq.config.image_size)
    _write_edit(edit_inpaint(model, vq, img, mask, label, steps=steps, schedule=schedule, seed=seed,
                             dilation=dilation, feather=feather), out)


@edit_group.command("outpaint")
@_edit_common
@click.option("--extend", required=True, help="Pixels per side, e.g. left=128,right=128 (rounded up to patches).")
@click.option("--steps", type=int, default=12, show_default=True)
@click.option("--stride", type=int, default=None, help="Window stride in tokens (default half the model grid).")
@click.option("--feather", type=int, default=None, help="Blend ramp in px at the seam (default one patch).")
def outpaint_cmd(checkpoint, tokenizer_dir, image, label, seed, schedule, device, out, extend, steps, stride,
                 feather):
    """Outpaint: grow the canvas on any side; new tokens are generated in overlapping model-size windows.

    \b
    Example:
      maskgit-pipeline edit outpaint --checkpoint ckpt/ --tokenizer ckpt/ --image in.png \\
          --extend left=128,right=128 --class 980 --out wide.png
    """
    from transformer.editing import parse_extend

    from pipeline.generate import edit_outpaint

    model, vq, img = _load_for_edit(checkpoint, tokenizer_dir, image, device)
    _write_edit(edit_outpaint(model, vq, img, parse_extend(extend), label, steps=steps, schedule=schedule,
                              seed=seed, stride=stride, feather=feather), out)


@click.command("eval")
@click.option("--generated", required=True, type=click.Path(exists=True),
              help="Generated images: .npz (images/arr_0 + labels) from `sample --npz`, or a PNG folder.")
@click.option("--reference", required=True, type=click.Path(exists=True),
              help="Real images (.npz or folder) or reference statistics .npz (mu, sigma[, features]).")
@click.option("--classifier", "classifier_dir", default=None, type=click.Path(file_okay=False),
              help="Proxy feature classifier directory (trained with --train-classifier).")
@click.option("--inception", "inception_path", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Local FID InceptionV3 weights (pt_inception-2015-12-05-*.pth) instead of the proxy.")
@click.option("--train-classifier", is_flag=True,
              help="Train the proxy classifier on the labelled --reference images and save it to --classifier.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Classifier training epochs.")
@click.option("--save-reference", type=click.Path(dir_okay=False), default=None,
              help="Write the reference statistics (.npz) for later runs.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics as JSON.")
def eval_cmd(generated, reference, classifier_dir, inception_path, train_classifier, epochs, save_reference,
             json_out) -> None:
    """FID, IS, k-NN precision/recall and classifier accuracy on generated images (CAS), with proxy features.

    \b
    Example:
      maskgit-pipeline eval --generated gen.npz --reference val.npz --classifier clf/ --train-classifier
    """
    from pipeline import evaluation as ev

    if (classifier_dir is None) == (inception_path is None):
        raise ConfigError("pass exactly one feature extractor: --classifier DIR (the project's proxy) or "
                          "--inception FILE (local FID InceptionV3 weights)")
    ref_imgs, ref_labels, ref_stats = None, None, None
    ref_path = Path(reference)
    if ref_path.is_file():
        ref = ev.load_reference(ref_path)
        ref_imgs, ref_labels = ref.get("images"), ref.get("labels")
        ref_stats = ref if "mu" in ref else None
    else:
        ref_imgs, ref_labels = ev.load_image_set(ref_path)
    if inception_path:
        from pipeline.evaluation.inception import load_inception

        if train_classifier:
            raise ConfigError("--train-classifier trains the proxy; it does not apply with --inception")
        clf = load_inception(inception_path)
    elif train_classifier:
        if ref_imgs is None or ref_labels is None:
            raise ConfigError("--train-classifier needs labelled real images in --reference (an .npz with images "
                              "and labels, or a folder with labels.txt)")
        clf = ev.train_feature_classifier(ref_imgs, ref_labels, epochs=epochs)
        ev.save_classifier(clf, classifier_dir)
        click.echo(f"trained proxy classifier {clf.name} -> {classifier_dir}")
    else:
        clf = ev.load_classifier(classifier_dir)
    gen_imgs, gen_labels = ev.load_image_set(generated)
    if ref_imgs is not None and (ref_stats is None or "features" not in ref_stats):
        ref_stats = ev.reference_stats(ref_imgs, clf)
    if save_reference:
        ev.save_reference(ref_stats, save_reference)
    m = ev.compute_metrics(gen_imgs, classifier=clf, gen_labels=gen_labels, ref_stats=ref_stats)
    for key, val in m.items():
        click.echo(f"{key}: {val:.4f}" if isinstance(val, float) else f"{key}: {val}")
    if not inception_path:
        click.echo("note: features are a project-trained proxy, not InceptionV3; not comparable with published FIDs")
    if json_out:
        Path(json_out).write_text(json.dumps(m, indent=2))


def register(cli: click.Group) -> None:
    cli.add_command(sample_cmd)
    cli.add_command(edit_group)
    cli.add_command(eval_cmd)
