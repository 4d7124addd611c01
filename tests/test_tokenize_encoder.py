"""The tokenize job's encoder actor (``EncodeTasks``) on CPU: the ``torch.compile`` path (fixed
shapes, a short last chunk padded) gives the eager tokens, a compiler failure falls back to eager with
a warning, and the precisions (fp32, tf32 = fp32 on a CPU, bf16 autocast) encode uint8 crops."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import tokenizer
from pipeline.data.tokenize_stages import EncodeTasks, encoder_payload
from tokenize_data import photo


@pytest.fixture(scope="module")
def payload():
    torch.manual_seed(0)
    return encoder_payload(tokenizer.build("debug"))


@pytest.fixture(scope="module")
def crops(payload):
    """(N, 1, 3, S, S) uint8 centre crops of real photos (the decode stage's output layout)."""
    from tokenizer.preprocess import center_crop_arr

    s = payload["config"]["image_size"]
    imgs = [center_crop_arr(photo(i, (64, 48)), s) for i in range(11)]
    return np.stack(imgs).transpose(0, 3, 1, 2)[:, None].copy()


def _actor(payload, **kw) -> EncodeTasks:
    cfg = payload["config"]
    latent = cfg["image_size"] // (2 ** (len(cfg["channel_multipliers"]) - 1))
    args = dict(device="cpu", precision="fp32", batch_size=4, search="torch", torch_threads=1,
                image_size=cfg["image_size"], n_views=1, latent=latent, token_dtype="uint16")
    return EncodeTasks([payload], **{**args, **kw})


def test_compiled_encoder_gives_the_eager_tokens(payload, crops):
    """11 crops in chunks of 4: the last chunk (3) is padded for the compiled graph; the ids equal
    the eager ones, and the actor still runs compiled afterwards (no silent fallback on CPU)."""
    eager = _actor(payload).encode(crops)
    enc = _actor(payload, compile=True)
    ids = enc.encode(crops)
    assert enc.compiled, "torch.compile fell back to eager on this machine"
    assert ids.shape == eager.shape == (11, 1, *eager.shape[2:])
    assert (ids == eager).mean() >= 0.999


def test_compile_failure_falls_back_to_eager_with_a_warning(payload, crops, monkeypatch, caplog):
    def broken_compile(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    enc = _actor(payload, compile=True)
    with caplog.at_level(logging.WARNING):
        ids = enc.encode(crops)
    assert not enc.compiled and "torch.compile of the encoder failed (RuntimeError: inductor" in caplog.text
    assert np.array_equal(ids, _actor(payload).encode(crops))


def test_precisions_on_cpu(payload, crops):
    fp32 = _actor(payload).encode(crops)
    assert np.array_equal(_actor(payload, precision="tf32").encode(crops), fp32)  # TF32 is a CUDA mode
    bf16 = _actor(payload, precision="bf16").encode(crops)
    assert bf16.dtype == np.uint16 and bf16.shape == fp32.shape
    assert (bf16 == fp32).mean() > 0.5  # autocast changes some ids, not most (figures: docs/TOKENIZE.md)
