"""Our metric formulas against the reference implementations' own functions (torch-fidelity 0.4.0,
installed with the dev extra): Inception Score with 10 splits and its shuffle, k-NN precision/recall
(k = 3) in blocks. The Inception network and FID against pytorch-fid are in test_inception_parity.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.evaluation.evaluate import IS_SHUFFLE_SEED, IS_SPLITS
from pipeline.evaluation.metrics import inception_score, knn_radii, precision_recall, softmax
from torchvision_shim import import_torchvision

import_torchvision()  # torch-fidelity's package imports it

tf_isc = pytest.importorskip("torch_fidelity.metric_isc")
tf_prc = pytest.importorskip("torch_fidelity.metric_prc")


@pytest.mark.parametrize("n", [1000, 1003])
def test_inception_score_equals_torch_fidelity(n):
    """Class-ordered logits (as a sample set is written: 50 per class in turn) with 10 splits: ours
    equals torch-fidelity's isc_features_to_metric (shuffle with RandomState(2020)); without the
    shuffle each split would see a tenth of the classes and the score would collapse."""
    rng = np.random.default_rng(0)
    c = 50
    labels = np.repeat(np.arange(c), n // c + 1)[:n]
    logits = rng.normal(size=(n, 1008)) * 0.5
    logits[np.arange(n), labels] += 12.0
    theirs = tf_isc.isc_features_to_metric(torch.from_numpy(logits), splits=10, shuffle=True, rng_seed=2020)
    mean, std = inception_score(softmax(logits), splits=IS_SPLITS, shuffle_seed=IS_SHUFFLE_SEED)
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-6, abs=1e-9)
    unshuffled, _ = inception_score(softmax(logits), splits=10)
    assert unshuffled < 0.3 * mean


def test_precision_recall_equals_torch_fidelity_in_blocks():
    """Two overlapping clouds in 16-d: ours (blocks of 37 rows) equals torch-fidelity's full-matrix
    prc (generated = features_1, real = features_2, k = 3); the radii equal its k-th values."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 16, generator=g)
    fake = torch.randn(250, 16, generator=g) * 1.2 + 0.3
    theirs = tf_prc.calculate_precision_recall_full(fake, real, neighborhood=3, batch_size=10000)
    ours = precision_recall(real.numpy(), fake.numpy(), k=3, chunk=37)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert 0.05 < ours[0] < 0.95 and 0.05 < ours[1] < 0.99  # a case where both matter
    kth = torch.cdist(real, real).kthvalue(4, dim=1).values.numpy()
    assert np.allclose(knn_radii(real.numpy(), 3, chunk=29), kth, atol=1e-5)
