"""The ``maskgit-pipeline`` command line (click). Library code logs; this module prints and exits."""
from __future__ import annotations

import logging
import sys

import click

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turn the library's input errors into one clear line and exit code 2, not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """MaskGIT as production software: tokenize once, train on token shards, decode in ~8 steps."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.group(cls=_Group)
def convert() -> None:
    """Convert checkpoints between the official MaskGIT format and this project's."""


@convert.command("official")
@click.option("--tokenizer", "tokenizer_path", type=click.Path(exists=True, dir_okay=False),
              help="Official tokenizer file, e.g. tokenizer_imagenet256_checkpoint.")
@click.option("--transformer", "transformer_path", type=click.Path(exists=True, dir_okay=False),
              help="Official transformer file, e.g. maskgit_imagenet256_checkpoint.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--image-size", type=int, default=None,
              help="Tokenizer resolution when no transformer is given (default 256).")
@click.option("--num-classes", type=int, default=1000, show_default=True,
              help="Classes in the transformer's vocabulary when no tokenizer is given.")
@click.option("--num-groups", type=int, default=32, show_default=True,
              help="GroupNorm groups of the tokenizer (not stored in the file; official: 32).")
def convert_official_cmd(tokenizer_path, transformer_path, out, image_size, num_classes, num_groups) -> None:
    """Read official Flax msgpack checkpoints (no JAX needed) and write safetensors + config.json.

    \b
    Example:
      maskgit-pipeline convert official \\
          --tokenizer tokenizer_imagenet256_checkpoint \\
          --transformer maskgit_imagenet256_checkpoint --out ckpt/official256
    """
    from .convert import convert_official

    written = convert_official(out=out, tokenizer_path=tokenizer_path, transformer_path=transformer_path,
                               image_size=image_size, num_classes=num_classes,
                               num_groups=num_groups)
    for kind, path in written.items():
        click.echo(f"{kind}: {path}")


@convert.command("to-official")
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
def convert_to_official_cmd(checkpoint, out) -> None:
    """Write a project checkpoint (tokenizer with the official shortcut, and/or transformer)
    as official-layout Flax msgpack files.

    \b
    Example:
      maskgit-pipeline convert to-official ckpt/official256 --out flax/
    """
    from .convert import export_official

    for kind, path in export_official(checkpoint=checkpoint, out=out).items():
        click.echo(f"{kind}: {path}")


# --- command registrations: each area keeps its commands in pipeline/cli_<area>.py ---
# (one `from . import cli_x` line plus `cli_x.register(cli)` per area, below)
from . import cli_tokenize  # noqa: E402
cli_tokenize.register(cli)
from . import cli_generate  # noqa: E402
cli_generate.register(cli)
from . import cli_demo  # noqa: E402
cli_demo.register(cli)
from . import cli_train  # noqa: E402
cli_train.register(cli)


def main() -> None:
    cli(prog_name="maskgit-pipeline")


if __name__ == "__main__":
    main()
