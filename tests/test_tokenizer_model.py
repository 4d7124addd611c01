"""The VQGAN: configs, presets, shapes, the shortcut quirk, and nearest-code search."""
from __future__ import annotations

import pytest
import torch

import tokenizer as tok
from tokenizer.model import ResBlock
from tokenizer.search import TorchSearch


@pytest.mark.parametrize("name", sorted(tok.PRESETS))
def test_every_preset_builds_with_its_geometry(name):
    cfg = tok.preset(name)
    with torch.device("meta"):
        model = tok.build(name)
    assert model.codebook.shape == (cfg.codebook_size, cfg.embedding_dim)
    assert cfg.latent_size * cfg.downsample_factor == cfg.image_size
    if name.startswith("official"):
        assert sum(p.numel() for p in model.parameters()) == 23_775_104 + 30_478_339 + 262_144
        assert cfg.latent_size == {"official256": 16, "official512": 32}[name]


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tokenizer preset 'huge'; choose one of \['debug', 'demo'"):
        tok.preset("huge")


@pytest.mark.parametrize("kw, msg", [
    (dict(image_size=30), r"image_size 30 is not divisible by the downsampling factor 4"),
    (dict(num_groups=5), r"not divisible by num_groups=5"),
    (dict(codebook_size=1), r"codebook_size must be at least 2"),
])
def test_config_validation(kw, msg):
    base = tok.preset("debug").to_dict() | kw
    base["channel_multipliers"] = tuple(base["channel_multipliers"])
    with pytest.raises(ValueError, match=msg):
        tok.VQGANConfig(**base)


def test_encode_decode_shapes_and_ranges():
    torch.manual_seed(0)
    model = tok.build("debug").eval()
    cfg = model.config
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        ids = model.encode(x)
        assert ids.shape == (3, cfg.latent_size, cfg.latent_size) and ids.dtype == torch.int64
        assert 0 <= int(ids.min()) and int(ids.max()) < cfg.codebook_size
        z = model.encode_latents(x)
        zq, ids2 = model.quantize(z)
        assert torch.equal(ids, ids2) and zq.shape == z.shape
        # quantized vectors are exactly codebook rows
        torch.testing.assert_close(zq.permute(0, 2, 3, 1)[0, 0, 0], model.codebook[ids[0, 0, 0]])
        # decode gives images of the input's shape; the encode -> ids -> decode -> encode round trip is
        # a property of a trained tokenizer (tests/test_train_tokenizer.py)
        assert model.decode_ids(ids).shape == x.shape
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        model.decode_ids(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        model.encode(torch.rand(1, 1, 32, 32))


def test_official_shortcut_drops_the_input():
    """The quirk: out = h + W h where channels change (the input x only reaches h)."""
    torch.manual_seed(0)
    quirky = ResBlock(4, 8, num_groups=2, eps=1e-6, official_shortcut=True)
    fixed = ResBlock(4, 8, num_groups=2, eps=1e-6, official_shortcut=False)
    assert quirky.shortcut.weight.shape == (8, 8, 1, 1) and fixed.shortcut.weight.shape == (8, 4, 1, 1)
    x = torch.randn(2, 4, 5, 5)
    h = quirky.conv2(torch.nn.functional.silu(quirky.norm2(quirky.conv1(torch.nn.functional.silu(quirky.norm1(x))))))
    torch.testing.assert_close(quirky(x), h + quirky.shortcut(h))


def test_search_ties_go_to_first_index_and_match_brute_force():
    torch.manual_seed(0)
    codebook = torch.randn(50, 8)
    codebook[30] = codebook[7]  # exact duplicate: a tie that must resolve to 7
    z = torch.cat([codebook[7:8] + 1e-3, torch.randn(200, 8)])
    ids = TorchSearch(max_elems=64).search(z, codebook)  # tiny chunks exercise the chunking
    assert ids[0] == 7
    brute = torch.cdist(z.double(), codebook.double()).argmin(1)
    assert (ids == brute).float().mean() == 1.0


def test_training_forward_has_straight_through_gradients():
    torch.manual_seed(0)
    model = tok.build("debug")
    out = model(torch.rand(2, 3, 32, 32))
    loss = (out.recon - 0.5).abs().mean() + out.codebook_loss + out.commitment_loss
    loss.backward()
    assert model.encoder.conv_in.weight.grad is not None and model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.codebook.grad is not None and model.codebook.grad.abs().sum() > 0
