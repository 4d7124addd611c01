"""The command line's one vocabulary (docs/CLI.md): shared option types with their ranges, the
deprecated spellings that still work for one release, and the checks that run at the boundary,
before any model loads (they read a checkpoint's config.json, never its weights)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from maskgit_core.errors import ConfigError

__all__ = ["Command", "DeprecatedOption", "verb_of", "deprecated_option", "warn_deprecated", "Schedule", "POSITIVE_INT",
           "NON_NEGATIVE_INT", "NON_NEGATIVE_FLOAT", "POSITIVE_FLOAT", "SEED", "DEVICES", "resolve_device",
           "parse_labels", "check_labels", "check_dataset_path", "transformer_config", "tokenizer_config"]

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0.0)
POSITIVE_FLOAT = click.FloatRange(min=0.0, min_open=True)
SEED = click.IntRange(min=0)
DEVICES = ("auto", "cpu", "cuda")


# --- deprecated spellings: hidden options folded into the current one, with a line on stderr

def verb_of(ctx: click.Context) -> str:
    """"sample", "edit inpaint": the command path without the program name."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(names))


def warn_deprecated(old: str, new: str) -> None:
    """The one deprecation line (stderr): the old spelling, the new one, and when the old one goes."""
    click.echo(f"warning: {old} is deprecated and will be removed in the next release; use {new}", err=True)


class DeprecatedOption(click.Option):
    """A hidden old spelling of the option named ``replaces`` (a parameter name); ``Command``
    folds its value into that option and prints the deprecation line."""

    def __init__(self, *args: Any, replaces: str, use: str, **kwargs: Any) -> None:
        kwargs["hidden"] = True
        super().__init__(*args, **kwargs)
        self.replaces = replaces
        self.use = use


def deprecated_option(*decls: str, replaces: str, use: str, **kwargs: Any):
    """``@deprecated_option("--n", replaces="per_class", use="--per-class", type=POSITIVE_INT)``."""
    name = f"deprecated_{replaces}_{decls[-1].lstrip('-').replace('-', '_')}"
    return click.option(*decls, name, cls=DeprecatedOption, replaces=replaces, use=use, **kwargs)


class Command(click.Command):
    """A command whose ``DeprecatedOption`` values land in the options they replace. Giving both
    spellings is an error; repeatable options (tuples) are joined, old values first."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        for p in self.params:
            if not isinstance(p, DeprecatedOption):
                continue
            value = ctx.params.pop(p.name, None)
            if ctx.get_parameter_source(p.name) != ParameterSource.COMMANDLINE:
                continue
            old = "/".join(p.opts)
            current = ctx.params.get(p.replaces)
            if isinstance(current, tuple):
                ctx.params[p.replaces] = tuple(value) + current
            elif ctx.get_parameter_source(p.replaces) == ParameterSource.COMMANDLINE:
                raise ConfigError(f"{old} and {p.use} given together; pass {p.use} only")
            else:
                ctx.params[p.replaces] = value
            warn_deprecated(f"{verb_of(ctx)} {old}", p.use)
        return rest


class Schedule(click.Choice):
    """A mask schedule name; the official spellings (uniform, pow2, ...) are accepted too."""

    def __init__(self) -> None:
        from transformer.schedules import SCHEDULES

        super().__init__(list(SCHEDULES))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from transformer.schedules import SCHEDULE_ALIASES

        return super().convert(SCHEDULE_ALIASES.get(value, value), param, ctx)


# --- checks at the boundary

def resolve_device(name: str) -> str:
    """``pipeline.generate.sampling.resolve_device``, imported when called (torch stays out of ``--help``)."""
    from pipeline.generate.sampling import resolve_device as resolve

    return resolve(name)


def parse_labels(text: str, *, flag: str = "--classes") -> list[int]:
    """"1,207,980" -> [1, 207, 980]; every label >= 0 (the upper bound needs the model's config)."""
    try:
        labels = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ConfigError(f"{flag} {text!r} must be comma-separated integers, e.g. 1,207,980") from None
    if not labels:
        raise ConfigError(f"{flag} needs at least one class label, e.g. 1,207,980")
    bad = [c for c in labels if c < 0]
    if bad:
        raise ConfigError(f"{flag}: class labels are >= 0, got {bad}")
    return labels


def check_labels(labels: list[int], num_classes: int, *, flag: str, checkpoint: str) -> None:
    """Every label < the model's num_classes."""
    bad = [c for c in labels if c >= num_classes]
    if bad:
        raise ConfigError(f"{flag} {bad}: the model at {checkpoint} has classes 0..{num_classes - 1}; "
                          "pass labels in that range")


def check_dataset_path(dataset: str) -> None:
    """A local DATASET must exist and look like a token dataset (a finished or an interrupted
    tokenize run); URLs are left to the reader."""
    if "://" in dataset:
        return
    p = Path(dataset)
    if not p.exists():
        raise ConfigError(f"DATASET {dataset}: no such directory; pass the folder `maskgit-pipeline tokenize` "
                          "wrote (it holds manifest.json)")
    if not p.is_dir() or not ((p / "manifest.json").is_file() or (p / "_tokenize").is_dir()):
        raise ConfigError(f"DATASET {dataset}: holds no token dataset (no manifest.json); pass the folder "
                          "`maskgit-pipeline tokenize` wrote")


def _config(path: str, *, kind: str, subdir: str, config_cls: type) -> Any:
    from maskgit_core.checkpoint_io import CONFIG, dataclass_from_dict, resolve_checkpoint_dir

    d = resolve_checkpoint_dir(path, kind, subdir)
    meta = json.loads((d / CONFIG).read_text())
    return dataclass_from_dict(config_cls, meta.get("config", {}), source=str(d / CONFIG)), meta


def transformer_config(path: str):
    """(TransformerConfig, config.json dict) of a transformer checkpoint, without its weights."""
    import transformer
    from transformer.config import TransformerConfig

    return _config(path, kind=transformer.KIND, subdir="transformer", config_cls=TransformerConfig)


def tokenizer_config(path: str):
    """(VQGANConfig, config.json dict) of a tokenizer checkpoint, without its weights."""
    import tokenizer
    from tokenizer.config import VQGANConfig

    return _config(path, kind=tokenizer.KIND, subdir="tokenizer", config_cls=VQGANConfig)
