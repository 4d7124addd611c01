"""Parity with the official JAX/Flax MaskGIT, on reference outputs of the official code."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import tokenizer as tok
import transformer as tfm
from tokenizer.official import load_official_tokenizer
from transformer.official import load_official_transformer
from transformer.sampling import ArrayNoise, decode
from transformer.schedules import mask_len_sequence


@pytest.fixture(scope="module")
def ref(official_tiny):
    return dict(np.load(official_tiny / "reference.npz"))


@pytest.fixture(scope="module")
def vq(official_tiny):
    return load_official_tokenizer(official_tiny / "tokenizer_checkpoint", image_size=64)


@pytest.fixture(scope="module")
def model(official_tiny):
    return load_official_transformer(official_tiny / "maskgit_checkpoint", codebook_size=64)


def test_inferred_configs(vq, model):
    assert vq.config.filters == 32 and vq.config.channel_multipliers == (1, 1, 2, 2, 4)
    assert vq.config.codebook_size == 64 and vq.config.embedding_dim == 16 and vq.config.official_shortcut
    c = model.config
    assert (c.num_layers, c.hidden_size, c.num_heads, c.intermediate_size, c.latent_size) == (2, 64, 4, 128, 4)
    assert c.vocab_size == 1065 and c.mask_token_id == 1064 and c.num_classes == 1000


def test_encode_ids_equal_official(vq, ref):
    image = torch.from_numpy(ref["image"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        ids = vq.encode(image)
    np.testing.assert_array_equal(ids.numpy(), ref["ids"])


def test_decode_matches_official(vq, ref):
    with torch.no_grad():
        recon = vq.decode_ids(torch.from_numpy(ref["ids"]).long()).permute(0, 2, 3, 1).numpy()
    assert np.abs(recon - ref["recon"]).max() < 1e-4


def test_transformer_logits_match_official(model, ref):
    seq = torch.from_numpy(ref["seq"]).long()
    seq[seq < 0] = model.config.mask_token_id  # the official -1 wraps to the last row
    assert int(seq[0, 0]) == model.config.class_token(207)
    with torch.no_grad():
        logits = model(seq).numpy()
    assert logits.shape == ref["logits"].shape
    assert np.abs(logits - ref["logits"]).max() < 1e-4


@pytest.mark.parametrize("steps", [8, 12, 16])
def test_cosine_schedule_sequences_equal_official(ref, steps):
    assert mask_len_sequence(256, steps, "cosine") == ref[f"cosine_T{steps}"].tolist()


@pytest.mark.parametrize("case", ["gen", "edit"])
def test_parallel_decode_token_for_token(official_tiny, model, case):
    z = np.load(official_tiny / "decode_reference.npz")
    inputs = torch.from_numpy(z[f"{case}_inputs"]).long()
    inputs[inputs < 0] = model.config.mask_token_id
    out = decode(model, inputs, mask_token_id=model.config.mask_token_id, codebook_size=64,
                 num_iter=int(z[f"{case}_T"]), start_iter=int(z[f"{case}_start"]),
                 noise=ArrayNoise(z[f"{case}_g1"], z[f"{case}_g2"]))
    want = z[f"{case}_final_seqs"].astype(np.int64)
    want[want < 0] = model.config.mask_token_id
    np.testing.assert_array_equal(out.numpy(), want)


def test_convert_cli_and_reload(official_tiny, ref, tmp_path):
    out = tmp_path / "converted"
    cmd = [sys.executable, "-m", "pipeline.cli", "convert", "official",
           "--tokenizer", str(official_tiny / "tokenizer_checkpoint"),
           "--transformer", str(official_tiny / "maskgit_checkpoint"), "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    vq, model = tok.load(out), tfm.load(out)
    assert vq.config.image_size == 64  # from the transformer's 4x4 grid x 16
    image = torch.from_numpy(ref["image"]).permute(0, 3, 1, 2)
    with torch.no_grad():
        np.testing.assert_array_equal(vq.encode(image).numpy(), ref["ids"])
        seq = torch.from_numpy(ref["seq"]).long()
        seq[seq < 0] = model.config.mask_token_id
        assert np.abs(model(seq).numpy() - ref["logits"]).max() < 1e-4
    # and back to the official layout, byte for byte
    back = tmp_path / "back"
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "convert", "to-official", str(out), "--out", str(back)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (back / "maskgit_checkpoint").read_bytes() == (official_tiny / "maskgit_checkpoint").read_bytes()
    assert (back / "tokenizer_checkpoint").read_bytes() == (official_tiny / "tokenizer_checkpoint").read_bytes()
