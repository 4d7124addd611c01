"""Train the MVTM transformer (or the AR baseline) on token shards; entry point for `deepspeed`.

Example (2 CPU ranks):
  OMP_NUM_THREADS=1 deepspeed --num_gpus 2 jobs/train_mvtm.py --deepspeed_config jobs/ds_config_cpu.json \
      --config jobs/train_debug.json --data tokens/ --out runs/debug --resume auto
Overrides: any TrainConfig field as key=value after the flags, e.g. `steps=200 class_dropout=0.1`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="TrainConfig JSON file (e.g. jobs/train_debug.json).")
    p.add_argument("--deepspeed_config", required=True, help="DeepSpeed JSON (jobs/ds_config*.json).")
    p.add_argument("--data", help="Token dataset root (overrides the config's data).")
    p.add_argument("--out", help="Run directory (overrides the config's out).")
    p.add_argument("--objective", choices=["mvtm", "ar"], help="mvtm (default) or ar (the causal baseline).")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint in <out>/checkpoints) or a tag/path.")
    p.add_argument("--local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", 0)), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides.")
    args = p.parse_intermixed_args(argv)

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(k, v)  # plain `python jobs/train_mvtm.py` runs as one rank
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")

    import deepspeed
    import torch

    from maskgit_core.errors import MaskGITError
    from pipeline.train.config import load_train_config, parse_overrides
    from pipeline.train.loop import train

    over = parse_overrides(args.overrides)
    over.update({k: getattr(args, k) for k in ("data", "out", "objective") if getattr(args, k)})
    try:
        cfg = load_train_config(args.config, over)
        ds_config = json.loads(Path(args.deepspeed_config).read_text())
    except (MaskGITError, OSError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = train(cfg, ds_config, resume=args.resume)
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
