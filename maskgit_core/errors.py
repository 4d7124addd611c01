"""The project's exception types: one base, so the CLI and the job entry points can turn every
error a user can cause into one clear line, while any other exception keeps its traceback.

All derive from ``ValueError`` as well, so code that caught ``ValueError`` before keeps working.
"""
from __future__ import annotations

__all__ = ["MaskGITError", "ConfigError", "CheckpointError", "ShardError", "DecodeError", "TrainingError",
           "StorageError", "PipelineError"]


class MaskGITError(ValueError):
    """Base of every error this project raises on purpose; the message says what is wrong,
    where, and what to do."""


class ConfigError(MaskGITError):
    """A setting, flag or argument outside its allowed values (names the flag and the range)."""


class CheckpointError(MaskGITError):
    """A checkpoint file that cannot be used: says which file, which parameter, what was expected."""


class ShardError(MaskGITError):
    """A token dataset or shard that cannot be used; the message says where and what to do."""


class DecodeError(MaskGITError):
    """An image whose bytes cannot be decoded (it goes to the error report with this reason)."""


class TrainingError(MaskGITError):
    """A training run that failed: carries the job's own error lines and where its full log is."""


class StorageError(MaskGITError):
    """A write or read that the storage refused: names the URL and the reason (``No space left on
    device``, ``Access Denied``, a missing bucket) after any bounded retries of transient faults."""


class PipelineError(MaskGITError):
    """A distributed job that stopped (a node or worker lost, its bounded retries spent): says the
    reason, what was kept, and that rerunning the same command continues."""
