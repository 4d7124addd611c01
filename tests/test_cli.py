"""The command line's boundary (docs/CLI.md): every value a user can get wrong fails with exit code 2
and one line naming the flag and what is allowed, before any model loads; the deprecated spellings
still work for one release and say so on stderr; the entry script speaks the same words."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tokenizer
import transformer
from pipeline.cli import cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), d / "tok")
    transformer.save(transformer.build("debug", latent_size=8), d / "mvtm")
    transformer.save(transformer.build("debug", latent_size=8, causal=True), d / "ar")
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(d / "in.png")
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    Image.fromarray(mask).save(d / "mask.png")
    (d / "tokens").mkdir()
    (d / "tokens" / "manifest.json").write_text("{}")  # enough for the path check; never read here
    (d / "empty").mkdir()
    return d


@pytest.fixture
def no_model(monkeypatch):
    """Loading any model (or launching training) fails the test: bad values must stop before."""
    import pipeline.generate
    import pipeline.train.launcher

    def loaded(*a, **k):
        raise AssertionError("a model was loaded before the values were checked")

    for mod, name in ((pipeline.generate, "load_pair"), (tokenizer, "load"), (transformer, "load"),
                      (pipeline.train.launcher, "run_training")):
        monkeypatch.setattr(mod, name, loaded)


def _invoke(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(r, match: str) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert re.search(match, lines[0]), lines[0]
    return lines[0]


def _sample(d, *extra):
    return ["sample", "--checkpoint", d / "mvtm", "--tokenizer", d / "tok", "--classes", "1,2", "--device", "cpu",
            "--out", d / "never.png", *extra]


SAMPLE_ERRORS = [
    (["--batch-size", "0"], r"'--batch-size': 0 is not in the range x>=1"),
    (["--per-class", "0"], r"'--per-class': 0 is not in the range x>=1"),
    (["--decode-steps", "0"], r"'--decode-steps': 0 is not in the range x>=1"),
    (["--top-k", "0"], r"'--top-k': 0 is not in the range x>=1"),
    (["--top-k", "100000"], r"--top-k 100000: the model has \d+ codes; pass 1\.\.\d+"),
    (["--choice-temperature", "-1"], r"'--choice-temperature': -1\.0 is not in the range x>=0"),
    (["--temperature", "0"], r"'--temperature': 0\.0 is not in the range x>0"),
    (["--guidance-scale", "-0.5"], r"'--guidance-scale': -0\.5 is not in the range x>=0"),
    (["--null-label", "-1"], r"'--null-label': -1 is not in the range x>=0"),
    (["--null-label", "99"], r"--null-label \[99\]: the model at .* has classes 0\.\.\d+"),
    (["--seed", "-3"], r"'--seed': -3 is not in the range x>=0"),
    (["--schedule", "zigzag"], r"'--schedule': 'zigzag' is not one of 'cosine'"),
    (["--order", "random"], r"'--order': 'random' is not one of 'confidence', 'halton'"),
    (["--guidance-schedule", "steep"], r"'--guidance-schedule': 'steep' is not one of"),
    (["--device", "tpu"], r"'--device': 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
    (["--classes", "1,x"], r"--classes '1,x' must be comma-separated integers"),
    (["--classes", "-1"], r"--classes: class labels are >= 0"),
    (["--classes", "3,999"], r"--classes \[999\]: the model at .* has classes 0\.\.\d+; pass labels in that range"),
    (["--classes", ","], r"--classes needs at least one class label"),
    (["--ar", "--save-steps"], r"--save-steps .* does not apply to --ar"),
    (["--ar"], r"--ar given but the checkpoint is a MaskGIT model: drop --ar"),
    (["--n", "2", "--per-class", "3"], r"--n and --per-class given together; pass --per-class only"),
]


@pytest.mark.parametrize("extra, match", SAMPLE_ERRORS, ids=[" ".join(e) for e, _ in SAMPLE_ERRORS])
def test_sample_rejects_bad_values_before_loading(ckpts, no_model, extra, match):
    _one_line_error(_invoke(_sample(ckpts, *extra)), match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a build without CUDA")
def test_device_cuda_without_cuda_is_one_line(ckpts, no_model):
    _one_line_error(_invoke(_sample(ckpts, "--device", "cuda")), r"--device cuda, but .* sees no CUDA device; "
                                                                r"use --device cpu")
    _one_line_error(_invoke(_edit(ckpts, "replace", "--bbox", "8_8_8_8", "--device", "cuda")), "--device cuda")


def _edit(d, verb, *extra):
    return ["edit", verb, "--checkpoint", d / "mvtm", "--tokenizer", d / "tok", "--image", d / "in.png",
            "--class", "2", "--out", d / "never.png", *extra]


EDIT_ERRORS = [
    ("outpaint", ["--extend", "left=4000000", "--device", "cpu"],
     r"--extend left=4000000: at most 128 px per side \(4 x the tokenizer's 32 px image\)"),
    ("outpaint", ["--extend", "up=16"], r"--extend item 'up=16' must be SIDE=PIXELS"),
    ("outpaint", ["--extend", "left=16", "--stride", "0"], r"'--stride': 0 is not in the range x>=1"),
    ("replace", ["--bbox", "8_8_8_8", "--start-iter", "12"], r"--start-iter 12 must be below --decode-steps \(12\)"),
    ("replace", ["--bbox", "8_8_8_8", "--decode-steps", "0"], r"'--decode-steps': 0 is not in the range x>=1"),
    ("replace", ["--bbox", "8_8_8_8", "--class", "999"], r"--class \[999\]: the model at .* has classes"),
    ("replace", ["--bbox", "8_8_8_8", "--class", "-1"], r"'--class': -1 is not in the range x>=0"),
    ("replace", ["--bbox", "8_8_8_8", "--schedule", "zigzag"], r"'--schedule': 'zigzag' is not one of"),
    ("inpaint", ["--mask", "MASK", "--dilation", "-1"], r"'--dilation': -1 is not in the range x>=0"),
    ("inpaint", ["--mask", "MASK", "--feather", "-2"], r"'--feather': -2 is not in the range x>=0"),
]


@pytest.mark.parametrize("verb, extra, match", EDIT_ERRORS, ids=[f"{v} {' '.join(e)}" for v, e, _ in EDIT_ERRORS])
def test_edit_rejects_bad_values_before_loading(ckpts, no_model, verb, extra, match):
    extra = [ckpts / "mask.png" if e == "MASK" else e for e in extra]
    _one_line_error(_invoke(_edit(ckpts, verb, *extra)), match)


def test_data_and_train_commands_reject_bad_values(ckpts, no_model, tmp_path):
    d = ckpts
    cases = [
        (["verify", tmp_path / "tokns"], r"DATASET .*tokns: no such directory"),
        (["verify", d / "empty"], r"DATASET .*empty: holds no token dataset \(no manifest\.json\)"),
        (["inspect", tmp_path / "tokns"], r"no such directory"),
        (["tokenize", d / "empty", tmp_path / "t", "--tokenizer", d / "tok", "--shard-size", "0"],
         r"'--shard-size': 0 is not in the range x>=1"),
        (["tokenize", d / "empty", tmp_path / "t", "--tokenizer", d / "tok", "--task-size", "0"],
         r"'--task-size': 0 is not in the range x>=1"),
        (["tokenize", d / "empty", tmp_path / "t", "--tokenizer", d / "tok", "--batch-size", "0"],
         r"'--batch-size': 0 is not in the range x>=1"),
        (["train", tmp_path / "tokns", "--out", tmp_path / "run"], r"DATASET .*tokns: no such directory"),
        (["train", d / "tokens", "--out", tmp_path / "run", "--nproc", "0"], r"'--nproc': 0 is not in the range"),
        (["train", d / "tokens", "--out", tmp_path / "run", "stepz=3"], r"unknown training config keys \['stepz'\]"),
        (["train", d / "tokens", "--out", tmp_path / "run", "data=/x"], r"data= is set with DATASET"),
        (["train", d / "tokens", "--out", tmp_path / "run", "--master-port", "0"], r"'--master-port': 0 is not in"),
        (["train", d / "tokens", "--out", tmp_path / "run", "--max-restarts", "-1"],
         r"'--max-restarts': -1 is not in the range x>=0"),
        (["train", d / "tokens", "--out", tmp_path / "run", "--config", tmp_path / "my_train.json"],
         r"'--config': File '.*my_train\.json' does not exist"),
        (["train-tokenizer", d / "empty", "--out", tmp_path / "tk", "--steps", "0"], r"'--steps': 0 is not in the"),
        (["train-tokenizer", d / "empty", "--out", tmp_path / "tk", "--lr", "0"], r"'--lr': 0\.0 is not in the range"),
        (["eval", "--generated", d / "in.png", "--reference", d / "in.png", "--epochs", "0"], r"'--epochs': 0 is not"),
        (["convert", "official", "--out", tmp_path / "c", "--num-groups", "0"], r"'--num-groups': 0 is not in"),
    ]
    for args, match in cases:
        _one_line_error(_invoke(args), match)


# --- deprecated spellings: they work, and say so on stderr

def _grid_images(folder: Path) -> dict[str, np.ndarray]:
    from PIL import Image

    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def test_sample_deprecated_n_and_steps_work_and_warn(ckpts, tmp_path):
    base = ["sample", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--classes", "1,2",
            "--device", "cpu"]
    old = _invoke(base + ["--n", "2", "--steps", "3", "--out", tmp_path / "old.png"])
    new = _invoke(base + ["--per-class", "2", "--decode-steps", "3", "--out", tmp_path / "new.png"])
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    assert "sample --n is deprecated and will be removed in the next release; use --per-class" in old.stderr
    assert "sample --steps is deprecated and will be removed in the next release; use --decode-steps" in old.stderr
    assert "deprecated" not in new.stderr
    a, b = _grid_images(tmp_path / "old"), _grid_images(tmp_path / "new")
    assert list(a) == list(b) and len(a) == 4 and all(np.array_equal(a[k], b[k]) for k in a)


def test_edit_deprecated_steps_works_and_warns(ckpts, tmp_path):
    r = _invoke(["edit", "inpaint", "--checkpoint", ckpts / "mvtm", "--tokenizer", ckpts / "tok", "--image",
                 ckpts / "in.png", "--mask", ckpts / "mask.png", "--class", "2", "--steps", "2", "--device", "cpu",
                 "--out", tmp_path / "inp.png"])
    assert r.exit_code == 0, r.output
    assert "edit inpaint --steps is deprecated" in r.stderr and "use --decode-steps" in r.stderr
    assert (tmp_path / "inp.png").is_file()


def test_train_new_and_deprecated_spellings_reach_the_launcher(ckpts, monkeypatch, tmp_path):
    import pipeline.train.launcher

    calls = []
    monkeypatch.setattr(pipeline.train.launcher, "run_training", lambda **kw: calls.append(kw) or {"step": 0})
    base = ["train", ckpts / "tokens", "--out", tmp_path / "run"]
    r = _invoke(base + ["steps=3", "save_every=1"])
    assert r.exit_code == 0 and "deprecated" not in r.stderr, r.output
    assert calls[-1]["overrides"] == ["steps=3", "save_every=1"] and calls[-1]["resume"] == "auto"
    assert calls[-1]["data"] == str(ckpts / "tokens")
    r = _invoke(base + ["-s", "steps=3", "--set", "log_every=2", "save_every=1", "--resume", "none"])
    assert r.exit_code == 0, r.output
    assert "train -s/--set is deprecated and will be removed in the next release; use KEY=VALUE after DATASET" \
        in r.stderr
    assert calls[-1]["overrides"] == ["steps=3", "log_every=2", "save_every=1"] and calls[-1]["resume"] is None
    r = _invoke(base + ["--resume", ""])
    assert r.exit_code == 0 and "train --resume '' is deprecated" in r.stderr and "use --resume none" in r.stderr
    assert calls[-1]["resume"] is None


def test_tokenize_shard_and_task_size_and_the_deprecated_unit_size(ckpts, monkeypatch, tmp_path):
    import pipeline.data.tokenize_job as job

    cfgs = []

    def fake_run(cfg, progress=None, notice=None):
        cfgs.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(job, "run_tokenize", fake_run)
    base = ["tokenize", ckpts / "empty", tmp_path / "t", "--tokenizer", ckpts / "tok"]
    r = _invoke(base)
    assert r.exit_code == 0 and (cfgs[-1].unit_size, cfgs[-1].task_size) == (job.UNIT_SIZE, None), r.output
    r = _invoke(base + ["--shard-size", "4096", "--task-size", "512"])
    assert r.exit_code == 0 and "deprecated" not in r.stderr, r.output
    assert (cfgs[-1].unit_size, cfgs[-1].task_size) == (4096, 512)
    r = _invoke(base + ["--unit-size", "256"])
    assert r.exit_code == 0 and cfgs[-1].unit_size == 256, r.output
    assert "tokenize --unit-size is deprecated and will be removed in the next release; use --shard-size" in r.stderr
    _one_line_error(_invoke(base + ["--unit-size", "256", "--shard-size", "512"]),
                    r"--unit-size and --shard-size given together; pass --shard-size only")
    assert (cfgs[-1].gpu_timeout_s, cfgs[-1].simulated_gpus) == (900.0, False)
    r = _invoke(base + ["--device", "cuda", "--num-encoders", "4", "--gpu-timeout", "60", "--simulated-gpus"])
    assert r.exit_code == 0 and (cfgs[-1].device, cfgs[-1].num_encoders) == ("cuda", 4), r.output
    assert (cfgs[-1].gpu_timeout_s, cfgs[-1].simulated_gpus) == (60.0, True)
    _one_line_error(_invoke(base + ["--gpu-timeout", "0"]), r"'--gpu-timeout': 0\.0 is not in the range x>0")


def test_entry_script_speaks_the_cli_words(tmp_path):
    """jobs/train_mvtm.py: --ds-config (and DeepSpeed's --deepspeed_config), --resume auto by default,
    --resume none to start fresh; the launcher the CLI runs passes exactly those."""
    sys.path.insert(0, str(REPO))
    from jobs.train_mvtm import build_parser
    from pipeline.train.launcher import deepspeed_command

    p = build_parser()
    a = p.parse_intermixed_args(["--ds-config", "x.json", "--data", "tok", "steps=3"])
    b = p.parse_intermixed_args(["--deepspeed_config", "x.json", "--data", "tok", "steps=3"])
    assert a.ds_config == b.ds_config == "x.json" and a.resume == b.resume == "auto"
    assert a.overrides == ["steps=3"]
    cmd = deepspeed_command(data="tok", out="run", resume=None, ds_config="x.json")
    args = p.parse_intermixed_args(cmd[cmd.index(next(c for c in cmd if c.endswith("train_mvtm.py"))) + 1:])
    assert args.resume == "none" and args.ds_config == "x.json" and args.data == "tok"
    cmd = deepspeed_command(data="tok", out="run", ds_config="x.json", overrides=["steps=2"])
    args = p.parse_intermixed_args(cmd[cmd.index(next(c for c in cmd if c.endswith("train_mvtm.py"))) + 1:])
    assert args.resume == "auto" and args.overrides == ["steps=2"]


def test_entry_script_bad_override_is_one_line(tmp_path):
    import subprocess

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 2}))
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "train_mvtm.py"), "--ds-config", str(ds), "--data",
                        "tok", "--out", str(tmp_path / "run"), "steps"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: override 'steps' is not key=value")
