"""Storage: local paths and object-store URLs (s3://, gs://) through fsspec, and atomic writes."""
from __future__ import annotations

import os
from typing import Any

import fsspec

__all__ = ["url_to_fs", "join", "is_local", "put_bytes_atomic"]


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a local path or an fsspec URL (s3://, gs://, ...).

    For S3-compatible servers the endpoint comes from ``AWS_ENDPOINT_URL`` (or
    ``storage_options={'client_kwargs': {'endpoint_url': ...}}``).
    """
    url = os.fspath(url)
    if url.startswith("s3://") and "client_kwargs" not in storage_options and os.environ.get("AWS_ENDPOINT_URL"):
        storage_options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    return fs, path.rstrip("/") if path not in ("/", "") else path


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def put_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing."""
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)  # one PUT: an object store object appears whole or not at all
