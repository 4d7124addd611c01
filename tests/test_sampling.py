"""Sampling beyond the official decoder: parity of the extended loop with ``decode``, seeded
reproducibility, mask counts per step, Halton order, CFG and top-k. (The loop's overhead is
measured by ``bench/bench_decode.py``, not asserted here.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import transformer
from transformer.sampling import (ArrayNoise, decode, guidance_weight, halton_order,
                                  parallel_decode, sample_tokens, top_k_filter)
from transformer.schedules import SCHEDULES, mask_len, mask_len_sequence



@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return transformer.build("debug", latent_size=8).eval()  # 65 tokens, K=64, 10 classes


def _noise(b, n, k, steps, seed=1):
    rng = np.random.default_rng(seed)
    return ArrayNoise(rng.gumbel(size=(steps, b, n, k)).astype(np.float32),
                      rng.gumbel(size=(steps, b, n)).astype(np.float32))


@pytest.mark.parametrize("schedule,start_iter,steps", [("cosine", 0, 8), ("linear", 2, 12), ("exp", 0, 6)])
def test_parallel_decode_equals_official_decode(model, schedule, start_iter, steps):
    cfg = model.config
    inputs = torch.full((3, cfg.seq_len), cfg.mask_token_id)
    inputs[:, 0] = cfg.codebook_size + torch.tensor([1, 2, 3])
    inputs[1, 5:9] = torch.tensor([3, 4, 5, 6])  # some known tokens, as in editing
    nz = _noise(3, cfg.seq_len, cfg.codebook_size, steps)
    ref = decode(model, inputs, mask_token_id=cfg.mask_token_id, codebook_size=cfg.codebook_size,
                 num_iter=steps, start_iter=start_iter, schedule=schedule, noise=nz)
    out = parallel_decode(lambda cur, step: model(cur), inputs, mask_token_id=cfg.mask_token_id,
                          codebook_size=cfg.codebook_size, num_iter=steps, start_iter=start_iter,
                          schedule=schedule, noise=nz)
    assert torch.equal(out.sampled, ref)
    assert torch.equal(out.tokens, ref[:, -1])
    assert torch.equal(out.tokens[1, 5:9], torch.tensor([3, 4, 5, 6]))  # known tokens kept


def test_seed_reproduces_and_samples_are_batch_independent(model):
    a = sample_tokens(model, [1, 2, 3], seed=7).tokens
    b = sample_tokens(model, [1, 2, 3], seed=7).tokens
    c = sample_tokens(model, [1, 2, 3], seed=8).tokens
    assert a.shape == (3, 8, 8) and a.dtype == torch.long
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # sample i uses seed + i whatever the batch: the 2nd sample alone with seed 8 equals a[1]
    alone = sample_tokens(model, [2], seed=8).tokens
    assert torch.equal(alone[0], a[1])
    assert int(a.min()) >= 0 and int(a.max()) < model.config.codebook_size


def _unknown_after_each_step(n0, steps, schedule):
    """transformer.schedules.mask_len applied step after step; the last step unmasks everything."""
    remaining, out = np.array([n0]), []
    for t in range(steps - 1):
        remaining = mask_len(t, steps, np.array([n0]), remaining, schedule)
        out.append(int(remaining[0]))
    return out + [0]


@pytest.mark.parametrize("order", ["confidence", "halton"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_mask_counts_per_step(model, schedule, order):
    steps = 8
    out = sample_tokens(model, [0, 5], steps=steps, schedule=schedule, order=order, record=True, seed=3)
    counts = out.masked.sum(-1)  # (B, T)
    expected = _unknown_after_each_step(64, steps, schedule)
    assert counts.tolist() == [expected, expected]
    # masks only shrink: a position unmasked at step t stays unmasked
    assert not (out.masked[:, 1:] & ~out.masked[:, :-1]).any()


def test_cosine_mask_counts_match_the_paper_sequence():
    # spec §4: N=256, T=8 cosine -> 251, 236, 212, 181, 142, 97, 49, then the sample
    paper = [251, 236, 212, 181, 142, 97, 49, 0]
    assert mask_len_sequence(256, 8, "cosine") == paper
    assert _unknown_after_each_step(256, 8, "cosine") == paper  # the clamps never bind here
    # where a schedule is flat at the start the clamp does bind: at least one token per step
    assert mask_len_sequence(64, 8, "cubic")[:2] == [63, 63]
    assert _unknown_after_each_step(64, 8, "cubic")[:2] == [63, 62]


def test_halton_order_is_a_spread_permutation(model):
    order = halton_order(8, 8)
    assert sorted(order.tolist()) == list(range(64))
    r, c = order[:8] // 8, order[:8] % 8
    assert len(set(r.tolist())) == 8 and len(set(c.tolist())) == 8  # low discrepancy: a Latin square's spread
    out = sample_tokens(model, [1], steps=8, order="halton", record=True, seed=0)
    revealed = torch.nonzero(~out.masked[0, 0, 1:]).flatten().numpy()  # revealed after step 0
    assert sorted(revealed.tolist()) == sorted(order[:len(revealed)].tolist())


def test_cfg_with_the_class_as_null_equals_unguided(model):
    plain = sample_tokens(model, [3, 4], seed=2).tokens
    # with u == c (null label equal to the class) guidance changes nothing
    same = sample_tokens(model, [3, 3], seed=2, guidance_scale=3.0, null_label=3).tokens
    assert torch.equal(same[0], plain[0])
    torch.manual_seed(0)
    loud = transformer.build("debug", latent_size=8, initializer_range=0.5).eval()  # class matters
    plain = sample_tokens(loud, [3, 4], seed=2).tokens
    guided = sample_tokens(loud, [3, 4], seed=2, guidance_scale=3.0, null_label=9).tokens
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    with pytest.raises(ValueError, match="null_label"):
        sample_tokens(model, [3], guidance_scale=2.0)


def test_guidance_schedules():
    assert guidance_weight(2.0, "constant", 0, 8) == 2.0
    assert guidance_weight(2.0, "linear", 7, 8) == pytest.approx(2.0)
    assert guidance_weight(2.0, "linear", 3, 8) == pytest.approx(1.0)
    assert guidance_weight(2.0, "cosine", 7, 8) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="constant"):
        guidance_weight(1.0, "nope", 0, 8)


def test_top_k(model):
    x = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    assert torch.isinf(top_k_filter(x, 2)).tolist() == [[True, False, False, True]]
    assert torch.equal(top_k_filter(x, None), x)
    cfg = model.config
    out = sample_tokens(model, [1], seed=0, top_k=1, record=True)
    inputs = torch.full((1, cfg.seq_len), cfg.mask_token_id)
    inputs[0, 0] = cfg.codebook_size + 1
    greedy = model(inputs)[..., :cfg.codebook_size].argmax(-1)
    assert torch.equal(out.sampled[0, 0, 1:], greedy[0, 1:])  # top-1 sampling is argmax


def test_errors_name_the_fix(model):
    with pytest.raises(ValueError, match="halton"):
        sample_tokens(model, [1], order="random")
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        sample_tokens(model, [10])
    with pytest.raises(ValueError, match="cosine"):
        sample_tokens(model, [1], schedule="zigzag")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    import tokenizer

    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), d / "tok")
    transformer.save(transformer.build("debug", latent_size=8), d / "mvtm")
    transformer.save(transformer.build("debug", latent_size=8, causal=True), d / "ar")
    return d


def _run(args):
    from click.testing import CliRunner

    from pipeline.cli import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_sample_grid_images_steps_and_npz(ckpts, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    r = _run(["sample", "--checkpoint", str(ckpts / "mvtm"), "--tokenizer", str(ckpts / "tok"), "--classes", "1,2",
              "--per-class", "3", "--decode-steps", "8", "--schedule", "cosine", "--seed", "0", "--out", str(out),
              "--save-steps", "--npz", str(tmp_path / "gen.npz"), "--batch-size", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    singles = sorted((tmp_path / "grid").glob("*.png"))
    assert [p.name for p in singles][:4] == ["00000_class1.png", "00001_class1.png", "00002_class1.png",
                                             "00003_class2.png"] and len(singles) == 6
    assert Image.open(singles[0]).size == (32, 32)
    assert Image.open(out).size == (3 * 34 + 2, 2 * 34 + 2)  # 3 per row, 2 px padding
    strip = Image.open(tmp_path / "grid" / "steps" / "00000_class1.png")
    assert strip.size == (8 * 34 + 2, 2 * 34 + 2)  # 8 steps x (kept, prediction)
    z = np.load(tmp_path / "gen.npz")
    assert z["images"].shape == (6, 32, 32, 3) and z["labels"].tolist() == [1, 1, 1, 2, 2, 2]
    # same seed -> same files, batch size notwithstanding
    r = _run(["sample", "--checkpoint", str(ckpts / "mvtm"), "--tokenizer", str(ckpts / "tok"), "--classes", "1,2",
              "--per-class", "3", "--seed", "0", "--out", str(tmp_path / "again.png"), "--batch-size", "6",
              "--device", "cpu"])
    assert r.exit_code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / "00004_class2.png")),
                          np.asarray(Image.open(tmp_path / "grid" / "00004_class2.png")))


def test_cli_sample_ar_and_errors(ckpts, tmp_path):
    base = ["sample", "--tokenizer", str(ckpts / "tok"), "--classes", "3", "--per-class", "2", "--device", "cpu"]
    r = _run(base + ["--checkpoint", str(ckpts / "ar"), "--ar", "--out", str(tmp_path / "ar.png")])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "ar").glob("*.png"))) == 2
    r = _run(base + ["--checkpoint", str(ckpts / "ar"), "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "add --ar" in r.output
    r = _run(base + ["--checkpoint", str(ckpts / "mvtm"), "--schedule", "zigzag", "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "cosine" in r.output


@pytest.mark.integration
def test_sample_set_same_images_locally_and_on_ray(ckpts, tmp_path):
    """The sample set does not depend on shard size or on running as Ray tasks; reruns resume."""
    import ray

    from pipeline.generate.sample_set import load_sample_set, sample_set

    labels = [1, 1, 2, 2, 3]
    ck, tk = str(ckpts / "mvtm"), str(ckpts / "tok")
    sample_set(ck, tk, labels, tmp_path / "local", seed=4, shard_size=2, steps=4, device="cpu")
    local, ll = load_sample_set(tmp_path / "local")
    assert local.shape == (5, 32, 32, 3) and ll.tolist() == labels
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        sample_set(ck, tk, labels, tmp_path / "ray", seed=4, shard_size=3, steps=4, ray_address="local")
    finally:
        ray.shutdown()
    on_ray, _ = load_sample_set(tmp_path / "ray")
    assert np.array_equal(load_sample_set(tmp_path / "local", key="tokens")[0],
                          load_sample_set(tmp_path / "ray", key="tokens")[0])
    assert np.abs(local.astype(int) - on_ray.astype(int)).max() <= 2  # float decoder, other batch/threads
    first = (tmp_path / "local" / "shard-00000.npz").stat().st_mtime_ns
    sample_set(ck, tk, labels, tmp_path / "local", seed=4, shard_size=2, steps=4, device="cpu")
    assert (tmp_path / "local" / "shard-00000.npz").stat().st_mtime_ns == first  # skipped on rerun


def test_cfg_reads_null_label_from_the_checkpoint(tmp_path):
    """The trainer writes ``null_label`` into config.json when it trains with class dropout."""
    torch.manual_seed(0)
    transformer.save(transformer.build("debug", latent_size=8), tmp_path / "m", extra={"null_label": 9})
    m = transformer.load(tmp_path / "m")
    a = sample_tokens(m, [1, 2], seed=0, guidance_scale=2.0).tokens
    b = sample_tokens(m, [1, 2], seed=0, guidance_scale=2.0, null_label=9).tokens
    assert torch.equal(a, b)


def test_cli_sample_and_sample_set_draw_the_same_images(ckpts, tmp_path):
    """`sample` and `sample-set` share one batch loop: image i uses seed + i in both."""
    from pipeline.generate.sample_set import load_sample_set

    ck, tk = str(ckpts / "mvtm"), str(ckpts / "tok")
    r = _run(["sample", "--checkpoint", ck, "--tokenizer", tk, "--classes", "1,2", "--n", "3", "--seed", "5",
              "--steps", "4", "--batch-size", "2", "--device", "cpu", "--out", str(tmp_path / "g.png"),
              "--npz", str(tmp_path / "g.npz")])
    assert r.exit_code == 0, r.output
    assert "sampling: 6/6 img" in r.output  # plain progress line when stderr is not a terminal
    r = _run(["sample-set", "--checkpoint", ck, "--tokenizer", tk, "--classes", "1,2", "--per-class", "3",
              "--seed", "5", "--steps", "4", "--shard-size", "4", "--batch-size", "2", "--device", "cpu",
              "--out", str(tmp_path / "set")])
    assert r.exit_code == 0, r.output
    assert "sample-set: 2/2 shards" in r.output and (tmp_path / "set" / "manifest.json").is_file()
    images, labels = load_sample_set(tmp_path / "set")
    z = np.load(tmp_path / "g.npz")
    assert labels.tolist() == z["labels"].tolist() == [1, 1, 1, 2, 2, 2]
    assert np.array_equal(images, z["images"])  # same batches (2, 2 | 2): bit-identical
    r = _run(["sample-set", "--checkpoint", ck, "--tokenizer", tk, "--classes", "1,x", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "comma-separated" in r.output


def test_sample_set_labels_all_classes(ckpts):
    from pipeline.generate.sample_set import set_labels

    assert set_labels(str(ckpts / "mvtm"), "all", 2) == [c for c in range(10) for _ in range(2)]
    assert set_labels(str(ckpts / "mvtm"), "3,1", 1) == [3, 1]
