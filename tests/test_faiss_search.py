"""FAISS backend: ids identical to TorchSearch (ties included) on real encoder outputs."""
from __future__ import annotations

import pytest
import torch

import tokenizer
from tokenizer.faiss_search import FaissSearch, faiss_available, make_search
from tokenizer.search import TorchSearch

pytestmark = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


@pytest.fixture(scope="module")
def latents() -> tuple[tokenizer.VQGAN, torch.Tensor]:
    """Encoder outputs of the demo tokenizer on crops of a real photograph: (N, D)."""
    import skimage.data

    torch.manual_seed(0)
    model = tokenizer.build("demo").eval()
    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1).float() / 255  # (3, 512, 512)
    crops = torch.stack([img[:, y:y + 32, x:x + 32] for y in range(0, 480, 24) for x in range(0, 480, 24)])
    with torch.no_grad():
        z = model.encode_latents(crops)  # (B, D, 8, 8)
    return model, z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).contiguous()


def _codebooks(model, flat):
    g = torch.Generator().manual_seed(1)
    data = flat[torch.randperm(len(flat), generator=g)[:256]].clone()  # codes near the data, as after training
    init = model.codebook.detach().clone()  # the untrained codebook: tiny entries, many near-ties
    return {"init": init, "data": data,
            "data_duplicated": torch.cat([data, data[:64], data[::3], data[:1], data[:1]]),  # exact ties
            "init_duplicated": torch.cat([init[::2], init])}


@pytest.mark.parametrize("which", ["init", "data", "data_duplicated", "init_duplicated"])
def test_faiss_ids_equal_torch_ids(latents, which):
    model, flat = latents
    cb = _codebooks(model, flat)[which]
    fs = FaissSearch()
    got, want = fs.search(flat, cb), TorchSearch().search(flat, cb)
    assert torch.equal(got, want), f"{(got != want).sum().item()} of {len(flat)} ids differ"
    if "duplicated" in which:
        assert fs.flagged_rows > 0  # exact ties went through the exact tie-break
        # the ids chosen are first occurrences: no id points at a later duplicate of an earlier entry
        first = {}
        for i, row in enumerate(cb):
            first.setdefault(tuple(row.tolist()), i)
        assert all(first[tuple(cb[i].tolist())] == i for i in got.unique().tolist())


def test_faiss_in_the_model_equals_torch_and_large_codebook(latents):
    model, flat = latents
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model.set_search(TorchSearch())
    want = model.encode(x)
    model.set_search(FaissSearch())
    try:
        assert torch.equal(model.encode(x), want)
    finally:
        model.set_search(TorchSearch())
    g = torch.Generator().manual_seed(3)
    cb = torch.randn(4096, flat.shape[1], generator=g) * flat.std()
    assert torch.equal(FaissSearch().search(flat, cb), TorchSearch().search(flat, cb))


def test_make_search_choices():
    assert make_search("torch").name == "torch"
    assert make_search("faiss").name == "faiss"
    assert make_search("auto", codebook_size=1024).name == "faiss"  # faiss-cpu is installed here
    with pytest.raises(ValueError, match="choose one of"):
        make_search("annoy")
