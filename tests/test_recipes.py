"""The shipped ImageNet 256 recipe (jobs/imagenet256/) is the paper's class-conditional run and loads
through the project's real loaders: the TrainConfig JSON through ``load_train_config``, each
DeepSpeed JSON through DeepSpeed's own config class at the world size its name states, with
global batch 256 = micro-batch x GPUs x accumulation. Fast, CPU, no launcher, no process group."""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch

import transformer
from maskgit_core.errors import ConfigError
from pipeline.train.config import ds_batch_sizes, load_train_config

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "jobs" / "imagenet256"
IMAGENET_TRAIN = 1_281_167
GLOBAL_BATCH = 256
EPOCHS = 300
DS_CONFIGS = sorted(RECIPE.glob("ds_*gpu.json"))


def _world(path: Path) -> int:
    m = re.fullmatch(r"ds_(\d+)gpu\.json", path.name)
    assert m, f"{path.name}: a recipe DeepSpeed config is named ds_<GPUs>gpu.json"
    return int(m.group(1))


def test_recipe_ships_configs_for_1_8_and_16_gpus():
    assert sorted(_world(p) for p in DS_CONFIGS) == [1, 8, 16]


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_config_batch_identity(path):
    d = json.loads(path.read_text())
    world = _world(path)
    micro, accum = d["train_micro_batch_size_per_gpu"], d["gradient_accumulation_steps"]
    assert d["train_batch_size"] == micro * world * accum == GLOBAL_BATCH
    assert ds_batch_sizes(d, world) == (micro, accum, GLOBAL_BATCH)
    # on another world size the trainer refuses it (before DeepSpeed starts), naming the size it is for
    with pytest.raises(ConfigError, match=f"written for {world} ranks: run it on {world}, or choose"):
        ds_batch_sizes(d, world * 2)


class _FakeDist:
    """What DeepSpeedConfig asks deepspeed.comm: rank and world size, without a process group."""

    def __init__(self, world: int) -> None:
        self.world = world

    def get_rank(self) -> int:
        return 0

    def get_world_size(self, group=None) -> int:
        return self.world


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_deepspeed_parses_the_recipe_at_its_world_size(path, monkeypatch):
    import deepspeed.runtime.config as ds_config_mod
    from deepspeed.runtime.config import DeepSpeedConfig

    d = json.loads(path.read_text())
    world = _world(path)
    monkeypatch.setattr(ds_config_mod, "dist", _FakeDist(world))
    c = DeepSpeedConfig(dict(d))
    assert c.world_size == world
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == \
        (GLOBAL_BATCH, d["train_micro_batch_size_per_gpu"], d["gradient_accumulation_steps"])
    assert c.zero_optimization_stage == 1 and c.bfloat16_config.enabled and not c.float16_config.enabled
    assert c.optimizer_name == "adamw" and c.gradient_clipping == 1.0
    p = c.optimizer_params
    assert p["lr"] == 1e-4 and p["betas"] == [0.9, 0.96] and p["weight_decay"] == 0.045
    assert p.get("torch_adam") and p.get("fused")  # torch's fused AdamW: no DeepSpeed op to JIT-build on the GPU node

    # DeepSpeed's own batch assertion holds only at the world size the file is for
    monkeypatch.setattr(ds_config_mod, "dist", _FakeDist(world * 2))
    with pytest.raises(AssertionError, match="train_batch_size is not equal"):
        DeepSpeedConfig(dict(d))


def test_train_config_is_the_papers_imagenet256_run():
    cfg = load_train_config(str(RECIPE / "train.json"), {"data": "tokens/imagenet256", "out": "runs/in256"})
    assert cfg.model == "official256" and cfg.objective == "mvtm"
    assert cfg.steps == math.ceil(EPOCHS * IMAGENET_TRAIN / GLOBAL_BATCH) == 1_501_368
    assert cfg.warmup_steps == 5000 and cfg.lr_schedule == "constant"
    assert cfg.label_smoothing == 0.1 and cfg.class_dropout == 0.0
    assert cfg.stop_after is None and not cfg.universal

    mcfg = cfg.model_config()
    assert mcfg.dropout == 0.1 and mcfg.attention_dropout == 0.1
    assert mcfg == transformer.preset("official256")  # the overrides only restate the preset's dropout
    assert (mcfg.num_layers, mcfg.hidden_size, mcfg.num_heads, mcfg.intermediate_size) == (24, 768, 16, 3072)
    assert (mcfg.seq_len, mcfg.vocab_size) == (257, 2025)
    with torch.device("meta"):  # shapes only: no 690 MB of fp32 weights on the test machine
        model = transformer.build(mcfg)
    assert sum(p.numel() for p in model.parameters()) == 172_457_193  # docs/OFFICIAL.md


def test_train_config_overrides_work_as_documented():
    """The docs' CPU check: the recipe with the debug model and 2 steps loads, the rest kept."""
    cfg = load_train_config(str(RECIPE / "train.json"),
                            {"data": "d", "out": "o", "model": "debug", "steps": 2, "num_workers": 0})
    assert cfg.model_config() == transformer.preset("debug") and cfg.steps == 2
    assert cfg.warmup_steps == 5000 and cfg.label_smoothing == 0.1
    with pytest.raises(ConfigError, match="lacks"):
        load_train_config(str(RECIPE / "train.json"), {})


@pytest.mark.parametrize("path", DS_CONFIGS, ids=lambda p: p.name)
def test_stream_order_partitions_divide_the_world_size(path):
    """P divisible by W: each rank decodes ~1/W of the data (docs/TRAIN.md, decode work per rank)."""
    cfg = load_train_config(str(RECIPE / "train.json"), {"data": "d", "out": "o"})
    assert cfg.partitions % _world(path) == 0
    assert cfg.format == "parquet" and cfg.block_size == 4096 and cfg.shuffle_buffer == 65536


def test_recipe_files_are_package_data():
    """A non-editable install carries the JSONs (jobs_dir() finds them next to train_mvtm.py)."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is Python 3.11+")
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["jobs"]
    covered = {p for pat in patterns for p in (REPO / "jobs").glob(pat)}  # setuptools' glob: no recursion
    shipped = set((REPO / "jobs").rglob("*.json"))
    assert RECIPE / "train.json" in shipped and shipped <= covered, sorted(map(str, shipped - covered))
