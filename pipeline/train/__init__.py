"""Training on token shards: the config, the DeepSpeed loop, checkpoints, export and the launcher."""
from pipeline.train.checkpoint import COMPLETE, find_resume
from pipeline.train.config import TrainConfig, load_train_config, lr_factor, parse_overrides
from pipeline.train.export import export_run
from pipeline.train.launcher import deepspeed_command, jobs_dir, run_training

__all__ = ["TrainConfig", "load_train_config", "parse_overrides", "lr_factor", "COMPLETE", "find_resume",
           "export_run", "deepspeed_command", "jobs_dir", "run_training"]
