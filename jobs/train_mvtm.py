"""Train the MVTM transformer (or the AR baseline) on token shards; entry point for `deepspeed`.

Example (2 CPU ranks):
  OMP_NUM_THREADS=1 deepspeed --num_gpus 2 jobs/train_mvtm.py --ds-config jobs/ds_config_cpu.json \
      --config jobs/train_debug.json --data tokens/ --out runs/debug
Overrides: any TrainConfig field as KEY=VALUE after the flags, e.g. `steps=200 class_dropout=0.1`.
Same words as `maskgit-pipeline train` (docs/CLI.md): --ds-config (DeepSpeed's own --deepspeed_config
works too), --resume auto by default (continue from the newest complete checkpoint in --out, else
start fresh), --resume none to start fresh.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def build_parser() -> argparse.ArgumentParser:
    """The entry script's flags (tests/test_docs.py checks the docs' commands against them)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TrainConfig JSON file (e.g. jobs/train_debug.json).")
    p.add_argument("--ds-config", "--deepspeed_config", dest="ds_config", required=True,
                   help="DeepSpeed JSON (jobs/ds_config*.json); --deepspeed_config is DeepSpeed's spelling.")
    p.add_argument("--data", metavar="DATASET", help="Token dataset (overrides the config's data).")
    p.add_argument("--out", help="Run directory (overrides the config's out).")
    p.add_argument("--objective", choices=["mvtm", "ar"], help="mvtm (default) or ar (the causal baseline).")
    p.add_argument("--resume", default="auto",
                   help="auto (default: the newest complete checkpoint in <out>/checkpoints, else a fresh "
                        "start), none (start fresh), or a checkpoint tag/path.")
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides.")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_intermixed_args(argv)

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(k, v)  # plain `python jobs/train_mvtm.py` runs as one rank
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")

    from pipeline.train.cuda_env import sanitize_environ

    sanitize_environ()  # before DeepSpeed reads TORCH_CUDA_ARCH_LIST (it cannot parse "9.0a")
    import deepspeed
    import torch

    from maskgit_core.errors import MaskGITError
    from pipeline.train.config import load_train_config, parse_overrides
    from pipeline.train.loop import train
    from pipeline.train.shm import release_shm_workspace

    try:
        over = parse_overrides(args.overrides)
        over.update({k: getattr(args, k) for k in ("data", "out", "objective") if getattr(args, k)})
        cfg = load_train_config(args.config, over)
        ds_config = json.loads(Path(args.ds_config).read_text())
    except (MaskGITError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    torch.distributed.barrier()  # every rank has mapped every CPU all-reduce workspace: drop the names
    release_shm_workspace(rank)
    try:
        summary = train(cfg, ds_config, resume=None if args.resume == "none" else args.resume)
    except MaskGITError as e:  # shard, checkpoint and config errors: one clear line; others keep a traceback
        print(f"error: [rank {rank}] {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print(json.dumps(summary))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
