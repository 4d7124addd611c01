"""CLI commands of the demo area: ``make-demo-data``, ``train-tokenizer``, ``demo``."""
from __future__ import annotations

import sys

import click

from pipeline.cli._options import POSITIVE_FLOAT, POSITIVE_INT, SEED

__all__ = ["register"]


@click.command("make-demo-data")
@click.argument("out", metavar="SOURCE", type=click.Path(file_okay=False))
@click.option("--image-size", type=int, default=32, show_default=True, help="Side of the images (32-64 px).")
@click.option("--num-classes", type=int, default=16, show_default=True, help="Classes, one per built-in photo (10-16).")
@click.option("--train-per-class", type=int, default=200, show_default=True)
@click.option("--val-per-class", type=int, default=25, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the crops (same seed, same bytes).")
@click.option("--with-bad-files", is_flag=True,
              help="Also write truncated, empty, CMYK, grayscale and PNG-named-JPEG files (see bad_files.json).")
def make_demo_data_cmd(out, image_size, num_classes, train_per_class, val_per_class, seed, with_bad_files) -> None:
    """Write the built-in demo dataset (crops of scikit-image's photos, class = photo) in the
    ImageNet folder layout with JPEG files: SOURCE/train/<class>/*.JPEG, SOURCE/val/<class>/*.JPEG,
    SOURCE/classes.json (the SOURCE of `tokenize` and `train-tokenizer`).

    \b
    Example:
      maskgit-pipeline make-demo-data demo-data --with-bad-files
    """
    from pipeline.demo.data import DemoDataConfig, make_demo_dataset

    cfg = DemoDataConfig(image_size=image_size, num_classes=num_classes, train_per_class=train_per_class,
                         val_per_class=val_per_class, seed=seed, with_bad_files=with_bad_files)
    ds = make_demo_dataset(out, cfg)
    click.echo(f"{ds.root}: {len(ds.classes)} classes, {ds.num_train} train + {ds.num_val} val images"
               + (f", {len(ds.bad_files)} bad files (bad_files.json)" if ds.bad_files else ""))


@click.command("train-tokenizer")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--preset", default="demo", show_default=True, help="Tokenizer preset (architecture + recipe).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--steps", type=POSITIVE_INT, default=None, help="Optimizer steps (default: the preset's recipe).")
@click.option("--batch-size", type=POSITIVE_INT, default=None, help="Images per step (default: the preset's recipe).")
@click.option("--lr", type=POSITIVE_FLOAT, default=None, help="Peak learning rate (default: the preset's recipe).")
@click.option("--max-seconds", type=POSITIVE_FLOAT, default=None, help="Stop after this much training time.")
@click.option("--seed", type=SEED, default=None, help="Seed (default: the preset's recipe).")
@click.option("--threads", type=POSITIVE_INT, default=None,
              help="Torch threads (default: torch's; 1 is best when other jobs share the cores).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out (its model files are replaced).")
def train_tokenizer_cmd(source, preset, out, steps, batch_size, lr, max_seconds, seed, threads, overwrite) -> None:
    """Train a small VQGAN on a folder of images SOURCE (ImageNet layout SOURCE/train/<class>/*, or any
    folder of images) and write safetensors + config.json, with held-out PSNR and codebook usage.

    \b
    Example:
      maskgit-pipeline make-demo-data demo-data
      maskgit-pipeline train-tokenizer demo-data --preset demo --steps 300 --out ckpt/tokenizer
    """
    from dataclasses import replace

    from maskgit_core.outputs import check_output_dir
    from tokenizer.train import train_preset, train_tokenizer

    check_output_dir(out, overwrite=overwrite)
    cfg = train_preset(preset)
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, max_seconds=max_seconds,
                                       seed=seed, threads=threads).items() if v is not None}
    cfg = replace(cfg, **overrides)

    def on_log(rec: dict) -> None:
        click.echo(f"step {rec['step']:>5}/{cfg.steps}  loss {rec['loss']:.4f}  train PSNR "
                   f"{rec['train_psnr']:.2f} dB  {rec['seconds']:.0f} s")

    res = train_tokenizer(source, model_config=preset, config=cfg, out=out, on_log=on_log)
    m = res.metrics
    click.echo(f"images: {m['train_images']} for training, {m['val_images']} held out for evaluation")
    click.echo(f"held-out PSNR {m['psnr']:.2f} dB (init {m['init_psnr']:.2f}), codebook usage {m['usage']:.1%} "
               f"({m['codes_used']}/{m['codebook_size']}), perplexity {m['perplexity']:.1f}, "
               f"{m['steps']} steps in {m['seconds']:.0f} s")
    click.echo(f"tokenizer: {res.out}")


@click.command("demo")
@click.option("--out", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Report folder (report.md, metrics.json, figures/, data/, checkpoints).")
@click.option("--quick", is_flag=True, help="The small, ~3 minute variant.")
def demo_cmd(out, quick) -> None:
    """Run the whole pipeline offline on the built-in dataset and write a report folder.
    Stages that are not in this build are reported as such; the demo goes on.

    \b
    Example:
      maskgit-pipeline demo --quick --out demo-out
    """
    from pipeline.demo.run import run_demo
    from pipeline.demo.settings import DemoSettings

    settings = DemoSettings.quick() if quick else DemoSettings.full()
    ctx, records = run_demo(out, settings=settings, progress=click.echo)
    click.echo(f"report: {ctx.out / 'report.md'}")
    failed = [r.name for r in records if r.status == "failed"]
    if failed:
        click.echo(f"error: stage(s) failed: {', '.join(failed)} (see {ctx.out / 'report.md'})", err=True)
        sys.exit(1)


def register(cli: click.Group) -> None:
    """Add this area's commands to the ``maskgit-pipeline`` group."""
    for cmd in (make_demo_data_cmd, train_tokenizer_cmd, demo_cmd):
        cli.add_command(cmd)
