"""Tokenize ImageNet (or any supported source) on a Ray cluster.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/tokenize_imagenet.py s3://bucket/imagenet s3://bucket/tokens/train \
        --tokenizer ckpt/official256/tokenizer --split train --format both

Same flags as ``maskgit-pipeline tokenize`` (``--shard-size``, default 12,288 images per shard:
105 shards per format for ImageNet train; ``--task-size``, default auto); under ``ray job submit`` the driver joins the
cluster that runs it (RAY_ADDRESS is set by Ray).
"""
from __future__ import annotations

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

from pipeline.cli import cli  # noqa: E402


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cli(["tokenize", *sys.argv[1:]], prog_name="tokenize_imagenet.py")


if __name__ == "__main__":
    main()
