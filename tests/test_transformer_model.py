"""The MVTM transformer: presets, token layout, attention paths, KV cache, schedules, sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import transformer as tfm
from transformer.sampling import TorchGumbelNoise, decode, parallel_decode, sample_tokens
from transformer.schedules import SCHEDULES, mask_len, mask_len_sequence, mask_ratio


@pytest.mark.parametrize("name", sorted(tfm.PRESETS))
def test_every_preset_builds(name):
    cfg = tfm.preset(name)
    with torch.device("meta"):  # shapes only: no memory, no init time
        m = tfm.build(name)
        logits = m(torch.zeros(2, cfg.seq_len, dtype=torch.long))
    assert logits.shape == (2, cfg.seq_len, cfg.vocab_size)
    assert m.word_embeddings.weight.shape == (cfg.codebook_size + cfg.num_classes + 1, cfg.hidden_size)
    if name.startswith("official"):
        assert m.num_params() == {"official256": 172_457_193, "official512": 173_047_017}[name]
        assert cfg.vocab_size == 2025 and cfg.mask_token_id == 2024 and cfg.class_token(0) == 1024
        assert cfg.seq_len == {"official256": 257, "official512": 1025}[name]
        assert (cfg.num_heads, cfg.head_dim) == (16, 48)


def test_config_validation_and_layout():
    with pytest.raises(ValueError, match=r"hidden_size 30 is not divisible by num_heads 4"):
        tfm.TransformerConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match=r"unknown transformer preset 'xl'"):
        tfm.preset("xl")
    cfg = tfm.preset("debug")
    with pytest.raises(ValueError, match=r"class label 10 outside \[0, 10\)"):
        cfg.class_token(10)


def _manual_forward(m: tfm.MaskGITTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """A from-the-equations reference (no SDPA) of the post-LN BERT forward."""
    cfg = m.config
    x = m.word_embeddings(tokens) + m.position_embeddings.weight[: tokens.shape[1]]
    x = F.layer_norm(x, (cfg.hidden_size,), m.embeddings_ln.weight, m.embeddings_ln.bias, 1e-12)
    b, n, d = x.shape
    for layer in m.layers:
        a = layer.attention
        q, k, v = (t(x).view(b, n, cfg.num_heads, -1).transpose(1, 2) for t in (a.query, a.key, a.value))
        s = q @ k.transpose(-1, -2) / math.sqrt(cfg.head_dim)
        if cfg.causal:
            s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
        x = layer.attention_ln(x + a.out(y))
        h = layer.output(0.5 * layer.intermediate(x) * (1 + torch.tanh(math.sqrt(2 / math.pi) * (
            layer.intermediate(x) + 0.044715 * layer.intermediate(x) ** 3))))
        x = layer.output_ln(x + h)
    h = m.mlm_dense(x)
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return m.mlm_ln(h) @ m.word_embeddings.weight.t() + m.mlm_bias


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_forward_equals_the_equations(causal):
    torch.manual_seed(0)
    m = tfm.build("debug", causal=causal).eval()
    tokens = torch.randint(0, m.config.vocab_size, (3, m.config.seq_len))
    with torch.no_grad():
        torch.testing.assert_close(m(tokens), _manual_forward(m, tokens), atol=1e-5, rtol=1e-5)


def test_kv_cache_equals_full_causal_forward():
    torch.manual_seed(0)
    m = tfm.build("debug", causal=True).eval()
    tokens = torch.randint(0, 64, (2, m.config.seq_len))
    with torch.no_grad():
        full = m(tokens)
        caches = m.new_kv_caches()
        steps = [m(tokens[:, :3], kv_caches=caches)]
        for i in range(3, tokens.shape[1]):
            steps.append(m(tokens[:, i:i + 1], kv_caches=caches, start_pos=i))
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_bidirectional_attention_sees_the_future():
    torch.manual_seed(0)
    m = tfm.build("debug").eval()
    a = torch.randint(0, 64, (1, m.config.seq_len))
    b = a.clone()
    b[0, -1] = (a[0, -1] + 1) % 64
    with torch.no_grad():
        assert not torch.allclose(m(a)[0, 0], m(b)[0, 0])


@pytest.mark.parametrize("method", sorted(SCHEDULES))
def test_schedule_endpoints_and_monotonicity(method):
    n = 256
    r = [mask_ratio(t / 100, n, method) for t in range(1, 101)]
    assert all(r[i] >= r[i + 1] for i in range(len(r) - 1))
    assert float(r[-1]) == pytest.approx(1e-6)  # gamma(1) clipped at 1e-6: all tokens revealed
    assert float(mask_ratio(1e-9, n, method)) >= 1 - 1 / n  # gamma(0) ~ 1: everything masked at the start
    seq = mask_len_sequence(n, 8, method)
    assert seq[-1] == 0 and all(0 <= s <= n for s in seq)


def test_mask_len_clamps_to_one_and_remaining_minus_one():
    n0 = np.array([256, 256, 5])
    out = mask_len(0, 8, n0, np.array([256, 10, 5]), "cosine")
    assert out.tolist() == [251, 9, 4]  # floor(256*cos(pi/16)); min(remaining-1); floor(5*0.98)=4
    assert mask_len(7, 8, n0, np.array([3, 3, 3]), "cosine").tolist() == [1, 1, 1]


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match=r"unknown mask schedule 'zigzag'; choose one of \['cosine', 'cubic'"):
        mask_ratio(0.5, 256, "zigzag")


def test_seeded_decode_is_reproducible_and_fills_every_token():
    torch.manual_seed(0)
    m = tfm.build("debug").eval()
    cfg = m.config
    inp = torch.full((3, cfg.seq_len), cfg.mask_token_id)
    inp[:, 0] = torch.tensor([cfg.class_token(c) for c in (0, 3, 9)])

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return decode(m, inp, mask_token_id=cfg.mask_token_id, codebook_size=cfg.codebook_size, num_iter=8,
                      noise=TorchGumbelNoise(g))

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    final = a[:, -1]
    assert (final[:, 1:] < cfg.codebook_size).all() and torch.equal(final[:, 0], inp[:, 0])
    # every recorded step is a full prediction: no position is left at the mask token
    assert (a[:, :, 1:] < cfg.codebook_size).all()
    # the number of tokens still unknown (re-masked) after each step is the schedule's mask_len sequence
    g = torch.Generator().manual_seed(1)
    rec = parallel_decode(lambda cur, step: m(cur), inp, mask_token_id=cfg.mask_token_id,
                          codebook_size=cfg.codebook_size, num_iter=8, noise=TorchGumbelNoise(g), record=True)
    assert torch.equal(rec.sampled, a)  # the recorded run is the seeded decode above
    unknown = rec.masked[:, :, 1:].sum(-1)  # (B, T)
    expected = mask_len_sequence(cfg.num_image_tokens, 8, "cosine")
    assert unknown.tolist() == [expected] * 3, (unknown.tolist(), expected)


def test_mask_len_table_matches_the_per_step_rule():
    from transformer.schedules import mask_len_table

    n0 = np.array([256, 17, 1])
    table = mask_len_table(n0, 12, "cosine")
    assert table.shape == (3, 12)
    assert table[0].tolist() == mask_len_sequence(256, 12, "cosine")
    for t in range(12):  # with plenty remaining, the clamped rule is max(1, table)
        assert mask_len(t, 12, n0, np.array([10**6] * 3), "cosine").tolist() == np.maximum(1, table[:, t]).tolist()


@pytest.mark.parametrize("labels", [torch.tensor([3, 10]), np.array([[-1, 2]]), [0, 12], 10])
def test_label_range_check_refuses_every_out_of_range_label(labels):
    from maskgit_core.checks import check_labels
    from maskgit_core.errors import ShardError

    with pytest.raises(ValueError, match=r"class labels? .*outside \[0, 10\); do this"):
        check_labels(labels, 10, fix="do this")
    with pytest.raises(ShardError):
        check_labels(labels, 10, error=ShardError)
    check_labels(torch.arange(10), 10)  # every valid label passes
    m = tfm.build("debug").eval()
    with pytest.raises(ValueError, match=r"class labels \[10\] outside \[0, 10\)"):
        sample_tokens(m, [1, 10], steps=2)
