"""Our FID InceptionV3 port and Fréchet distance against pytorch-fid's own code (the reference FID
implementation in PyTorch), without downloading its weights.

One seeded random state dict (in the key names of the real ``pt_inception-2015-12-05-*.pth``,
BatchNorm running statistics set away from 0 / 1) goes into both models: ours through
``load_inception`` from a file, theirs by replacing ``pytorch_fid.inception.load_state_dict_from_url``
so that their model-building code runs unchanged. Same weights, same input -> the pool3 features
and the 1008 logits must agree to float32 round-off (they are in fact bit-identical on CPU: both
run the same torch ops in the same order). Inputs at 256x256 and 64x80 cover the resize to 299.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.evaluation.inception import FIDInceptionV3, load_inception
from pipeline.evaluation.metrics import feature_stats, frechet_distance
from torchvision_shim import import_torchvision

# float32 through ~95 layers: allow round-off; observed difference is exactly 0 on CPU.
ATOL, RTOL = 1e-5, 1e-5


import_torchvision()
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception",
                                             reason="pytorch-fid and torchvision come with the dev extra")
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the real weights file's layout: He-scaled convs (activations stay O(1) through
    the whole net), BatchNorm with non-trivial running mean / positive variance / affine terms."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in FIDInceptionV3().state_dict().items():
        if k.endswith("running_mean") or k.endswith("bn.bias") or k == "fc.bias":
            v = torch.randn(v.shape, generator=g) * 0.1
        elif k.endswith("running_var"):
            v = torch.rand(v.shape, generator=g) * 1.5 + 0.5
        elif k.endswith("bn.weight"):
            v = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("conv.weight"):
            v = torch.randn(v.shape, generator=g) * math.sqrt(2.0 / v[0].numel())
        elif k == "fc.weight":
            v = torch.randn(v.shape, generator=g) / math.sqrt(v.shape[1])
        out[k] = v.clone()
    return out


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return _random_state_dict()


@pytest.fixture(scope="module")
def ours(state, tmp_path_factory) -> FIDInceptionV3:
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(state, path)
    return load_inception(path)


@pytest.fixture(scope="module")
def theirs(state):
    """(pytorch-fid's pool3 wrapper, their full 1008-way Inception3), both loaded with ``state``."""
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return {k: v.clone() for k, v in state.items()}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pytorch_fid_inception, "load_state_dict_from_url", fake_download)
        pool3 = pytorch_fid_inception.InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True,
                                                  use_fid_inception=True).eval()
        full = pytorch_fid_inception.fid_inception_v3().eval()
    assert urls == [pytorch_fid_inception.FID_WEIGHTS_URL] * 2
    return pool3, full


def _images(size: tuple[int, int], seed: int) -> torch.Tensor:
    """3 images in [0, 1], each a different mix of smooth structure and pixel noise (pure noise
    images all look alike to a random net: their features would barely differ)."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand((3, 3, 6, 7), generator=g), size=size, mode="bilinear", align_corners=False)
    w = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)
    return w * torch.rand((3, 3, *size), generator=g) + (1 - w) * coarse


def _their_logits(full, images: torch.Tensor) -> torch.Tensor:
    """Their full Inception3 on the input their wrapper builds: bilinear resize to 299, then 2x - 1."""
    x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    return full(2 * x - 1)


@pytest.mark.parametrize("size", [(256, 256), (64, 80)], ids=["256x256", "64x80"])
def test_features_and_logits_match_pytorch_fid(ours, theirs, size):
    pool3, full = theirs
    images = _images(size, seed=sum(size))
    with torch.no_grad():
        feats, logits = ours(images)
        ref_feats = pool3(images)[0].squeeze(3).squeeze(2)
        ref_logits = _their_logits(full, images)
    assert feats.shape == ref_feats.shape == (3, 2048) and logits.shape == ref_logits.shape == (3, 1008)
    assert feats.std(0).mean() > 0.005 and logits.std(0).mean() > 0.005  # the images are told apart
    torch.testing.assert_close(feats, ref_feats, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits, ref_logits, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n,d", [(300, 64), (40, 64)], ids=["full-rank", "rank-deficient"])
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(n)
    mu1, s1 = feature_stats(rng.normal(size=(n, d)))
    mu2, s2 = feature_stats(rng.normal(size=(n, d)) * 1.3 + 0.2)
    ref = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    assert ref > 1.0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6)
