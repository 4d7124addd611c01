"""The ``maskgit-pipeline`` command line (click). Library code logs; this module prints and exits."""
from __future__ import annotations

import logging
import sys

import click

from maskgit_core.errors import MaskGITError

__all__ = ["main", "cli"]


class _Group(click.Group):
    """Turn the errors a user can cause into one clear line and exit code 2: a flag out of its
    range or an unknown choice (click's usage errors, which name the flag and what is allowed),
    the project's own errors (``MaskGITError``: shards, checkpoints, settings) and a path that does
    not exist or cannot be read. Any other exception is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            sys.exit(2)
        except MaskGITError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
            click.echo(f"error: {e.filename or ''}: {e.strerror or e}" if e.filename else f"error: {e}", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """MaskGIT as production software: tokenize once, train on token shards, decode in ~8 steps."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- each area keeps its commands in its own module of this package
from pipeline.cli import convert, data, demo, evaluate, generate, sample_set, studio, train  # noqa: E402

for _area in (data, train, generate, evaluate, sample_set, demo, convert, studio):
    _area.register(cli)


def main() -> None:
    cli(prog_name="maskgit-pipeline")


if __name__ == "__main__":
    main()
