"""CLI: ``sample-set``, a large sharded sample set (e.g. 50k images for FID), locally or on Ray."""
from __future__ import annotations

import click

from pipeline.cli._options import (DEVICES, NON_NEGATIVE_FLOAT, NON_NEGATIVE_INT, POSITIVE_INT, SEED, Command,
                                   Schedule, deprecated_option)

__all__ = ["register", "sample_set_cmd"]


@click.command("sample-set", cls=Command)
@click.option("--checkpoint", required=True, type=click.Path(exists=True), help="Transformer checkpoint directory.")
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(exists=True),
              help="Tokenizer checkpoint directory.")
@click.option("--per-class", type=POSITIVE_INT, default=50, show_default=True, help="Images per class (50 x 1000 = 50k).")
@click.option("--classes", default="all", show_default=True,
              help="'all' (every class of the checkpoint) or comma-separated labels, e.g. 1,207,980.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (shards + manifest).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Image i uses seed + i.")
@click.option("--decode-steps", type=POSITIVE_INT, default=8, show_default=True,
              help="Decoding steps T (MaskGIT only).")
@deprecated_option("--steps", replaces="decode_steps", use="--decode-steps", type=POSITIVE_INT)
@click.option("--schedule", type=Schedule(), default="cosine", show_default=True, help="Mask schedule (MaskGIT only).")
@click.option("--guidance-scale", type=NON_NEGATIVE_FLOAT, default=0.0, show_default=True,
              help="Classifier-free guidance w (0 = off).")
@click.option("--null-label", type=NON_NEGATIVE_INT, default=None, help="The model's 'no class' label for CFG.")
@click.option("--shard-size", type=POSITIVE_INT, default=1000, show_default=True, help="Images per shard file.")
@click.option("--batch-size", type=POSITIVE_INT, default=32, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True, help="cpu, cuda or auto (without --ray-address).")
@click.option("--ray-address", default=None,
              help="Run shards as Ray tasks: 'auto' for the cluster this runs in, 'local' to start one.")
@click.option("--overwrite", is_flag=True,
              help="Sample again into a non-empty --out (removes its shards, manifest and sample_set.json).")
def sample_set_cmd(checkpoint, tokenizer_dir, per_class, classes, out, seed, decode_steps, schedule, guidance_scale,
                   null_label, shard_size, batch_size, device, ray_address, overwrite) -> None:
    """Sample PER_CLASS images of each class into shards (.npz) with a manifest written last.

    Image i has noise seed SEED + i whatever the shard size or worker, so the same command gives
    the same set; a rerun with the same settings skips the shards already written, other settings
    in a non-empty --out are refused unless --overwrite.

    \b
    Example:
      maskgit-pipeline sample-set --checkpoint ckpt/ --tokenizer ckpt/ --per-class 50 --out samples/ \\
          --ray-address auto
    """
    from pipeline.cli.progress import Progress
    from pipeline.generate.sample_set import sample_set, set_labels

    labels = set_labels(checkpoint, classes, per_class)
    kw = {"steps": decode_steps, "schedule": schedule}
    if guidance_scale:
        kw.update(guidance_scale=guidance_scale, null_label=null_label)
    with Progress("sample-set", unit="shards") as bar:
        manifest = sample_set(checkpoint, tokenizer_dir, labels, out, seed=seed, shard_size=shard_size,
                              batch_size=batch_size, ray_address=ray_address, device=device,
                              progress=bar.update, overwrite=overwrite, **kw)
    click.echo(f"wrote {len(labels)} images: {manifest}")


def register(cli: click.Group) -> None:
    cli.add_command(sample_set_cmd)
