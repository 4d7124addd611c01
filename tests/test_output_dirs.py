"""Commands that write a model or a set refuse a non-empty --out unless --overwrite; files are
replaced atomically; --no-provenance keeps local paths out of exported configs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tokenizer as tok
import transformer as tfm
from maskgit_core import checkpoint_io
from maskgit_core.flax_msgpack import read_flax_msgpack, write_flax_msgpack
from pipeline.cli import cli
from pipeline.train.checkpoint import COMPLETE, tag_name
from tokenizer.official import state_dict_to_official as vq_tree


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _full_out(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    out.mkdir()
    keep = out / "precious.txt"
    keep.write_text("mine")
    return out, keep


def _tiny_vq() -> tok.VQGAN:
    torch.manual_seed(0)
    return tok.build(tok.VQGANConfig(image_size=32, filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                                     embedding_dim=4, codebook_size=16, num_groups=4, official_shortcut=True))


def _fake_ckpt(d: Path, kind: str, sha: str) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"kind": kind, "config": {"num_classes": 4}, "weights_sha256": sha}))
    return d


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    d = run / "checkpoints" / tag_name(5)
    d.mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"data": str(tmp_path / "tokens"), "out": str(run)}))
    torch.manual_seed(0)
    torch.save({"module": tfm.build("debug").state_dict()}, d / "mp_rank_00_model_states.pt")
    (d / COMPLETE).write_text("{}")
    return run


def test_every_writer_refuses_a_non_empty_out_before_loading_anything(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "f").write_bytes(b"not a checkpoint")
    ck, tk = _fake_ckpt(tmp_path / "ck", tfm.KIND, "a"), _fake_ckpt(tmp_path / "tk", tok.KIND, "b")
    out, keep = _full_out(tmp_path)
    commands = [["convert", "official", "--tokenizer", tmp_path / "f", "--out", out],
                ["convert", "to-official", src, "--out", out],
                ["train-export", src, "--out", out],
                ["train-tokenizer", src, "--out", out],
                ["sample-set", "--checkpoint", ck, "--tokenizer", tk, "--classes", "1", "--out", out]]
    for args in commands:
        r = _run(*args)
        assert r.exit_code == 2, (args, r.output)
        assert "not empty" in r.output and "--overwrite" in r.output and str(out) in r.output, (args, r.output)
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"] and keep.read_text() == "mine"


def test_to_official_with_overwrite_replaces_the_files(tmp_path):
    vq = _tiny_vq()
    tok.save(vq, tmp_path / "ck")
    out, _ = _full_out(tmp_path)
    (out / "tokenizer_checkpoint").write_bytes(b"old")
    r = _run("convert", "to-official", tmp_path / "ck", "--out", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert set(read_flax_msgpack(out / "tokenizer_checkpoint")) == {"params"}


def test_sample_set_resumes_the_same_settings_and_refuses_others(tmp_path):
    ck, tk = _fake_ckpt(tmp_path / "ck", tfm.KIND, "a"), _fake_ckpt(tmp_path / "tk", tok.KIND, "b")
    from pipeline.generate.sample_set import sample_set

    out = tmp_path / "set"
    out.mkdir()
    # a set whose every shard is on disk: a rerun of the same settings loads no model and finishes
    from pipeline.generate import sample_set as ss
    ss.write_settings(out, ss.set_settings(ck, tk, [1, 1], seed=3, shard_size=2, sample_kw={"steps": 4}))
    np.savez(out / "shard-00000.npz", labels=np.array([1, 1]))
    sample_set(ck, tk, [1, 1], out, seed=3, shard_size=2, steps=4)
    assert (out / "manifest.json").is_file()
    with pytest.raises(ss.ConfigError, match="seed") as info:
        sample_set(ck, tk, [1, 1], out, seed=4, shard_size=2, steps=4)
    assert "--overwrite" in str(info.value)
    r = _run("sample-set", "--checkpoint", ck, "--tokenizer", tk, "--classes", "1", "--per-class", "2",
             "--seed", "4", "--shard-size", "2", "--decode-steps", "4", "--out", out)
    assert r.exit_code == 2 and "seed" in r.output, r.output


def test_flax_msgpack_write_is_atomic(tmp_path):
    path = tmp_path / "ckpt"
    write_flax_msgpack({"params": {"w": np.ones(3, np.float32)}}, path)
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_flax_msgpack({"params": {"w": np.zeros(3, np.float32), "bad": object()}}, path)
    assert path.read_bytes() == before  # the old file survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # and no temp file is left


def test_checkpoint_dir_write_is_atomic(tmp_path, monkeypatch):
    vq = _tiny_vq()
    d = tok.save(vq, tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def half_written(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "save_file", half_written)
    with pytest.raises(OSError):
        tok.save(vq, d)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_no_provenance_keeps_paths_out_of_converted_configs(tmp_path):
    write_flax_msgpack(vq_tree(_tiny_vq()), tmp_path / "tok")
    r = _run("convert", "official", "--tokenizer", tmp_path / "tok", "--image-size", "32", "--num-groups", "4",
             "--out", tmp_path / "with")
    assert r.exit_code == 0, r.output
    assert str(tmp_path) in (tmp_path / "with" / "tokenizer" / "config.json").read_text()  # default: provenance
    r = _run("convert", "official", "--tokenizer", tmp_path / "tok", "--image-size", "32", "--num-groups", "4",
             "--out", tmp_path / "without", "--no-provenance")
    assert r.exit_code == 0, r.output
    text = (tmp_path / "without" / "tokenizer" / "config.json").read_text()
    assert str(tmp_path) not in text and "/" not in json.dumps(json.loads(text).get("source", {}))
    assert json.loads(text)["source"]["sha256"]  # non-path facts stay


def test_no_provenance_keeps_paths_out_of_train_export(tmp_path):
    run = _run_dir(tmp_path)
    r = _run("train-export", run, "--out", tmp_path / "with")
    assert r.exit_code == 0, r.output
    assert str(tmp_path) in (tmp_path / "with" / "config.json").read_text()
    r = _run("train-export", run, "--out", tmp_path / "without", "--no-provenance")
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "without" / "config.json").read_text())
    assert str(tmp_path) not in json.dumps(meta)
    assert meta["trained_steps"] == 5 and meta["objective"]


def test_the_in_run_export_can_keep_paths_out(tmp_path):
    from pipeline.train.config import TrainConfig
    from pipeline.train.export import save_export

    torch.manual_seed(0)
    state = tfm.build("debug").state_dict()
    cfg = TrainConfig(data=str(tmp_path / "tokens"), out=str(tmp_path / "run"), export_provenance=False)
    d = save_export(cfg, state, tag_name(3), tmp_path / "export")
    meta = json.loads((d / "config.json").read_text())
    assert str(tmp_path) not in json.dumps(meta) and meta["trained_steps"] == 3
