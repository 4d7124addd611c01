"""The docs' commands are true: every ``maskgit-pipeline <verb> ...`` and ``jobs/train_mvtm.py ...``
command in README.md and docs/*.md uses a verb that exists and only current (not deprecated) flags
of it; every repository file the docs name exists; no doc points outside the repository.
Fast: it reads the click command tree and the entry script's parser, and loads no model."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import click
import pytest

from pipeline.cli import cli
from pipeline.cli._options import DeprecatedOption

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_INLINE = re.compile(r"`([^`\n]+)`")
_STOP = {"|", "||", "&&", ";", ">", ">>", "->", "&"}
_FILE = re.compile(r"(?<![\w./-])((?:jobs|bench|tests|pipeline|tokenizer|transformer|maskgit_core|docs)"
                   r"/[\w./-]*?\.(?:py|json|sh|yaml|yml|md|toml|txt|png))(?![\w*])")
_OUTSIDE = re.compile(r"(?<![\w.])\.\./|/work/|(?<![\w-])shared/|STACK-NOTES")


def _snippets(text: str) -> list[str]:
    """Code of a markdown file: fenced blocks as logical lines (backslash continuations joined),
    then inline code spans of the prose."""
    out = []
    for block in _FENCE.findall(text):
        out += block.replace("\\\n", " ").splitlines()
    out += _INLINE.findall(_FENCE.sub("", text))
    return out


def _raw_words(line: str) -> list[str]:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # an apostrophe in prose
        words = line.split()
    out = []
    for w in words:
        if w in _STOP or w.startswith("#"):
            break
        out.append(w)
    return out


def _words(line: str) -> list[str]:
    return [w.strip("`[](),") for w in _raw_words(line)]


def _commands(marker: str) -> list[tuple[str, list[str]]]:
    """(doc name, words after ``marker``) for every snippet that runs ``marker``. In a diagram or
    a layout listing, `maskgit-pipeline` (a mention) is skipped and `maskgit-pipeline train` ends
    at its closing backtick."""
    found = []
    for doc in DOCS:
        for line in _snippets(doc.read_text()):
            raw = _raw_words(line)
            for i, r in enumerate(raw):
                w = r.strip("`[](),")
                if (w != marker and not w.endswith("/" + marker)) or r.endswith("`"):
                    continue
                rest = []
                for r2 in raw[i + 1:]:
                    rest.append(r2.strip("`[](),"))
                    if r2.endswith("`"):
                        break
                found.append((doc.name, rest))
    return found


def _flags(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if re.match(r"^--?[A-Za-z]", w)]


def _current_options(cmd: click.Command) -> set[str]:
    opts = {"-h", "--help"}
    for p in cmd.params:
        if isinstance(p, click.Option) and not isinstance(p, DeprecatedOption) and not p.hidden:
            opts.update(p.opts + p.secondary_opts)
    return opts


CLI_COMMANDS = _commands("maskgit-pipeline")


def test_docs_show_cli_commands():
    verbs = {w[0] for _, w in CLI_COMMANDS if w}
    assert {"tokenize", "verify", "inspect", "train", "sample", "edit", "eval", "convert", "demo"} <= verbs


@pytest.mark.parametrize("doc, words", [c for c in CLI_COMMANDS if c[1]],
                         ids=[f"{d}: {' '.join(w)[:60]}" for d, w in CLI_COMMANDS if w])
def test_cli_command_in_docs_uses_current_flags(doc, words):
    cmd, rest = cli, list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        if name in ("...", "|") or not re.match(r"^[a-z][a-z-]*$", name):
            return  # a placeholder such as `convert ...` or a diagram arrow
        assert name in cmd.commands, f"{doc}: `{' '.join(words)}`: {name!r} is not a verb of {cmd.name}"
        cmd = cmd.commands[name]
    if isinstance(cmd, click.Group) and not cmd.invoke_without_command:
        return  # a group that is only a namespace (`edit`); `eval` is a verb and a group at once
    bad = [f for f in _flags(rest) if f not in _current_options(cmd)]
    assert not bad, f"{doc}: `maskgit-pipeline {' '.join(words)}` uses {bad}, not current options of {cmd.name}"


def test_entry_script_commands_in_docs_use_its_flags():
    sys.path.insert(0, str(REPO))
    from jobs.train_mvtm import build_parser

    allowed = {s for a in build_parser()._actions for s in a.option_strings} - {"--deepspeed_config", "--local_rank"}
    commands = [c for c in _commands("jobs/train_mvtm.py") if c[1]]
    assert len(commands) >= 4
    for doc, words in commands:
        bad = [f for f in _flags(words) if f not in allowed]
        assert not bad, f"{doc}: `jobs/train_mvtm.py {' '.join(words)}` uses {bad}; the script takes {sorted(allowed)}"


def test_files_named_in_docs_exist():
    missing = []
    for doc in DOCS:
        for path in _FILE.findall(doc.read_text()):
            if not (REPO / path).exists():
                missing.append(f"{doc.name}: {path}")
    assert not missing, missing


def test_docs_do_not_point_outside_the_repository():
    hits = [f"{doc.name}:{i + 1}: {line.strip()}" for doc in DOCS
            for i, line in enumerate(doc.read_text().splitlines()) if _OUTSIDE.search(line)]
    assert not hits, hits


def test_checker_sees_deprecated_and_unknown_flags():
    """The checks above would catch a stale command (guards against a checker that sees nothing)."""
    sample = cli.commands["sample"]
    assert {"--per-class", "--decode-steps"} <= _current_options(sample)
    assert not {"--n", "--steps"} & _current_options(sample)
    assert not {"-s", "--set"} & _current_options(cli.commands["train"])
    words = _words("maskgit-pipeline sample --n 4 --steps 8 --out x.png  # comment --bogus")
    assert _flags(words[1:]) == ["--n", "--steps", "--out"]
    assert _FILE.findall("see jobs/my_train.json and jobs/ds_config*.json, (`bench/x.py`)") == \
        ["jobs/my_train.json", "bench/x.py"]
    assert _OUTSIDE.search("read ../shared/spec.md") and not _OUTSIDE.search("a shared-memory op")


def test_ray_job_commands_in_docs_use_tokenize_flags():
    """jobs/tokenize_imagenet.py takes exactly the flags of `maskgit-pipeline tokenize`."""
    allowed = _current_options(cli.commands["tokenize"])
    commands = [c for c in _commands("jobs/tokenize_imagenet.py") if c[1]]
    assert commands
    for doc, words in commands:
        bad = [f for f in _flags(words) if f not in allowed]
        assert not bad, f"{doc}: `jobs/tokenize_imagenet.py {' '.join(words)}` uses {bad}, not tokenize flags"


def _all_commands(group: click.Group = cli, prefix: str = ""):
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}", cmd
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, f"{prefix}{name} ")


def test_help_examples_use_current_flags():
    """The `Example:` lines of every verb's --help are commands too."""
    checked = 0
    for path, cmd in _all_commands():
        text = (cmd.help or "").replace("\\\n", " ")
        for line in text.splitlines():
            words = _words(line)
            if not words or words[0] != "maskgit-pipeline":
                continue
            target, rest = cli, words[1:]
            while isinstance(target, click.Group) and rest and rest[0] in target.commands:
                target = target.commands[rest.pop(0)]
            assert not isinstance(target, click.Group) or target.invoke_without_command, \
                f"{path} --help: `{line.strip()}` names no verb"
            bad = [f for f in _flags(rest) if f not in _current_options(target)]
            assert not bad, f"{path} --help: `{line.strip()}` uses {bad}"
            checked += 1
    assert checked >= 10
