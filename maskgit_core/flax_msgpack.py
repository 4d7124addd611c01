"""Read (and write) Flax ``serialization.to_bytes`` msgpack checkpoints without JAX or Flax.

The official MaskGIT checkpoints are one msgpack map; arrays are msgpack extension
type 1 holding ``[shape, dtype name, C-order bytes]``. Decoding constructs numpy arrays
only: no code is ever executed from the file (unlike pickle).
"""
from __future__ import annotations

import os
from typing import Any

import msgpack
import numpy as np

from .errors import CheckpointError
from .outputs import atomic_write

__all__ = ["read_flax_msgpack", "write_flax_msgpack", "flatten_tree", "CheckpointError"]

_EXT_NDARRAY = 1
_EXT_NPSCALAR = 2
_EXT_COMPLEX = 3


def _ext_hook(code: int, data: bytes) -> Any:
    if code in (_EXT_NDARRAY, _EXT_NPSCALAR):
        shape, dtype_name, buf = msgpack.unpackb(data, raw=False)
        arr = np.frombuffer(buf, dtype=np.dtype(dtype_name))
        return arr.reshape(shape) if code == _EXT_NDARRAY else arr[0]
    raise ValueError(f"unsupported msgpack extension type {code}")


def read_flax_msgpack(path: str | os.PathLike) -> dict[str, Any]:
    """Return the nested dict of numpy arrays stored in a Flax msgpack file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from e
    if not data:
        raise CheckpointError(f"{path}: file is empty, expected a Flax msgpack checkpoint")
    try:
        tree = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"{path}: not a Flax msgpack checkpoint or truncated/corrupt ({type(e).__name__}: {e}); "
            "expected the official tokenizer_imagenet*/maskgit_imagenet* file as downloaded"
        ) from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: top level is {type(tree).__name__}, expected a map of parameters")
    return tree


def _ext_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        payload = msgpack.packb([list(arr.shape), arr.dtype.name, arr.tobytes()], use_bin_type=True)
        return msgpack.ExtType(_EXT_NDARRAY, payload)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def write_flax_msgpack(tree: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a nested dict of numpy arrays in the Flax msgpack layout (for tests and export);
    atomically: an existing ``path`` is replaced whole or left as it was."""
    data = msgpack.packb(tree, default=_ext_default, use_bin_type=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def flatten_tree(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_tree(v, key))
        else:
            out[key] = v
    return out


def map_official_params(flat: dict[str, np.ndarray], mapping: dict[str, tuple[str, Any, Any]],
                        shapes: dict[str, tuple[int, ...]], *, source: str) -> dict[str, Any]:
    """Turn a flattened official tree into a torch state dict through ``mapping``
    (torch name -> (flax name, flax->torch fn, torch->flax fn)), checking that no parameter
    is missing or unexpected and that every converted shape is what the model expects."""
    import torch

    used = {f for f, _, _ in mapping.values()}
    extra = sorted(set(flat) - used)
    if extra:
        raise CheckpointError(f"{source}: unexpected parameters {extra[:6]} for the inferred model config")
    state = {}
    for t, (f, to_torch, _) in mapping.items():
        if f not in flat:
            raise CheckpointError(f"{source}: missing parameter {f!r}")
        arr = np.asarray(to_torch(flat[f]))
        if tuple(arr.shape) != tuple(shapes[t]):
            raise CheckpointError(f"{source}: parameter {f} has shape {tuple(flat[f].shape)}; the inferred "
                                  f"config expects {tuple(shapes[t])} after conversion (as {t})")
        state[t] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C", copy=True))
    return state


def build_official_tree(mapping: dict[str, tuple[str, Any, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``map_official_params``: ``{'params': nested tree}`` of numpy arrays."""
    tree: dict[str, Any] = {}
    for t, (f, _, to_flax) in mapping.items():
        node = tree
        *path, leaf = f.split("/")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = np.ascontiguousarray(to_flax(state[t].detach().cpu().numpy()))
    return {"params": tree}
