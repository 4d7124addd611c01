"""CLI commands of the training area: ``train`` (runs the deepspeed launcher) and ``train-export``."""
from __future__ import annotations

import json

import click

__all__ = ["register", "train_cmd", "train_export_cmd"]


@click.command("train")
@click.argument("data")
@click.option("--out", required=True, help="Run directory (checkpoints/, export/, metrics.jsonl, tb/).")
@click.option("--nproc", type=int, default=2, show_default=True, help="Local ranks (GPUs, or CPU processes).")
@click.option("--objective", type=click.Choice(["mvtm", "ar"]), default="mvtm", show_default=True,
              help="mvtm, or ar for the causal autoregressive baseline on the same data.")
@click.option("--config", "config", default=None, help="TrainConfig JSON (e.g. jobs/train_debug.json).")
@click.option("--ds-config", default=None, help="DeepSpeed JSON (default: jobs/ds_config.json on GPU, "
                                                 "jobs/ds_config_cpu.json on CPU).")
@click.option("--resume", default="auto", show_default=True, help="'auto', a checkpoint tag, or '' to start over.")
@click.option("--master-port", type=int, default=29500, show_default=True)
@click.option("-s", "--set", "overrides", multiple=True, help="TrainConfig override key=value (repeatable).")
def train_cmd(data, out, nproc, objective, config, ds_config, resume, master_port, overrides) -> None:
    """Train the MVTM transformer (or the AR baseline) on token shards with the deepspeed launcher.

    The launcher's output is shown as it comes and appended to OUT/train.log.
    For multi-node runs call `deepspeed --hostfile ...` directly (docs/TRAIN.md).

    \b
    Example:
      maskgit-pipeline train tokens/ --out runs/debug --nproc 2 --config jobs/train_debug.json -s steps=40
    """
    from pipeline.train.launcher import run_training

    summary = run_training(data=data, out=out, nproc=nproc, objective=objective, config=config,
                           ds_config=ds_config, resume=resume or None, overrides=list(overrides),
                           master_port=master_port, on_line=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(summary))


@click.command("train-export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output model directory.")
@click.option("--tag", default=None, help="Checkpoint tag (default: the newest complete one).")
def train_export_cmd(run_dir, out, tag) -> None:
    """Export a training checkpoint to model.safetensors + config.json (what `sample` loads).

    \b
    Example:
      maskgit-pipeline train-export runs/debug --out ckpt/transformer
    """
    from pipeline.train.export import export_run

    click.echo(str(export_run(run_dir, out, tag=tag)))


def register(cli: click.Group) -> None:
    cli.add_command(train_cmd)
    cli.add_command(train_export_cmd)
