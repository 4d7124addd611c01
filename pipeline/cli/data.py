"""CLI: ``tokenize``, ``verify`` and ``inspect`` (token datasets). Prints and exits; the library logs."""
from __future__ import annotations

import json
import sys

import click

from tokenizer.preprocess import AUGMENTATIONS
from pipeline.cli._options import (NON_NEGATIVE_INT, POSITIVE_FLOAT, POSITIVE_INT, Command, check_dataset_path,
                                   deprecated_option)
from pipeline.data.sources import LABEL_MAPS, LAYOUTS

__all__ = ["register", "tokenize_cmd", "verify_cmd", "inspect_cmd"]

_FORMATS = {"parquet": ("parquet",), "webdataset": ("webdataset",), "both": ("parquet", "webdataset")}


@click.command("tokenize", cls=Command)
@click.argument("source")
@click.argument("dataset")
@click.option("--tokenizer", "tokenizer_dir", required=True,
              help="Tokenizer checkpoint directory (model.safetensors + config.json): a local path, or an s3:// URL "
                   "(read by the driver; keeps the checkpoint out of `ray job submit --working-dir`).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True, help="Source layout.")
@click.option("--split", default=None, help="train or val, for an ImageNet root holding both (default train).")
@click.option("--label-map", type=click.Choice(LABEL_MAPS), default="sorted", show_default=True,
              help="Labels: position in the sorted class ids, or the ImageNet-1k index (for subsets).")
@click.option("--val-labels", default=None, help="Ground truth for a flat val folder (LOC_val_solution.csv).")
@click.option("--format", "fmt", type=click.Choice(sorted(_FORMATS)), default="parquet", show_default=True,
              help="Shard format(s) to write.")
@click.option("--augment", "augment", multiple=True, type=click.Choice(AUGMENTATIONS),
              help="Also store these views (repeatable): hflip, tencrop (from a 1.1x resize).")
@click.option("--shard-size", "unit_size", type=POSITIVE_INT, default=12288, show_default=True,
              help="Images per shard (per format): the unit a rerun resumes from.")
@deprecated_option("--unit-size", replaces="unit_size", use="--shard-size", type=POSITIVE_INT)
@click.option("--task-size", type=POSITIVE_INT, default=None,
              help="Images per Ray task (at most --shard-size); default: auto, ~64 MiB of decoded crops per task.")
@click.option("--batch-size", type=POSITIVE_INT, default=None,
              help="Images per encoder forward pass (default: 32 on CPU encoders, 64 on GPU encoders).")
@click.option("--search", type=click.Choice(["auto", "faiss", "torch"]), default="auto", show_default=True,
              help="Nearest-code search backend (identical ids).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Encoder device; auto uses GPU actors when the cluster has GPUs or GPU node types its autoscaler "
                   "can start (then asks for them and waits).")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16"]), default="fp32", show_default=True,
              help="Encoder precision (docs/TOKENIZE.md: token agreement of each with fp32).")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the encoder in each actor (falls back to eager with a warning).")
@click.option("--num-encoders", type=POSITIVE_INT, default=None,
              help="Encoder actors (default: one per GPU the cluster has or can start).")
@click.option("--gpu-timeout", "gpu_timeout_s", type=POSITIVE_FLOAT, default=900.0, show_default=True,
              help="Seconds to wait for the autoscaler's first GPU node when none is up.")
@click.option("--simulated-gpus", is_flag=True,
              help="Test only: GPU encoder actors run torch on the CPU (for Ray's fake autoscaling cluster, whose "
                   "GPU nodes declare GPUs they do not have).")
@click.option("--ray-address", default=None, help="Ray cluster to use (default: start a local one).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in DATASET (fail if there is none).")
def tokenize_cmd(source, dataset, tokenizer_dir, layout, split, label_map, val_labels, fmt, augment, unit_size,
                 task_size, batch_size, search, device, precision, compile_, num_encoders, gpu_timeout_s,
                 simulated_gpus, ray_address, resume) -> None:
    """Tokenize the images of SOURCE into the token dataset DATASET (a folder: local path or s3://, gs://).

    Exactly once: a rerun (or --resume) skips finished shards; manifest.json is written last.

    \b
    Example:
      maskgit-pipeline tokenize /data/imagenet ckpt/tokens-train --tokenizer ckpt/official256/tokenizer \\
          --split train --format both --augment hflip
    """
    from pipeline.cli.progress import Progress, format_eta
    from pipeline.data.tokenize_job import TokenizeConfig, run_tokenize

    cfg = TokenizeConfig(source=source, out=dataset, tokenizer=tokenizer_dir, layout=layout, split=split,
                         label_map=label_map, val_labels=val_labels, formats=_FORMATS[fmt],
                         augmentations=tuple(augment), unit_size=unit_size, task_size=task_size,
                         batch_size=batch_size, search=search,
                         device=device, precision=precision, compile=compile_, num_encoders=num_encoders,
                         gpu_timeout_s=gpu_timeout_s, simulated_gpus=simulated_gpus, ray_address=ray_address,
                         resume=resume)
    with Progress("tokenize", unit="units") as bar:
        r = run_tokenize(cfg, progress=lambda p: bar.update(
            p.units_done, p.units_total, images=f"{p.images_done}/{p.images_total}",
            img_per_s=p.images_per_s if p.images_per_s is not None else "?", eta=format_eta(p.eta_s)),
            notice=bar.note)
    c = r.manifest.counts
    click.echo(f"{dataset}: {c['samples']} samples, {c['errors']} errors of {c['images']} images; "
               f"{r.units_run} units run, {r.units_skipped} already done; {r.seconds:.1f} s")


@click.command("verify")
@click.argument("dataset")
@click.option("--source", default=None, help="Also check against this source's listing (every image once).")
@click.option("--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True)
@click.option("--split", default=None, help="Source split (default: the one in the manifest).")
@click.option("--val-labels", default=None, help="Ground truth for a flat val source.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_cmd(dataset, source, layout, split, val_labels, as_json) -> None:
    """Check a token dataset: manifest vs shards (counts, checksums, unique keys), and with --source
    that every source image is in exactly one shard or the error report. Exit 1 on problems.

    \b
    Example:
      maskgit-pipeline verify ckpt/tokens-train --source /data/imagenet
    """
    from pipeline.cli.progress import Progress
    from pipeline.data.verify import verify_dataset

    check_dataset_path(dataset)
    with Progress("verify", unit="shards") as bar:
        rep = verify_dataset(dataset, source=source, layout=layout, split=split, val_labels=val_labels,
                             progress=bar.update)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=1))
    else:
        for p in rep.problems:
            click.echo(f"problem: {p}")
        src = f", source {rep.source_images} images" if rep.source_images is not None else ""
        click.echo(f"{'OK' if rep.ok else 'FAILED'}: {rep.shards} shards, {rep.samples} samples, "
                   f"{rep.errors} errors{src}")
    if not rep.ok:
        sys.exit(1)


@click.command("inspect")
@click.argument("dataset")
@click.option("--tokenizer", "tokenizer_dir", default=None, type=click.Path(exists=True, file_okay=False),
              help="Tokenizer that made DATASET; with it, a PNG grid of decoded samples is written.")
@click.option("--report-dir", default="inspect_report", show_default=True, help="Where to write JSON and PNGs.")
@click.option("--samples", "num_samples", type=NON_NEGATIVE_INT, default=16, show_default=True,
              help="Samples in the grid.")
def inspect_cmd(dataset, tokenizer_dir, report_dir, num_samples) -> None:
    """Per-class counts, codebook usage histogram, perplexity, dead codes, and decoded samples.

    \b
    Example:
      maskgit-pipeline inspect ckpt/tokens-train --tokenizer ckpt/official256/tokenizer --report-dir rep/
    """
    from pipeline.cli.progress import Progress
    from pipeline.data.inspect import inspect_dataset

    check_dataset_path(dataset)
    with Progress("inspect", unit="shards") as bar:
        rep = inspect_dataset(dataset, report_dir=report_dir, tokenizer_dir=tokenizer_dir, num_samples=num_samples,
                              progress=bar.update)
    u = rep.usage
    click.echo(f"{rep.samples} samples in {len(rep.class_counts)} classes; codes used {u['codes_used']}/"
               f"{len(u['counts'])}, dead {u['dead_codes']}, perplexity {u['perplexity']:.1f}")
    for name, path in rep.files.items():
        click.echo(f"{name}: {path}")


def register(cli: click.Group) -> None:
    cli.add_command(tokenize_cmd)
    cli.add_command(verify_cmd)
    cli.add_command(inspect_cmd)
