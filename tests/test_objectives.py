"""Properties of the MVTM and AR training objectives (transformer/objectives.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import transformer
from transformer.objectives import (ObjectiveConfig, apply_class_dropout, ar_batch, compute_objective,
                                    masked_token_loss, mvtm_batch, num_masked, random_mask)


def test_num_masked_is_ceil_cosine_and_in_range():
    n = 16
    r = torch.linspace(0, 0.999999, 1001)
    got = num_masked(r, n)
    want = torch.tensor([max(1, min(n, math.ceil(math.cos(math.pi / 2 * float(x)) * n))) for x in r.double()])
    assert torch.equal(got, want)
    assert got[0] == n and got.min() >= 1 and got.max() <= n
    assert num_masked(torch.tensor([0.5]), 256).item() == math.ceil(math.cos(math.pi / 4) * 256)


def test_random_mask_exact_counts_and_uniform_positions():
    g = torch.Generator().manual_seed(0)
    n, b = 16, 4000
    counts = torch.randint(1, n + 1, (b,), generator=g)
    mask = random_mask(counts, n, g)
    assert torch.equal(mask.sum(1), counts)
    # every position is equally likely: frequency per position ~ mean(counts)/n
    freq = mask.float().mean(0)
    expect = counts.float().mean() / n
    assert (freq - expect).abs().max() < 0.04


def test_mvtm_batch_masks_exactly_and_keeps_the_rest():
    cfg = transformer.preset("debug")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, cfg.codebook_size, (64, cfg.num_image_tokens), generator=g)
    labels = torch.randint(0, cfg.num_classes, (64,), generator=g)
    inputs, targets, mask = mvtm_batch(images, labels, cfg, generator=g)
    assert inputs.shape == (64, cfg.seq_len)
    assert torch.equal(inputs[:, 0], labels + cfg.codebook_size)
    assert torch.equal(targets, images)
    body = inputs[:, 1:]
    assert bool((body[mask] == cfg.mask_token_id).all())
    assert torch.equal(body[~mask], images[~mask])
    assert bool((mask.sum(1) >= 1).all())


def test_loss_ignores_unmasked_positions_and_normalises_per_sample():
    g = torch.Generator().manual_seed(2)
    b, n, k = 3, 10, 7
    logits = torch.randn(b, n, k, generator=g, requires_grad=True)
    targets = torch.randint(0, k, (b, n), generator=g)
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[0, :1] = True
    mask[1, 2:9] = True
    mask[2, :] = True
    loss, correct = masked_token_loss(logits, targets, mask, label_smoothing=0.1)
    # reference: per-sample mean CE over its masked tokens, then the mean
    ref = torch.stack([F.cross_entropy(logits[i][mask[i]], targets[i][mask[i]], label_smoothing=0.1)
                       for i in range(b)]).mean()
    assert torch.allclose(loss, ref, atol=1e-6)
    loss.backward()
    assert bool((logits.grad[~mask] == 0).all()) and bool((logits.grad[mask].abs().sum(-1) > 0).all())
    # changing unmasked logits leaves the loss unchanged
    other = logits.detach().clone()
    other[~mask] = torch.randn_like(other[~mask]) * 10
    assert torch.allclose(masked_token_loss(other, targets, mask)[0], loss.detach(), atol=1e-6)
    hits = ((logits.argmax(-1) == targets) & mask).sum(1).float()
    assert torch.equal(correct, hits)


def test_label_smoothing_matches_formula():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, 9, generator=g)
    targets = torch.randint(0, 9, (2, 5), generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    logp = logits.log_softmax(-1)
    nll = -logp.gather(-1, targets[..., None])[..., 0]
    smooth = -logp.mean(-1)
    want = (0.9 * nll + 0.1 * smooth).mean()
    assert torch.allclose(masked_token_loss(logits, targets, mask, label_smoothing=0.1)[0], want, atol=1e-6)


def test_class_dropout_uses_null_label_at_rate():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 9, (20000,), generator=g)
    out = apply_class_dropout(labels, 0.1, 9, g)
    dropped = out == 9
    assert abs(dropped.float().mean().item() - 0.1) < 0.01
    assert torch.equal(out[~dropped], labels[~dropped])
    assert torch.equal(apply_class_dropout(labels, 0.0, None, g), labels)
    cfg = transformer.preset("debug")
    assert ObjectiveConfig(class_dropout=0.1).resolved_null_label(cfg) == cfg.num_classes - 1
    with pytest.raises(ValueError, match="null_label 10 outside"):
        ObjectiveConfig(class_dropout=0.1, null_label=10).resolved_null_label(cfg)


def test_ar_batch_shifts_by_one():
    cfg = transformer.preset("debug").replace(causal=True)
    images = torch.arange(2 * cfg.num_image_tokens).view(2, -1) % cfg.codebook_size
    labels = torch.tensor([3, 5])
    inputs, targets, mask = ar_batch(images, labels, cfg)
    assert inputs.shape == (2, cfg.num_image_tokens) and torch.equal(targets, images)
    assert torch.equal(inputs[:, 0], labels + cfg.codebook_size)
    assert torch.equal(inputs[:, 1:], images[:, :-1]) and bool(mask.all())


def test_ar_loss_does_not_see_the_future():
    torch.manual_seed(0)
    model = transformer.build("debug", causal=True, dropout=0.0, attention_dropout=0.0).eval()
    cfg = ObjectiveConfig(objective="ar", label_smoothing=0.0)
    images = torch.randint(0, 64, (1, 16))
    labels = torch.tensor([2])
    inputs, _, _ = ar_batch(images, labels, model.config)
    changed = images.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 64
    la = model(inputs)[0, :10]
    lb = model(ar_batch(changed, labels, model.config)[0])[0, :10]
    assert torch.allclose(la, lb, atol=1e-5)  # predictions of t_1..t_10 ignore t_11..
    out = compute_objective(model, images, labels, cfg)
    assert out.scored.item() == 16 and out.loss.item() > 0


def test_compute_objective_mvtm_and_model_check():
    torch.manual_seed(0)
    model = transformer.build("debug")
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 64, (8, 16), generator=g)
    labels = torch.randint(0, 9, (8,), generator=g)
    out = compute_objective(model, images, labels, ObjectiveConfig(class_dropout=0.1), generator=g)
    assert out.loss.requires_grad and 8 <= out.scored.item() <= 8 * 16
    assert 0 <= out.correct.item() <= out.scored.item()
    with pytest.raises(ValueError, match="causal model"):
        ObjectiveConfig(objective="ar").check_model(model.config)
    with pytest.raises(ValueError, match="unknown objective 'x'"):
        ObjectiveConfig(objective="x")
