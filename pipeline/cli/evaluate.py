"""CLI: ``eval`` (metrics of generated images against a reference, pixels streamed) and
``eval reference`` (reference statistics of a dataset source)."""
from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import click

from maskgit_core.errors import ConfigError
from pipeline.cli._options import DEVICES, POSITIVE_INT

__all__ = ["register", "eval_group"]


def _progress(desc: str):
    """A Progress bar per set, with images/s and ETA from the units done in this run."""
    from pipeline.cli.progress import Progress, format_eta

    bars: dict[str, tuple] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in bars:
            bars[what] = (Progress(f"{desc} {what}", unit="units", total=total), time.monotonic(), done)
        bar, t0, d0 = bars[what]
        el = time.monotonic() - t0
        rate = (done - d0) / el if el > 0 and done > d0 else None
        bar.update(done, total, eta=format_eta((total - done) / rate) if rate else "?")
        if done >= total:
            bar.close()

    return update


def _extractor(inception_path, classifier_dir) -> dict:
    from pipeline.evaluation.extraction import extractor_spec

    return extractor_spec(inception=inception_path, classifier=classifier_dir)


def _common(f):
    """Options shared by ``eval`` and ``eval reference``."""
    for opt in reversed([
        click.option("--classifier", "classifier_dir", default=None,
                     help="Proxy feature classifier directory (the project's own; see --train-classifier)."),
        click.option("--inception", "inception_path", default=None, type=click.Path(exists=True, dir_okay=False),
                     help="Local FID InceptionV3 weights (pt_inception-2015-12-05-*.pth); nothing is downloaded."),
        click.option("--batch-size", type=POSITIVE_INT, default=64, show_default=True, help="Images per forward pass."),
        click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True),
        click.option("--work-dir", default=None,
                     help="Keep per-unit features here (local or s3://) so a rerun resumes; needed with --ray-address."),
        click.option("--ray-address", default=None,
                     help="Extract units as Ray tasks (one GPU each when the cluster has GPUs): 'auto' or 'local'."),
    ]):
        f = opt(f)
    return f


@click.group("eval", invoke_without_command=True)
@click.option("--generated", default=None,
              help="Generated images: a sample-set folder (manifest + shards), an .npz (images/arr_0 [+ labels]) or "
                   "a PNG folder; local or s3://.")
@click.option("--reference", default=None,
              help="Statistics .npz (ours from `eval reference`, pytorch-fid's mu/sigma, ADM's reference batch) or "
                   "real images (any kind --generated takes, or a dataset source with --reference-size).")
@_common
@click.option("--inception-label-map", default=None, type=click.Path(exists=True, dir_okay=False),
              help="imagenet_2012_challenge_label_map_proto.pbtxt (or JSON synset->column): lets CAS use the "
                   "Inception's 1008 outputs.")
@click.option("--reference-size", type=POSITIVE_INT, default=None,
              help="--reference is a dataset source (ImageNet folder, tar-of-tars, WebDataset): centre-crop to this.")
@click.option("--k", "k", type=POSITIVE_INT, default=3, show_default=True, help="Neighbours for precision/recall.")
@click.option("--is-splits", type=POSITIVE_INT, default=10, show_default=True, help="Inception Score splits.")
@click.option("--train-classifier", is_flag=True,
              help="Train the proxy classifier on the labelled --reference images (in memory: small sets) and save "
                   "it to --classifier.")
@click.option("--epochs", type=POSITIVE_INT, default=10, show_default=True, help="Classifier training epochs.")
@click.option("--save-reference", type=click.Path(dir_okay=False), default=None,
              help="Write the reference statistics computed from --reference images (.npz) for later runs.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None, help="Write metrics as JSON.")
@click.pass_context
def eval_group(ctx, generated, reference, classifier_dir, inception_path, batch_size, device, work_dir, ray_address,
               inception_label_map, reference_size, k, is_splits, train_classifier, epochs, save_reference,
               json_out) -> None:
    """FID, IS, k-NN precision/recall and CAS of generated images against a reference.

    Pixels are streamed a batch at a time (50k images at 256 px in bounded memory); features go
    through the network on the GPU when there is one. `eval reference` builds reference statistics.

    \b
    Examples:
      maskgit-pipeline eval --generated samples/ --reference ref.npz --inception pt_inception.pth
      maskgit-pipeline eval --generated gen.npz --reference val.npz --classifier clf/ --train-classifier
    """
    if ctx.invoked_subcommand is not None:
        return
    if not generated or not reference:
        raise click.UsageError("eval needs --generated and --reference (or the subcommand `reference`)")
    from pipeline.evaluation.evaluate import evaluate_sets

    if train_classifier:
        _train_proxy(reference, classifier_dir, inception_path, epochs)
    spec = _extractor(inception_path, classifier_dir)
    m = evaluate_sets(generated, reference, spec, label_map=inception_label_map, k=k, is_splits=is_splits,
                      work_dir=work_dir, ray_address=ray_address, batch_size=batch_size, device=device,
                      image_size=reference_size, save_reference=save_reference, progress=_progress("features"))
    for key, val in m.items():
        click.echo(f"{key}: {val:.6g}" if isinstance(val, float) else f"{key}: {val}")
    if not inception_path:
        click.echo("note: features are a project-trained proxy, not InceptionV3; not comparable with published FIDs")
    if json_out:
        Path(json_out).write_text(json.dumps(m, indent=2))


def _train_proxy(reference: str, classifier_dir: str | None, inception_path: str | None, epochs: int) -> None:
    from pipeline import evaluation as ev

    if inception_path:
        raise ConfigError("--train-classifier trains the proxy; it does not apply with --inception")
    if classifier_dir is None:
        raise ConfigError("--train-classifier needs --classifier DIR to save the proxy classifier to")
    imgs, labels = ev.load_image_set(reference)
    if labels is None:
        raise ConfigError("--train-classifier needs labelled real images in --reference (an .npz with images and "
                          "labels, or a folder with labels.txt)")
    clf = ev.train_feature_classifier(imgs, labels, epochs=epochs)
    ev.save_classifier(clf, classifier_dir)
    click.echo(f"trained proxy classifier {clf.name} -> {classifier_dir}")


@eval_group.command("reference")
@click.argument("source")
@click.option("--out", required=True, help="Statistics .npz to write (local or s3://).")
@_common
@click.option("--image-size", type=POSITIVE_INT, default=256, show_default=True,
              help="ADM centre crop of each source image (the evaluation resolution).")
@click.option("--layout", default="auto", show_default=True,
              help="Source layout as `tokenize` reads it: auto, folder, imagenet, val-flat, tar-of-tars, webdataset.")
@click.option("--split", default=None, help="train or val for an ImageNet root.")
@click.option("--limit", type=POSITIVE_INT, default=None, help="Use only the first N images of the listing.")
@click.option("--no-features", is_flag=True,
              help="Keep only mu/sigma (no per-image features: smaller file, no precision/recall later).")
def reference_cmd(source, out, classifier_dir, inception_path, batch_size, device, work_dir, ray_address, image_size,
                  layout, split, limit, no_features) -> None:
    """Reference statistics (mu, sigma, features) of real images for `eval --reference`.

    SOURCE is a dataset source the tokenize job reads (ImageNet folder or root with --split,
    tar-of-tars, WebDataset shards; local or s3://), each image ADM centre-cropped to --image-size;
    or a sample set, an .npz of images, or a folder of same-size PNGs.

    \b
    Example:
      maskgit-pipeline eval reference imagenet/ --split val --out ref-val256.npz --inception pt_inception.pth
    """
    from pipeline.evaluation.evaluate import build_reference
    from pipeline.evaluation.image_sets import open_image_set

    spec = _extractor(inception_path, classifier_dir)
    image_set = open_image_set(source, source_size=image_size, layout=layout, split=split, limit=limit)
    click.echo(f"{source}: {image_set.num_images} images ({image_set.kind}), {len(image_set.units)} units")
    info = build_reference(image_set, spec, out, work_dir=work_dir, ray_address=ray_address, batch_size=batch_size,
                           device=device, keep_features=not no_features,
                           progress=functools.partial(_progress("features"), "reference"))
    click.echo(f"wrote {out}: {info['num_images']} images, {info['feature_name']}, {info['skipped']} skipped")
    for key, reason in info["skipped_first"]:
        click.echo(f"  skipped {key}: {reason}")


def register(cli: click.Group) -> None:
    cli.add_command(eval_group)
