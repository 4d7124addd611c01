"""A decode task whose worker dies every time is retried RAY_RETRIES times, then the job fails with
one PipelineError line (Ray Data's default retries a dead worker's task without limit)."""
from __future__ import annotations

import os
import sys

import pytest
import torch

import tokenizer
from maskgit_core.errors import PipelineError
from pipeline.data import tokenize_job
from pipeline.data.tokenize_job import RAY_RETRIES, TokenizeConfig, run_tokenize
from tokenize_data import make_imagenet_tree


def _dying_decode(batch, **kw):
    """Stands in for decode_task: records the attempt, then kills its worker process."""
    with open(os.environ["MASKGIT_TEST_ATTEMPTS"], "a") as f:
        f.write(f"{os.getpid()}\n")
    os._exit(1)


@pytest.mark.integration
def test_a_worker_that_always_dies_is_retried_a_bounded_number_of_times(tmp_path, monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this file
    attempts = tmp_path / "attempts.log"
    monkeypatch.setenv("MASKGIT_TEST_ATTEMPTS", str(attempts))
    monkeypatch.setattr(tokenize_job, "decode_task", _dying_decode)
    src, tok = tmp_path / "src", tmp_path / "tok"
    make_imagenet_tree(src, per_class=2, classes=("n01440764",))
    torch.manual_seed(0)
    tokenizer.save(tokenizer.build("debug"), tok)
    with pytest.raises(PipelineError, match=r"the Ray pipeline of .* stopped .*0 of 1 units written so far"):
        run_tokenize(TokenizeConfig(source=str(src), out=str(tmp_path / "out"), tokenizer=str(tok), unit_size=8))
    assert len(attempts.read_text().split()) == 1 + RAY_RETRIES
