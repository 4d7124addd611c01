"""Editing: the pure geometry against values worked out by hand from the official recipe
(spec §5), and replace / inpaint / outpaint end to end on tiny random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenizer
import transformer
from pipeline.generate import edit_inpaint, edit_outpaint, edit_replace, fit_image
from transformer import editing as ed



# ------------------------------------------------------------------ pure functions, by hand

def test_bbox_to_latent_box_official_examples():
    # top=64 left=32 height=128 width=144, patch 16, L=16:
    # t = max(0, 4-1) = 3; b = min(16, 8+4+1) = 13; l = max(0, 2-1) = 1; r = min(16, 2+9+1) = 12
    assert ed.bbox_to_latent_box(64, 32, 128, 144, latent_size=16) == (3, 13, 1, 12)
    # clamped at the borders: t = max(0, -1) = 0; b = min(16, 4+15+1=20) = 16
    assert ed.bbox_to_latent_box(0, 240, 240, 64, latent_size=16) == (0, 16, 14, 16)
    # the official formula floors height and top separately: top=8 height=8 -> b = 0+0+1 = 1
    assert ed.bbox_to_latent_box(8, 8, 8, 8, latent_size=16) == (0, 1, 0, 1)
    # generalised to a 4-px patch on an 8x8 grid: t=max(0,2-1)=1, b=min(8,2+2+1)=5, l=0, r=min(8,1+3+1)=5
    assert ed.bbox_to_latent_box(8, 4, 8, 12, latent_size=8, patch=4) == (1, 5, 0, 5)
    assert ed.parse_bbox("64_32_128_144") == (64, 32, 128, 144)
    with pytest.raises(ValueError, match="top_left_height_width"):
        ed.parse_bbox("64x32")


def test_box_token_mask():
    m = ed.box_token_mask((1, 3, 2, 4), 4)
    assert m.tolist() == [[False] * 4, [False, False, True, True], [False, False, True, True], [False] * 4]


def test_pixel_mask_to_token_mask_touch_rule_and_dilation():
    px = np.zeros((8, 8), bool)
    px[3, 4] = True  # row 3 lies in token row 0, col 4 in token col 1 (patch 4)
    assert np.argwhere(ed.pixel_mask_to_token_mask(px, patch=4)).tolist() == [[0, 1]]
    px = np.zeros((16, 16), bool)
    px[4, 4] = True  # token (1, 1); dilation 1 -> rows 0..2, cols 0..2
    tok = ed.pixel_mask_to_token_mask(px, patch=4, dilation=1)
    expected = np.zeros((4, 4), bool)
    expected[0:3, 0:3] = True
    assert np.array_equal(tok, expected)
    with pytest.raises(ValueError, match="multiple"):
        ed.pixel_mask_to_token_mask(np.zeros((10, 8), bool), patch=4)


def test_official_composite_mask():
    tm = np.zeros((16, 16), bool)
    tm[4:12, 4:12] = True
    w = ed.official_composite_mask(tm, (256, 256))  # radius 256//16 - 1 = 15
    assert w.shape == (256, 256) and w.dtype == np.float32
    assert w[128, 128] == pytest.approx(1.0, abs=1e-2) and w[0, 0] == 0.0
    assert 0.2 < w[64, 128] < 0.8  # blurred edge of the box
    assert np.all(ed.official_composite_mask(np.zeros((16, 16), bool), (256, 256)) == 0.0)
    sharp = ed.official_composite_mask(tm, (256, 256), radius=0)
    assert sharp[100, 100] == pytest.approx(1.0) and sharp[20, 20] == 0.0  # bicubic: 2-token support


def test_feathered_mask_and_composite():
    px = np.zeros((16, 16), bool)
    px[8, 8] = True
    region = ed.pixel_mask_to_token_mask(px, patch=4, dilation=1)  # tokens rows/cols 1..3 -> px 4..15
    w = ed.feathered_mask(px, region, patch=4, feather=4)
    assert w[8, 8] == 1.0
    assert w[8, 10] == pytest.approx(0.5)  # 2 px away, feather 4 -> 1 - 2/4
    assert w[8, 12] == 0.0 and w[0, 0] == 0.0
    assert np.all(w[:4] == 0)  # outside the decoded tokens
    rng = np.random.default_rng(0)
    gen, orig = rng.random((16, 16, 3), np.float32), rng.random((16, 16, 3), np.float32)
    out = ed.composite(gen, orig, w)
    assert np.array_equal(out[w == 0], orig[w == 0])
    assert np.allclose(out[8, 8], gen[8, 8])


def test_canvas_and_windows():
    assert ed.parse_extend("left=128,right=64") == {"top": 0, "bottom": 0, "left": 128, "right": 64}
    with pytest.raises(ValueError, match="SIDE=PIXELS"):
        ed.parse_extend("up=3")
    # 5 px rounds up to two 4-px patches
    assert ed.extend_canvas(32, 32, {"left": 5, "top": 4}, patch=4) == (
        36, 40, 4, 8, {"top": 4, "bottom": 0, "left": 8, "right": 0})
    assert ed.window_origins(24, 16, 8) == [0, 8]
    assert ed.window_origins(20, 16, 8) == [0, 4]
    assert ed.window_origins(16, 16, 8) == [0]
    with pytest.raises(ValueError, match="smaller"):
        ed.window_origins(8, 16, 8)


def test_fit_image_rule():
    from PIL import Image

    img, rule = fit_image(Image.new("RGB", (64, 40)), 32)
    assert img.size == (32, 32) and "centre crop" in rule


# ------------------------------------------------------------------ token decoders and end to end

@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    vq = tokenizer.build("debug").eval()  # 32 px, patch 4, 8x8 grid, 64 codes
    model = transformer.build("debug", latent_size=8).eval()
    return model, vq


def test_decode_masked_tokens_keeps_known(models):
    model, _ = models
    tokens = torch.randint(0, 64, (2, 8, 8))
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 3:7] = True
    out = ed.decode_masked_tokens(model, tokens, mask, [1, 2], steps=12, start_iter=2)
    assert torch.equal(out[~mask], tokens[~mask])
    assert int(out.max()) < 64 and not torch.equal(out[mask], tokens[mask])


def test_outpaint_tokens_windows_keep_known(models):
    model, _ = models
    grid = torch.randint(0, 64, (12, 14))
    known = torch.zeros(12, 14, dtype=torch.bool)
    known[2:10, 3:11] = True
    out = ed.outpaint_tokens(model, grid, known, 3, steps=4)
    assert out.shape == (12, 14)
    assert torch.equal(out[known], grid[known])


def _image(seed=0):
    return np.random.default_rng(seed).random((32, 32, 3)).astype(np.float32)


def test_edit_replace_preserves_outside(models):
    model, vq = models
    img = _image()
    res = edit_replace(model, vq, img, (8, 8, 8, 8), 4)  # patch 4: box rows 1..4, cols 1..4
    assert res.image.shape == (32, 32, 3)
    assert res.token_mask.sum() == 16
    assert res.weight[0, 31] == 0.0
    assert np.array_equal(res.image[res.weight == 0], img[res.weight == 0])


def test_edit_inpaint_preserves_outside(models):
    model, vq = models
    img = _image(1)
    mask = np.zeros((32, 32), bool)
    mask[10:14, 18:25] = True
    res = edit_inpaint(model, vq, img, mask, 2, steps=6)
    assert np.array_equal(res.token_mask, ed.pixel_mask_to_token_mask(mask, patch=4))
    assert np.all(res.weight[mask] == 1.0)
    assert np.array_equal(res.image[res.weight == 0], img[res.weight == 0])
    assert np.allclose(res.image[mask], res.decoded[mask])


def test_edit_outpaint_grows_canvas(models):
    model, vq = models
    img = _image(2)
    res = edit_outpaint(model, vq, img, {"left": 8, "right": 6, "top": 0, "bottom": 4}, 1, steps=4)
    assert res.image.shape == (36, 48, 3)  # right 6 -> 8 px
    orig = res.image[0:32, 8:40]
    keep = res.weight[0:32, 8:40] == 0
    assert keep.any() and np.array_equal(orig[keep], img[keep])
    assert res.weight[35, 0] == 1.0


def _run(args):
    from click.testing import CliRunner

    from pipeline.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_edit_commands(models, tmp_path):
    from PIL import Image

    model, vq = models
    tokenizer.save(vq, tmp_path / "tok")
    transformer.save(model, tmp_path / "mvtm")
    src = (np.random.default_rng(4).random((40, 48, 3)) * 255).astype(np.uint8)  # not square: resized + cropped
    Image.fromarray(src).save(tmp_path / "in.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20, 20:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    common = ["--checkpoint", str(tmp_path / "mvtm"), "--tokenizer", str(tmp_path / "tok"),
              "--image", str(tmp_path / "in.png"), "--class", "2", "--device", "cpu"]
    r = _run(["edit", "replace", *common, "--bbox", "8_8_8_8", "--out", str(tmp_path / "rep.png")])
    assert r.exit_code == 0, r.output
    assert "resize rule: input 48x40 -> shorter side to 32" in r.output
    assert Image.open(tmp_path / "rep.png").size == (32, 32)
    r = _run(["edit", "inpaint", *common, "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "inp.png"),
              "--decode-steps", "4"])
    assert r.exit_code == 0, r.output
    r = _run(["edit", "outpaint", *common, "--extend", "left=16,right=16", "--out", str(tmp_path / "out.png"),
              "--decode-steps", "4"])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "out.png").size == (64, 32)
    Image.fromarray(mask[:32]).save(tmp_path / "small_mask.png")
    r = _run(["edit", "inpaint", *common, "--mask", str(tmp_path / "small_mask.png"), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "draw the mask at the image's size" in r.output
    r = _run(["edit", "outpaint", *common, "--extend", "up=16", "--out", str(tmp_path / "bad.png")])
    assert r.exit_code == 2 and "SIDE=PIXELS" in r.output


def test_edit_and_sample_on_converted_official_weights(official_tiny, tmp_path):
    """The official architecture (16-px patches, shortcut quirk, 1000 classes) through the CLI:
    tiny official-format checkpoints converted with `convert official`."""
    from PIL import Image

    r = _run(["convert", "official", "--tokenizer", str(official_tiny / "tokenizer_checkpoint"), "--transformer",
              str(official_tiny / "maskgit_checkpoint"), "--out", str(tmp_path / "off")])
    assert r.exit_code == 0, r.output
    img = (np.random.default_rng(7).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    ck = ["--checkpoint", str(tmp_path / "off"), "--tokenizer", str(tmp_path / "off"), "--device", "cpu"]
    r = _run(["edit", "replace", *ck, "--image", str(tmp_path / "in.png"), "--bbox", "16_16_32_32",
              "--class", "207", "--out", str(tmp_path / "rep.png")])
    assert r.exit_code == 0, r.output
    assert "(16 tokens regenerated)" in r.output  # t=0, b=min(4, 2+1+1)=4, l=0, r=4 on the 4x4 grid
    r = _run(["sample", *ck, "--classes", "1,980", "--per-class", "1", "--out", str(tmp_path / "g.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "g" / "00001_class980.png").size == (64, 64)
