"""CLI commands of the training area: ``train`` (runs the deepspeed launcher) and ``train-export``."""
from __future__ import annotations

import json

import click
from maskgit_core.errors import ConfigError

from pipeline.cli._options import (POSITIVE_INT, Command, check_dataset_path, deprecated_option, verb_of,
                                   warn_deprecated)

__all__ = ["register", "train_cmd", "train_export_cmd", "check_overrides"]


#: keys that have their own spelling on the command line, not KEY=VALUE
_OWN_FLAGS = {"data": "DATASET (the first argument)", "out": "--out", "objective": "--objective"}


def check_overrides(items: tuple[str, ...]) -> list[str]:
    """KEY=VALUE TrainConfig overrides, checked before the launcher starts: the form, the key
    names (unknown ones list the valid ones) and keys that have their own flag."""
    import dataclasses

    from pipeline.train.config import TrainConfig, parse_overrides

    over = parse_overrides(list(items))
    own = sorted(k for k in over if k in _OWN_FLAGS)
    if own:
        raise ConfigError(f"{own[0]}= is set with {_OWN_FLAGS[own[0]]}, not as KEY=VALUE")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(over) - names)
    if unknown:
        raise ConfigError(f"unknown training config keys {unknown} in KEY=VALUE; valid keys are {sorted(names)}")
    return list(items)


@click.command("train", cls=Command)
@click.argument("dataset")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--out", required=True, help="Run directory (checkpoints/, export/, metrics.jsonl, tb/).")
@click.option("--nproc", type=POSITIVE_INT, default=2, show_default=True,
              help="Local ranks (GPUs, or CPU processes); the deepspeed launcher's --num_gpus.")
@click.option("--objective", type=click.Choice(["mvtm", "ar"]), default="mvtm", show_default=True,
              help="mvtm, or ar for the causal autoregressive baseline on the same data.")
@click.option("--config", "config", default=None, type=click.Path(exists=True, dir_okay=False),
              help="TrainConfig JSON (e.g. jobs/train_debug.json).")
@click.option("--ds-config", default=None, type=click.Path(exists=True, dir_okay=False),
              help="DeepSpeed JSON (default: jobs/ds_config.json on GPU, jobs/ds_config_cpu.json on CPU).")
@click.option("--resume", default="auto", show_default=True,
              help="auto (the newest complete checkpoint in --out, else a fresh start), none (start fresh), "
                   "or a checkpoint tag such as step00000020.")
@click.option("--master-port", type=click.IntRange(1, 65535), default=29500, show_default=True)
@click.option("--max-restarts", type=click.IntRange(min=0), default=0, show_default=True,
              help="Restart a run whose rank died (killed, crashed) from its newest complete checkpoint up to N "
                   "times; an input error (exit code 2, e.g. a bad config) is never retried.")
@deprecated_option("-s", "--set", replaces="overrides", use="KEY=VALUE after DATASET", multiple=True)
def train_cmd(dataset, overrides, out, nproc, objective, config, ds_config, resume, master_port,
              max_restarts) -> None:
    """Train the MVTM transformer (or the AR baseline) on the token dataset DATASET with the
    deepspeed launcher. KEY=VALUE arguments override TrainConfig fields (JSON values).

    The launcher's output is shown as it comes and appended to OUT/train.log. With --max-restarts N
    a run whose rank died is restarted with --resume auto up to N times (each restart is logged).
    For multi-node runs start the deepspeed launcher on each node (docs/TRAIN.md).

    \b
    Example:
      maskgit-pipeline train tokens/ --out runs/debug --nproc 2 --config jobs/train_debug.json steps=40
    """
    check_dataset_path(dataset)
    items = check_overrides(overrides)
    if resume == "":
        warn_deprecated(f"{verb_of(click.get_current_context())} --resume ''", "--resume none")
        resume = "none"

    from pipeline.train.launcher import run_training

    summary = run_training(data=dataset, out=out, nproc=nproc, objective=objective, config=config,
                           ds_config=ds_config, resume=None if resume == "none" else resume, overrides=items,
                           master_port=master_port, max_restarts=max_restarts,
                           on_line=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(summary))


@click.command("train-export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model directory.")
@click.option("--tag", default=None, help="Checkpoint tag (default: the newest complete one).")
@click.option("--overwrite", is_flag=True, help="Write into a non-empty --out (its model files are replaced).")
@click.option("--no-provenance", is_flag=True, help="Keep local paths and bucket names out of config.json.")
def train_export_cmd(run_dir, out, tag, overwrite, no_provenance) -> None:
    """Export a training checkpoint to model.safetensors + config.json (what `sample` loads).

    \b
    Example:
      maskgit-pipeline train-export runs/debug --out ckpt/transformer
    """
    from maskgit_core.outputs import check_output_dir
    from pipeline.train.export import export_run

    check_output_dir(out, overwrite=overwrite)
    click.echo(str(export_run(run_dir, out, tag=tag, provenance=not no_provenance)))


def register(cli: click.Group) -> None:
    cli.add_command(train_cmd)
    cli.add_command(train_export_cmd)
