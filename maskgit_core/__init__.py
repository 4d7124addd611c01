"""What both model packages share: the project's error types and checkpoint file I/O
(safetensors + config.json directories, the official Flax msgpack format). Imports nothing
from ``tokenizer``, ``transformer``, ``pipeline``, ray or deepspeed."""
from .errors import CheckpointError, ConfigError, DecodeError, MaskGITError, ShardError

__all__ = ["MaskGITError", "ConfigError", "CheckpointError", "ShardError", "DecodeError"]
