"""CLI: ``convert official`` and ``convert to-official`` (checkpoint formats)."""
from __future__ import annotations

import click

from pipeline.cli._options import POSITIVE_INT

__all__ = ["register"]


@click.group("convert")
def convert_group() -> None:
    """Convert checkpoints between the official MaskGIT format and this project's."""


@convert_group.command("official")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False),
              help="Official tokenizer file, e.g. tokenizer_imagenet256_checkpoint.")
@click.option("--transformer", "transformer_path", type=click.Path(exists=True, dir_okay=False),
              help="Official transformer file, e.g. maskgit_imagenet256_checkpoint.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--image-size", type=POSITIVE_INT, default=None,
              help="Tokenizer resolution when no transformer is given (default 256).")
@click.option("--num-classes", type=POSITIVE_INT, default=1000, show_default=True,
              help="Classes in the transformer's vocabulary when no tokenizer is given.")
@click.option("--num-groups", type=POSITIVE_INT, default=32, show_default=True,
              help="GroupNorm groups of the tokenizer (not stored in the file; official: 32).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out (its model files are replaced).")
@click.option("--no-provenance", is_flag=True,
              help="Record only the source files' sha256 in config.json, not their paths.")
def convert_official_cmd(tokenizer_path, transformer_path, out, image_size, num_classes, num_groups, overwrite,
                         no_provenance) -> None:
    """Read official Flax msgpack checkpoints (no JAX needed) and write safetensors + config.json.

    \b
    Example:
      maskgit-pipeline convert official \\
          --tokenizer tokenizer_imagenet256_checkpoint \\
          --transformer maskgit_imagenet256_checkpoint --out ckpt/official256
    """
    from maskgit_core.outputs import check_output_dir
    from pipeline.convert import convert_official

    check_output_dir(out, overwrite=overwrite)
    written = convert_official(out=out, tokenizer_path=tokenizer_path, transformer_path=transformer_path,
                               image_size=image_size, num_classes=num_classes,
                               num_groups=num_groups, provenance=not no_provenance)
    for kind, path in written.items():
        click.echo(f"{kind}: {path}")


@convert_group.command("to-official")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out (its files are replaced).")
def convert_to_official_cmd(checkpoint, out, overwrite) -> None:
    """Write a project checkpoint (tokenizer with the official shortcut, and/or transformer)
    as official-layout Flax msgpack files (weights only: no paths are recorded).

    \b
    Example:
      maskgit-pipeline convert to-official ckpt/official256 --out flax/
    """
    from maskgit_core.outputs import check_output_dir
    from pipeline.convert import export_official

    check_output_dir(out, overwrite=overwrite)
    for kind, path in export_official(checkpoint=checkpoint, out=out).items():
        click.echo(f"{kind}: {path}")


def register(cli: click.Group) -> None:
    cli.add_command(convert_group)
