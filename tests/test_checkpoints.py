"""Checkpoint loading and conversion: round trips and the errors a user sees on bad input."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

import tokenizer as tok
import transformer as tfm
from pipeline.convert import convert_official, export_official
from maskgit_core.flax_msgpack import CheckpointError, write_flax_msgpack
from tokenizer.official import load_official_tokenizer, state_dict_to_official as vq_tree
from transformer.official import load_official_transformer, state_dict_to_official as tf_tree


def _tiny_vq(**kw) -> tok.VQGAN:
    cfg = tok.VQGANConfig(image_size=32, filters=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
                          embedding_dim=4, codebook_size=16, num_groups=4, **kw)
    torch.manual_seed(0)
    return tok.build(cfg)


def _tiny_tf(**kw) -> tfm.MaskGITTransformer:
    torch.manual_seed(0)
    return tfm.build("debug", **kw)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_project_models_round_trip_through_official_layout(tmp_path):
    vq, model = _tiny_vq(official_shortcut=True), _tiny_tf(codebook_size=16)
    write_flax_msgpack(vq_tree(vq), tmp_path / "tok")
    write_flax_msgpack(tf_tree(model), tmp_path / "tf")
    vq2 = load_official_tokenizer(tmp_path / "tok", image_size=32, num_groups=4)
    assert vq2.config == vq.config
    _same_state(vq, vq2)
    m2 = load_official_transformer(tmp_path / "tf", codebook_size=16)
    assert m2.config.replace() == model.config
    _same_state(model, m2)
    # and through the converter + safetensors directories
    out = convert_official(out=tmp_path / "conv", tokenizer_path=tmp_path / "tok", transformer_path=tmp_path / "tf",
                           num_groups=4)
    _same_state(vq, tok.load(out["tokenizer"]))
    _same_state(model, tfm.load(tmp_path / "conv"))
    back = export_official(checkpoint=tmp_path / "conv", out=tmp_path / "back")
    assert back["transformer"].read_bytes() == (tmp_path / "tf").read_bytes()
    assert back["tokenizer"].read_bytes() == (tmp_path / "tok").read_bytes()


def test_save_load_keeps_config_and_outputs(tmp_path):
    vq = _tiny_vq(official_shortcut=False)
    tok.save(vq, tmp_path / "vq")
    vq2 = tok.load(tmp_path / "vq")
    assert vq2.config == vq.config and not vq2.config.official_shortcut
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(vq.eval().decode_ids(vq.encode(x)), vq2.decode_ids(vq2.encode(x)))
    meta = json.loads((tmp_path / "vq" / "config.json").read_text())
    assert meta["kind"] == tok.KIND and len(meta["weights_sha256"]) == 64


def test_old_config_fills_defaults_and_unknown_keys_fail(tmp_path, caplog):
    vq = _tiny_vq()
    tok.save(vq, tmp_path / "vq")
    meta = json.loads((tmp_path / "vq" / "config.json").read_text())
    del meta["config"]["norm_eps"]
    (tmp_path / "vq" / "config.json").write_text(json.dumps(meta))
    with caplog.at_level("INFO"):
        assert tok.load(tmp_path / "vq").config.norm_eps == 1e-6
    assert "norm_eps" in caplog.text
    meta["config"]["bogus"] = 1
    (tmp_path / "vq" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"unknown VQGANConfig keys \['bogus'\]"):
        tok.load(tmp_path / "vq")


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello, I am not msgpack")
    with pytest.raises(CheckpointError, match=r"notes.txt: not a Flax msgpack checkpoint"):
        load_official_tokenizer(p)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty: file is empty"):
        load_official_transformer(empty)


def test_truncated_checkpoint(tmp_path):
    write_flax_msgpack(vq_tree(_tiny_vq()), tmp_path / "full")
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "cut").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut: not a Flax msgpack checkpoint or truncated/corrupt"):
        load_official_tokenizer(tmp_path / "cut")


def test_transformer_file_given_as_tokenizer(tmp_path):
    write_flax_msgpack(tf_tree(_tiny_tf()), tmp_path / "tf")
    with pytest.raises(CheckpointError, match=r"tf: not a MaskGIT tokenizer checkpoint"):
        load_official_tokenizer(tmp_path / "tf")


def test_missing_and_extra_parameters_are_named(tmp_path):
    tree = tf_tree(_tiny_tf())
    del tree["params"]["TransformerLayer_1"]["Mlp_0"]["layer_output"]["bias"]
    write_flax_msgpack(tree, tmp_path / "missing")
    with pytest.raises(CheckpointError, match=r"missing parameter 'TransformerLayer_1/Mlp_0/layer_output/bias'"):
        load_official_transformer(tmp_path / "missing", codebook_size=64)
    tree = vq_tree(_tiny_vq())
    tree["params"]["encoder"]["Conv_0"]["bias"] = np.zeros(8, np.float32)
    write_flax_msgpack(tree, tmp_path / "extra")
    with pytest.raises(CheckpointError, match=r"unexpected parameters \['encoder/Conv_0/bias'\]"):
        load_official_tokenizer(tmp_path / "extra", num_groups=4)


def test_wrong_shape_is_named(tmp_path):
    tree = tf_tree(_tiny_tf())
    tree["params"]["MlmLayer_0"]["mlm_bias"]["bias"] = np.zeros(7, np.float32)
    write_flax_msgpack(tree, tmp_path / "shape")
    with pytest.raises(CheckpointError, match=r"MlmLayer_0/mlm_bias/bias has shape \(7,\)"):
        load_official_transformer(tmp_path / "shape", codebook_size=64)


def test_transformer_vocabulary_must_fit_tokenizer(tmp_path):
    # debug transformer: vocab 64 + 10 + 1 = 75; a tokenizer with 1024 codes cannot pair with it
    write_flax_msgpack(tf_tree(_tiny_tf()), tmp_path / "tf")
    with pytest.raises(CheckpointError, match=r"vocabulary \(75\) does not fit the tokenizer's codebook \(1024"):
        load_official_transformer(tmp_path / "tf", codebook_size=1024)
    # a resolution that contradicts the transformer's grid is refused, naming both
    write_flax_msgpack(vq_tree(_tiny_vq()), tmp_path / "tok")
    with pytest.raises(ValueError, match=r"--image-size 128 contradicts the transformer's 4x4 grid \(16 px\)"):
        convert_official(out=tmp_path / "o", tokenizer_path=tmp_path / "tok", transformer_path=tmp_path / "tf",
                         image_size=128, num_groups=4)


def test_safetensors_directory_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"no maskgit-vqgan checkpoint here"):
        tok.load(tmp_path)
    tfm.save(_tiny_tf(), tmp_path / "tf")
    with pytest.raises(CheckpointError, match=r"no maskgit-vqgan checkpoint here"):
        tok.load(tmp_path / "tf")  # a transformer directory is not a tokenizer
    w = tmp_path / "tf" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"sha256 does not match config.json"):
        tfm.load(tmp_path / "tf")


class _Tripwire:
    """Unpickling this creates the directory ``marker``: proof that a loader ran pickle code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickle_is_never_loaded(tmp_path):
    """A pickle whose unpickling would run code is refused by every loader, and its code never runs."""
    import pickle

    proof = tmp_path / "tripwire-works"
    pickle.loads(pickle.dumps(_Tripwire(proof)))
    assert proof.is_dir()  # the payload does run when unpickled, so the check below can see it
    marker = tmp_path / "payload-ran"
    payload = pickle.dumps({"params": {"Embed_0": _Tripwire(marker)}})
    (tmp_path / "maskgit_checkpoint").write_bytes(payload)
    (tmp_path / "tokenizer_checkpoint").write_bytes(payload)
    ckpt = tmp_path / "ckpt"
    tok.save(tok.build("debug"), ckpt)
    (ckpt / "model.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError):
        load_official_transformer(tmp_path / "maskgit_checkpoint")
    with pytest.raises(CheckpointError):
        load_official_tokenizer(tmp_path / "tokenizer_checkpoint")
    with pytest.raises(CheckpointError):
        tok.load(ckpt)
    assert not marker.exists()


def test_check_pair_names_both_values():
    cfg = tfm.preset("debug")
    with pytest.raises(CheckpointError, match=r"codebook of 64 codes, the tokenizer has 1024"):
        tfm.check_pair(cfg, 1024, 4)
    with pytest.raises(CheckpointError, match=r"4x4 latent grid, the tokenizer gives 16x16"):
        tfm.check_pair(cfg, 64, 16)
    tfm.check_pair(cfg, 64, 4)
